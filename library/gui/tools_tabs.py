"""The Captioning, Dataset and Tools tabs. Quick reports (dataset check, tag frequencies, LoRA inspection)
call library functions directly; long jobs (tagging, captioning, merges, conversions) run the matching
``tools/*.py`` CLI as a subprocess with an argument list (never a shell string).
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from library.config.i18n import translate
from library.errors import UserError
from library.gui.caption_editor import caption_editor_section
from library.gui.check_summary import check_summary_markdown
from library.gui.configs import REPO_ROOT
from library.gui.guard import bind
from library.gui.security import GuiPolicy, check_safe_args, shell_command


@dataclass(frozen=True)
class Arg:
    """One field of a tool form: ``flag`` "" for a positional argument; ``many`` splits lines into values;
    ``switch`` makes a checkbox that adds the bare flag; ``path``: its values are files or folders (kept
    to ``--allowed_paths``); ``gui_only``: a checkbox the GUI reads itself (never passed to the tool);
    ``folder_flag``: the flag used instead of ``flag`` when the value is an existing local folder (a field
    that takes a folder or a hub id)."""

    label: str
    flag: str = ""
    many: bool = False
    switch: bool = False
    path: bool = False
    gui_only: bool = False
    folder_flag: str = ""

    def flag_for(self, items: list[str]) -> str:
        """The flag of this field's ``items``: ``folder_flag`` for one existing folder, else ``flag``."""
        if self.folder_flag and len(items) == 1 and Path(items[0]).expanduser().is_dir():
            return self.folder_flag
        return self.flag


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
        if arg.gui_only:
            continue
        if arg.switch:
            argv += [arg.flag] if value else []
            continue
        items = field_items(arg, value)
        if items:
            flag = arg.flag_for(items)
            argv += ([flag] if flag else []) + items
    return argv + extra_args(extra)


def extra_args(extra: str | None) -> list[str]:
    """The "Extra arguments" field: one argument per line (never split by a shell)."""
    return [line.strip() for line in (extra or "").splitlines() if line.strip()]


def field_items(arg: Arg, value) -> list[str]:
    """The values one field holds (lines of a ``many`` field, else the stripped text)."""
    if arg.switch or value in (None, ""):
        return []
    lines = str(value).splitlines() if arg.many else [str(value)]
    return [v.strip() for v in lines if v.strip()]


def check_tool_form(spec: ToolSpec, values: list, extra: str, policy: GuiPolicy) -> None:
    """Raise ``UserError`` when the form may not run: an unsafe switch anywhere (a field value or an extra
    argument), a path outside the allowed folders, or (Convert) a non-empty destination folder without
    the overwrite box ticked."""
    check_safe_args(tool_argv(spec, values, extra)[2:])
    policy.check_args(extra_args(extra))
    fields = dict(zip(spec.args, values, strict=True))
    for arg, value in fields.items():
        if arg.path:
            policy.check(*field_items(arg, value))
    if spec.key == "convert":
        destination = field_items(spec.args[1], values[1])
        overwrite = next((bool(v) for a, v in fields.items() if a.flag == "--overwrite"), False)
        if destination and not overwrite:
            check_no_overwrite(destination[0])


def check_no_overwrite(destination: str) -> None:
    """Raise ``UserError`` when ``destination`` is an existing folder with something in it (Convert would
    replace its contents)."""
    folder = Path(destination).expanduser()
    if folder.is_dir() and any(folder.iterdir()):
        raise UserError(
            f"the destination {destination!r} is a folder that is not empty, and converting onto it deletes "
            'what it holds. Pick a new folder, or tick "Overwrite a non-empty destination folder".'
        )


