"""The Captioning, Dataset and Tools tabs. Quick reports (dataset check, tag frequencies, LoRA inspection)
call library functions directly; long jobs (tagging, captioning, merges, conversions) run the matching
``tools/*.py`` CLI as a subprocess with an argument list (never a shell string).
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from dataclasses import dataclass

import gradio as gr

from library.errors import UserError
from library.gui.configs import REPO_ROOT


@dataclass(frozen=True)
class Arg:
    """One field of a tool form: ``flag`` "" for a positional argument; ``many`` splits lines into values;
    ``switch`` makes a checkbox that adds the bare flag."""

    label: str
    flag: str = ""
    many: bool = False
    switch: bool = False


@dataclass(frozen=True)
class ToolSpec:
    key: str
    title: str
    script: str
    args: tuple[Arg, ...]


def tool_argv(spec: ToolSpec, values: list, extra: str = "") -> list[str]:
    """The argument list of ``spec`` for the field ``values`` (+ extra arguments, one per line)."""
    argv = [sys.executable, str(REPO_ROOT / "tools" / spec.script)]
    for arg, value in zip(spec.args, values, strict=True):
        if arg.switch:
            argv += [arg.flag] if value else []
            continue
        items = (
            [v.strip() for v in str(value or "").splitlines() if v.strip()]
            if arg.many
            else ([str(value).strip()] if value not in (None, "") and str(value).strip() else [])
        )
        if items:
            argv += ([arg.flag] if arg.flag else []) + items
    return argv + [line.strip() for line in (extra or "").splitlines() if line.strip()]


def run_tool(spec: ToolSpec, values: list, extra: str, timeout: float = 24 * 3600) -> str:
    """Run the tool and return its exit status and output (stdout + stderr)."""
    argv = tool_argv(spec, values, extra)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    head = "✅ done" if done.returncode == 0 else f"❌ exit code {done.returncode}"
    return f"{head}\n$ {' '.join(argv)}\n\n{done.stdout}{done.stderr}"


CAPTION_TOOLS = (
    ToolSpec(
        "wd14",
        "WD14 tagger (ONNX)",
        "tag_images_by_wd14_tagger.py",
        (
            Arg("Image folder"),
            Arg("Model folder or hub repo", "--repo_id"),
            Arg("General threshold", "--general_threshold"),
            Arg("Character threshold", "--character_threshold"),
            Arg("Remove underscores", "--remove_underscore", switch=True),
        ),
    ),
    ToolSpec(
        "blip",
        "BLIP captioning",
        "make_captions.py",
        (
            Arg("Image folder"),
            Arg("Model (folder or hub id)", "--caption_weights"),
            Arg("Beam search", "--beam_search", switch=True),
        ),
    ),
    ToolSpec(
        "git",
        "GIT captioning",
        "make_captions_by_git.py",
        (Arg("Image folder"), Arg("Model (folder or hub id)", "--model_id")),
    ),
    ToolSpec(
        "edit",
        "Caption editing",
        "edit_captions.py",
        (
            Arg("Image folder"),
            Arg("Sub-command and its arguments, one per line (e.g. fold, Smith, 1boy, beard)", many=True),
            Arg("Dry run", "--dry_run", switch=True),
        ),
    ),
)

DATASET_TOOLS = (
    ToolSpec(
        "prepare",
        "Prepare folders (N_trigger class)",
        "prepare_dataset.py",
        (
            Arg("Raw image folder"),
            Arg("Output folder"),
            Arg("Trigger word", "--trigger"),
            Arg("Class name", "--class_name"),
            Arg("Repeats", "--repeats"),
        ),
    ),
)

MODEL_TOOLS = (
    ToolSpec(
        "merge_lora",
        "Merge LoRA (into a model, or LoRAs together)",
        "merge_lora.py",
        (
            Arg("Base model (empty: merge LoRAs together)", "--sd_model"),
            Arg("LoRA files (one per line)", "--models", many=True),
            Arg("Ratios (one per line)", "--ratios", many=True),
            Arg("Save to", "--save_to"),
        ),
    ),
    ToolSpec(
        "extract",
        "Extract LoRA (SVD of the difference)",
        "extract_lora_from_models.py",
        (
            Arg("Original model", "--model_org"),
            Arg("Tuned model", "--model_tuned"),
            Arg("Save to", "--save_to"),
            Arg("Rank", "--dim"),
        ),
    ),
    ToolSpec(
        "resize",
        "Resize LoRA",
        "resize_lora.py",
        (Arg("LoRA file", "--model"), Arg("New rank", "--new_rank"), Arg("Save to", "--save_to")),
    ),
    ToolSpec(
        "merge_models",
        "Merge models",
        "merge_models.py",
        (
            Arg("Models A B [C] (one per line)", "--models", many=True),
            Arg("Ratio", "--ratio"),
            Arg("Mode", "--mode"),
            Arg("Save to", "--save_to"),
        ),
    ),
    ToolSpec(
        "convert",
        "Convert model (single file <-> diffusers)",
        "convert_model.py",
        (Arg("Source"), Arg("Destination"), Arg("Precision", "--precision")),
    ),
)


def tool_form(spec: ToolSpec) -> None:
    """An accordion with the tool's fields, extra arguments, a Run button and the output."""
    with gr.Accordion(spec.title, open=False):
        fields = [
            gr.Checkbox(label=a.label)
            if a.switch
            else gr.Textbox(label=a.label, lines=3 if a.many else 1, elem_id=f"tool-{spec.key}-{i}")
            for i, a in enumerate(spec.args)
        ]
        extra = gr.Textbox(label="Extra arguments (one per line, e.g. --batch_size then 4)", lines=2)
        button = gr.Button("Run", elem_id=f"tool-{spec.key}-run")
        output = gr.Textbox(label="Output", lines=10, elem_id=f"tool-{spec.key}-output")

        def run(*values, progress=gr.Progress()):  # noqa: B008 - gradio injects the progress tracker
            progress(0.0, desc=f"running {spec.script}")
            return run_tool(spec, list(values[:-1]), values[-1])

        button.click(run, [*fields, extra], [output])


