"""The VLM captioning section of the Captioning tab: a form that runs ``tools/caption_images_vlm.py`` as a
subprocess with an argument list (never a shell string), its folder and model paths kept to the GUI's
allowed folders. The API key is never typed here: the form takes the NAME of the environment variable that
holds it, as the tool does."""

from __future__ import annotations

import gradio as gr

from library.errors import UserError
from library.gui.guard import bind
from library.gui.security import GuiPolicy, is_remote_model
from library.gui.tools_tabs import Arg, ToolSpec, run_tool
from library.tools.dataset.vlm.base import backend_info, backend_names
from library.tools.dataset.vlm.florence2 import FLORENCE_TASKS
from library.tools.dataset.vlm.prompts import CAPTION_LENGTHS, PROMPT_STYLES

#: the form's fields in order; their values are passed to ``run_tool`` in this order
VLM_SPEC = ToolSpec(
    "vlm",
    "VLM captioning",
    "caption_images_vlm.py",
    (
        Arg("Image folder", path=True),
        Arg("Backend", "--backend"),
        Arg("Model (hub id or folder; empty: the backend's default)", "--model_id"),
        Arg("Florence-2 task", "--task"),
        Arg("API base URL", "--api_base"),
        Arg("API model name", "--model"),
        Arg("API key environment variable (its NAME, e.g. OPENAI_API_KEY)", "--api_key_env"),
        Arg("Prompt style", "--prompt_style"),
        Arg("Caption length", "--caption_length"),
        Arg("Custom prompt (replaces style and length)", "--prompt"),
        Arg("Trigger word (put first)", "--trigger_word"),
        Arg("Caption extension", "--caption_extension"),
        Arg("Batch size", "--batch_size"),
        Arg("Max new tokens", "--max_new_tokens"),
        Arg("Overwrite existing captions", "--overwrite", switch=True),
        Arg("Include subfolders", "--recursive", switch=True),
    ),
)
_NAMES = [a.flag or "folder" for a in VLM_SPEC.args]


def form_values(values: dict) -> list:
    """``{flag or "folder": value}`` -> the spec's value list; the fields of the other kind of backend are
    dropped (model/task for the API backend, endpoint fields for local models)."""
    remote = backend_info(str(values.get("--backend") or ""))
    drop = (
        {"--model_id", "--task"} if remote and remote.remote else {"--api_base", "--model", "--api_key_env"}
    )
    if values.get("--backend") != "florence2":
        drop.add("--task")
    return [None if name in drop else values.get(name) for name in _NAMES]


def run_vlm(values: dict, policy: GuiPolicy, timeout: float = 7 * 24 * 3600) -> str:
    """Run the tool on the form's ``values``; its exit status and output, or why the form was refused."""
    model = str(values.get("--model_id") or "").strip()
    if model and not is_remote_model(model):
        try:
            policy.check(model)
        except UserError as exc:
            return f"❌ {exc}"
    return run_tool(VLM_SPEC, form_values(values), values.get("extra") or "", timeout=timeout, policy=policy)


def vlm_captioning_section(policy: GuiPolicy | None = None) -> None:
    """The accordion with the form, a Run button and its message beside it."""
    policy = policy or GuiPolicy()
    with gr.Accordion("VLM captioning (Florence-2, JoyCaption, Qwen-VL, OpenAI-compatible API)", open=False):
        with gr.Row():
            folder = gr.Textbox(label="Image folder", elem_id="vlm-folder", scale=3)
            backend = gr.Dropdown(backend_names(), value="florence2", label="Backend", elem_id="vlm-backend")
            model = gr.Textbox(
                label=VLM_SPEC.args[2].label,
                elem_id="vlm-model",
                scale=2,
                placeholder=_default_hint("florence2"),
            )
            task = gr.Dropdown(list(FLORENCE_TASKS), value="<DETAILED_CAPTION>", label="Florence-2 task")
        with gr.Row():
            api_base = gr.Textbox(
                label="API base URL", placeholder="http://localhost:8000/v1", elem_id="vlm-api-base"
            )
            api_model = gr.Textbox(label="API model name", elem_id="vlm-api-model")
            api_key_env = gr.Textbox(label=VLM_SPEC.args[6].label, elem_id="vlm-api-key-env")
        with gr.Row():
            style = gr.Radio(list(PROMPT_STYLES), value="caption", label="Prompt style")
            length = gr.Radio(list(CAPTION_LENGTHS), value="medium", label="Caption length")
            trigger = gr.Textbox(label="Trigger word (put first)", elem_id="vlm-trigger")
        prompt = gr.Textbox(label=VLM_SPEC.args[9].label, lines=2)
        with gr.Row():
            extension = gr.Textbox(label="Caption extension", value=".txt")
            batch = gr.Number(label="Batch size", value=1, precision=0, minimum=1)
            tokens = gr.Number(label="Max new tokens", value=256, precision=0, minimum=1)
            overwrite = gr.Checkbox(label="Overwrite existing captions", elem_id="vlm-overwrite")
            recursive = gr.Checkbox(label="Include subfolders")
        extra = gr.Textbox(label="Extra arguments (one per line, e.g. --device then cuda:1)", lines=2)
        with gr.Row():
            button = gr.Button("Run", variant="primary", elem_id="vlm-run", scale=1)
            message = gr.Textbox(label="Result", lines=6, elem_id="vlm-message", scale=4)
        fields = [
            folder,
            backend,
            model,
            task,
            api_base,
            api_model,
            api_key_env,
            style,
            length,
            prompt,
            trigger,
            extension,
            batch,
            tokens,
            overwrite,
            recursive,
        ]

        def run(*values, progress=gr.Progress()):  # noqa: B008 - gradio injects the progress tracker
            progress(0.0, desc="captioning")
            named = dict(zip(_NAMES, values[:-1], strict=True))
            return run_vlm({**named, "extra": values[-1]}, policy)

        bind(button.click, run, [*fields, extra], [message], api_name="tool_vlm_captions")
        bind(backend.change, model_placeholder, [backend], [model], show_progress="hidden")


def model_placeholder(backend: str):
    """The model field's hint for ``backend``: the model it loads when the field is empty."""
    info = backend_info(backend or "")
    if info is None or info.remote:
        return gr.update(placeholder="(not used: give the API model name below)")
    return gr.update(placeholder=_default_hint(backend))


def _default_hint(backend: str) -> str:
    return f"default: {backend_info(backend).default_model}"