def run_tool(
    spec: ToolSpec, values: list, extra: str, timeout: float = 24 * 3600, policy: GuiPolicy | None = None
) -> str:
    """Run the tool and return its exit status and output (stdout + stderr); a refused form returns the
    reason and runs nothing."""
    try:
        check_tool_form(spec, values, extra, policy or GuiPolicy())
    except UserError as exc:
        return f"❌ {exc}"
    argv = tool_argv(spec, values, extra)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    head = "✅ done" if done.returncode == 0 else f"❌ exit code {done.returncode}"
    return f"{head}\n$ {shell_command(argv)}\n\n{done.stdout}{done.stderr}"


CAPTION_TOOLS = (
    ToolSpec(
        "wd14",
        "WD14 tagger (ONNX)",
        "tag_images_by_wd14_tagger.py",
        (
            Arg("Image folder", path=True),
            Arg("Model folder or hub repo", "--repo_id", path=True, folder_flag="--model_dir"),
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
            Arg("Image folder", path=True),
            Arg("Model (folder or hub id)", "--caption_weights", path=True),
            Arg("Beam search", "--beam_search", switch=True),
        ),
    ),
    ToolSpec(
        "git",
        "GIT captioning",
        "make_captions_by_git.py",
        (Arg("Image folder", path=True), Arg("Model (folder or hub id)", "--model_id", path=True)),
    ),
    ToolSpec(
        "edit",
        "Caption editing",
        "edit_captions.py",
        (
            Arg("Image folder", path=True),
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
            Arg("Raw image folder", path=True),
            Arg("Output folder", path=True),
            Arg("Trigger word", "--trigger"),
            Arg("Class name", "--class_name"),
            Arg("Repeats", "--repeats"),
        ),
    ),
    # kohya_ss' Finetune workflow: captions and tags into sd-scripts' metadata JSON, cleaned, then buckets and
    # latents; the DreamBooth tab (or fine_tune.py) trains from it with in_json + train_data_dir
    ToolSpec(
        "merge_captions",
        "Fine-tuning metadata 1: merge captions into the metadata JSON",
        "merge_captions_to_metadata.py",
        (
            Arg("Picture folder", path=True),
            Arg("Metadata JSON to write", path=True),
            Arg("Caption extension", "--caption_extension"),
            Arg("Keys are full paths", "--full_path", switch=True),
            Arg("Include subfolders (needs full paths)", "--recursive", switch=True),
        ),
    ),
    ToolSpec(
        "merge_tags",
        "Fine-tuning metadata 2: merge tags (WD14) into the metadata JSON",
        "merge_dd_tags_to_metadata.py",
        (
            Arg("Picture folder", path=True),
            Arg("Metadata JSON to write", path=True),
            Arg("Metadata JSON to read (empty: the one written)", "--in_json", path=True),
            Arg("Tag file extension", "--caption_extension"),
            Arg("Keys are full paths", "--full_path", switch=True),
            Arg("Include subfolders (needs full paths)", "--recursive", switch=True),
        ),
    ),
    ToolSpec(
        "clean_metadata",
        "Fine-tuning metadata 3: clean captions and tags",
        "clean_captions_and_tags.py",
        (
            Arg("Metadata JSON to read", path=True),
            Arg("Metadata JSON to write", path=True),
        ),
    ),
    ToolSpec(
        "prepare_latents",
        "Fine-tuning metadata 4: buckets and latents",
        "prepare_buckets_latents.py",
        (
            Arg("Picture folder", path=True),
            Arg("Metadata JSON to read", path=True),
            Arg("Metadata JSON to write", path=True),
            Arg("Model (its VAE encodes)", path=True),
            Arg("Max resolution (e.g. 512,512)", "--max_resolution"),
            Arg("Batch size", "--batch_size"),
            Arg("Mixed precision (no, fp16, bf16)", "--mixed_precision"),
            Arg("Flip augmentation latents too", "--flip_aug", switch=True),
            Arg("Skip pictures that have latents", "--skip_existing", switch=True),
            Arg("Keys are full paths", "--full_path", switch=True),
        ),
    ),
)