def check_rows(source: str, reg: str, resolution) -> tuple[str, list[list]]:
    """Dataset check report as (summary markdown, table rows severity/code/message/paths)."""
    from library.tools.dataset.check import CheckOptions, check_dataset

    try:
        opts = CheckOptions(resolution=int(resolution) if resolution else None)
        report = check_dataset(source.strip(), reg.strip() or None, opts).to_json()
    except UserError as exc:
        return f"❌ {exc}", []
    rows = [[f["severity"], f["code"], f["message"], "; ".join(f["paths"][:5])] for f in report["findings"]]
    summary = (
        f"**{'OK' if report['ok'] else 'problems found'}**: {report['errors']} errors, {report['warnings']} "
        f"warnings. {report['summary']}"
    )
    return summary, rows


def tag_frequency_rows(folder: str, extension: str = ".txt") -> list[list]:
    """Tag -> count over every caption file below ``folder`` (most frequent first)."""
    from library.tools.dataset.files import caption_path, find_images, normalise_extension, read_text
    from library.tools.dataset.tags import split_caption

    counts: Counter[str] = Counter()
    for image in find_images(folder, recursive=True):
        path = caption_path(image, normalise_extension(extension or ".txt"))
        if path.exists():
            counts.update(split_caption(read_text(path)))
    return [[tag, n] for tag, n in counts.most_common()]


def inspect_text(path: str, base: str) -> str:
    from library.tools.models.inspect_lora import inspect_lora, report_lines

    try:
        return "\n".join(report_lines(inspect_lora(path.strip(), base.strip() or None)))
    except (UserError, OSError) as exc:
        return f"❌ {exc}"


def captioning_tab() -> None:
    for spec in CAPTION_TOOLS:
        tool_form(spec)
    with gr.Accordion("Tag frequencies", open=True):
        with gr.Row():
            folder = gr.Textbox(label="Image folder", elem_id="tags-folder", scale=3)
            ext = gr.Textbox(label="Caption extension", value=".txt", scale=1)
        button = gr.Button("Count tags", elem_id="tags-run")
        table = gr.Dataframe(headers=["tag", "count"], elem_id="tags-table", interactive=False)
        button.click(lambda f, e: tag_frequency_rows(f.strip(), e), [folder, ext], [table])


def dataset_tab() -> None:
    with gr.Accordion("Dataset check", open=True):
        with gr.Row():
            source = gr.Textbox(
                label="train_data_dir, dataset TOML or config TOML", elem_id="check-source", scale=3
            )
            reg = gr.Textbox(label="reg_data_dir (optional)", elem_id="check-reg", scale=2)
            reso = gr.Number(label="resolution", value=512, precision=0, scale=1)
        button = gr.Button("Check", elem_id="check-run")
        summary = gr.Markdown(elem_id="check-summary")
        table = gr.Dataframe(
            headers=["severity", "code", "message", "files"],
            elem_id="check-table",
            interactive=False,
            wrap=True,
        )
        button.click(check_rows, [source, reg, reso], [summary, table])
    for spec in DATASET_TOOLS:
        tool_form(spec)


def tools_tab() -> None:
    with gr.Accordion("Inspect / verify a LoRA", open=True):
        with gr.Row():
            path = gr.Textbox(label="LoRA file", elem_id="inspect-path", scale=3)
            base = gr.Textbox(label="Base model to check against (optional)", scale=2)
        button = gr.Button("Inspect", elem_id="inspect-run")
        out = gr.Textbox(label="Report", lines=14, elem_id="inspect-output")
        button.click(inspect_text, [path, base], [out])
    for spec in MODEL_TOOLS:
        tool_form(spec)