MODEL_TOOLS = (
    ToolSpec(
        "merge_lora",
        "Merge LoRA (into a model, or LoRAs together)",
        "merge_lora.py",
        (
            Arg("Base model (empty: merge LoRAs together)", "--sd_model", path=True),
            Arg("LoRA files (one per line)", "--models", many=True, path=True),
            Arg("Ratios (one per line)", "--ratios", many=True),
            Arg("Save to", "--save_to", path=True),
        ),
    ),
    ToolSpec(
        "extract",
        "Extract LoRA (SVD of the difference)",
        "extract_lora_from_models.py",
        (
            Arg("Original model", "--model_org", path=True),
            Arg("Tuned model", "--model_tuned", path=True),
            Arg("Save to", "--save_to", path=True),
            Arg("Rank", "--dim"),
        ),
    ),
    ToolSpec(
        "resize",
        "Resize LoRA",
        "resize_lora.py",
        (
            Arg("LoRA file", "--model", path=True),
            Arg("New rank", "--new_rank"),
            Arg("Save to", "--save_to", path=True),
        ),
    ),
    ToolSpec(
        "merge_models",
        "Merge models",
        "merge_models.py",
        (
            Arg("Models A B [C] (one per line)", "--models", many=True, path=True),
            Arg("Ratio", "--ratio"),
            Arg("Mode", "--mode"),
            Arg("Save to", "--save_to", path=True),
        ),
    ),
    ToolSpec(
        "convert",
        "Convert model (single file <-> diffusers)",
        "convert_model.py",
        (
            Arg("Source", path=True),
            Arg("Destination", path=True),
            Arg("Precision", "--precision"),
            Arg("Overwrite a non-empty destination folder", "--overwrite", switch=True),
        ),
    ),
)


def tool_form(spec: ToolSpec, policy: GuiPolicy | None = None, lang: str = "en") -> None:
    """An accordion with the tool's fields, extra arguments, a Run button and the output."""
    with gr.Accordion(translate(spec.title, lang), open=False):
        fields = [
            gr.Checkbox(label=translate(a.label, lang))
            if a.switch
            else gr.Textbox(label=translate(a.label, lang), lines=3 if a.many else 1, elem_id=f"tool-{spec.key}-{i}")
            for i, a in enumerate(spec.args)
        ]
        extra = gr.Textbox(label=translate("Extra arguments (one per line, e.g. --batch_size then 4)", lang), lines=2)
        button = gr.Button(translate("Run", lang), elem_id=f"tool-{spec.key}-run")
        output = gr.Textbox(label=translate("Output", lang), lines=10, elem_id=f"tool-{spec.key}-output")

        def run(*values, progress=gr.Progress()):  # noqa: B008 - gradio injects the progress tracker
            progress(0.0, desc=f"running {spec.script}")
            return run_tool(spec, list(values[:-1]), values[-1], policy=policy)

        bind(button.click, run, [*fields, extra], [output], api_name=f"tool_{spec.key}")


def check_rows(source: str, reg: str, resolution, policy: GuiPolicy | None = None) -> tuple[str, list[list]]:
    """Dataset check report as (summary markdown, table rows severity/code/message/paths)."""
    from library.tools.dataset.check import CheckOptions, check_dataset

    try:
        policy = policy or GuiPolicy()
        policy.check(source.strip(), reg.strip())
        if Path(source.strip()).is_file():  # a dataset or training config: the folders it names too
            policy.check_config_file(source.strip())
        opts = CheckOptions(resolution=int(resolution) if resolution else None)
        report = check_dataset(source.strip(), reg.strip() or None, opts).to_json()
    except UserError as exc:
        return f"❌ {exc}", []
    rows = []
    for f in report["findings"]:
        more = f"\n… and {len(f['paths']) - 5} more" if len(f["paths"]) > 5 else ""
        paths = "\n".join(f["paths"][:5]) + more
        rows.append([f["severity"], f["code"], f["message"], paths])
    return check_summary_markdown(report), rows


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


def inspect_text(path: str, base: str, policy: GuiPolicy | None = None) -> str:
    from library.tools.models.inspect_lora import inspect_lora, report_lines

    try:
        (policy or GuiPolicy()).check(path.strip(), base.strip())
        return "\n".join(report_lines(inspect_lora(path.strip(), base.strip() or None)))
    except (UserError, OSError) as exc:
        return f"❌ {exc}"


def tag_rows_checked(folder: str, extension: str, policy: GuiPolicy) -> tuple[str, list[list]]:
    """(message, ``tag_frequency_rows``) for the page; a folder outside the allowed ones, or one that is
    not a folder, raises ``UserError`` (shown beside the button)."""
    policy.check(folder.strip())
    rows = tag_frequency_rows(folder.strip(), extension)
    return f"{len(rows)} tags", rows


def captioning_tab(policy: GuiPolicy | None = None, lang: str = "en") -> None:
    from library.gui.vlm_tab import vlm_captioning_section  # here: vlm_tab imports this module

    policy = policy or GuiPolicy()
    for spec in CAPTION_TOOLS:
        tool_form(spec, policy, lang)
    vlm_captioning_section(policy)
    with gr.Accordion(translate("Tag frequencies", lang), open=True):
        with gr.Row():
            folder = gr.Textbox(label=translate("Image folder", lang), elem_id="tags-folder", scale=3)
            ext = gr.Textbox(label=translate("Caption extension", lang), value=".txt", scale=1)
        button = gr.Button(translate("Count tags", lang), elem_id="tags-run")
        message = gr.Markdown(elem_id="tags-message")
        table = gr.Dataframe(headers=["tag", "count"], elem_id="tags-table", interactive=False)
        bind(
            button.click,
            lambda f, e: tag_rows_checked(f, e, policy),
            [folder, ext],
            [message, table],
            api_name="tag_frequencies",
        )


def dataset_tab(policy: GuiPolicy | None = None, lang: str = "en") -> None:
    policy = policy or GuiPolicy()
    with gr.Accordion(translate("Dataset check", lang), open=True):
        with gr.Row():
            source = gr.Textbox(
                label=translate("train_data_dir, dataset TOML or config TOML", lang), elem_id="check-source", scale=3
            )
            reg = gr.Textbox(label=translate("reg_data_dir (optional)", lang), elem_id="check-reg", scale=2)
            reso = gr.Number(label=translate("resolution", lang), value=512, precision=0, scale=1)
        button = gr.Button(translate("Check", lang), elem_id="check-run")
        summary = gr.Markdown(elem_id="check-summary")
        table = gr.Dataframe(
            headers=["severity", "code", "message", "files"],
            elem_id="check-table",
            interactive=False,
            wrap=True,
            column_widths=["9%", "14%", "45%", "32%"],
            max_height=640,
        )
        bind(
            button.click,
            lambda s, r, n: check_rows(s, r, n, policy),
            [source, reg, reso],
            [summary, table],
            api_name="check_dataset",
        )
    caption_editor_section(policy)
    for spec in DATASET_TOOLS:
        tool_form(spec, policy, lang)


def tools_tab(policy: GuiPolicy | None = None, lang: str = "en") -> None:
    policy = policy or GuiPolicy()
    with gr.Accordion(translate("Inspect / verify a LoRA", lang), open=True):
        with gr.Row():
            path = gr.Textbox(label=translate("LoRA file", lang), elem_id="inspect-path", scale=3)
            base = gr.Textbox(label=translate("Base model to check against (optional)", lang), scale=2)
        button = gr.Button(translate("Inspect", lang), elem_id="inspect-run")
        out = gr.Textbox(label=translate("Report", lang), lines=14, elem_id="inspect-output")
        inspect = lambda p, b: inspect_text(p, b, policy)  # noqa: E731
        bind(button.click, inspect, [path, base], [out], api_name="inspect_lora")
    for spec in MODEL_TOOLS:
        tool_form(spec, policy, lang)
