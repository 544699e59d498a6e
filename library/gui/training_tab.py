"""A training tab (LoRA or DreamBooth): the form generated from the schema, config files and presets,
validation, Start / Stop / Add to queue, and the live run panel (progress, loss and lr plots, samples, log).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from library.config.i18n import DEFAULT_LANG
from library.data.images import load_image
from library.errors import DatasetError, UserError
from library.gui import configs
from library.gui.fields import field_values, form_options
from library.gui.form_build import (
    MODEL_OPTION,
    PATH_KINDS,
    BuiltForm,
    build_form,
    form_fields,
    make_component,
)
from library.gui.form_family import family_markdown, family_updates, follow_model_family, is_set
from library.gui.form_language import Labels, message_lang, ui
from library.gui.form_prompts import write_prompts
from library.gui.guard import bind, error_text
from library.gui.jobs import JobRunner, RunView
from library.gui.kohya_convert import with_launch_args
from library.gui.run_queue import TrainingQueue
from library.gui.security import GuiPolicy, shell_command

#: re-exported: the form's builders live in form_build / form_family (tests and callers import them here)
__all__ = [
    "MODEL_OPTION",
    "BuiltForm",
    "TrainingForm",
    "family_markdown",
    "family_updates",
    "follow_model_family",
    "form_fields",
    "is_set",
    "make_component",
    "training_tab",
]

logger = logging.getLogger(__name__)

TITLES = {"network": "LoRA", "db": "DreamBooth"}


@dataclass
class RunPanel:
    """The components that show the current run (one set per tab; all show the same single run)."""

    status: gr.Markdown
    loss_plot: gr.LinePlot
    lr_plot: gr.LinePlot
    samples: gr.Gallery
    log: gr.Textbox
    #: every worded component of the tab (form, buttons, panel)
    labels: Labels | None = None

    def outputs(self) -> list:
        return [self.status, self.loss_plot, self.lr_plot, self.samples, self.log]

    def relabel(self, lang_state) -> None:
        """When ``lang_state`` (the page's language, a ``gr.State``) changes, re-word the tab in it."""
        if self.labels is None:
            return
        bind(lang_state.change, self.labels.updates, [lang_state], self.labels.components(), show_progress="hidden")


def loss_frame(view: RunView):
    """Long-format table (step, value, series) of the loss, its running mean and the validation loss."""
    import pandas as pd

    rows = [(s, v, "loss") for s, v, _, _ in view.losses if v is not None]
    rows += [(s, a, "average") for s, _, a, _ in view.losses if a is not None]
    rows += [(s, v, "validation") for s, v in view.validation if v is not None]
    # explicit dtypes: an untyped frame makes the browser plot the axes as categories
    return pd.DataFrame(rows, columns=["step", "value", "series"]).astype(
        {"step": "int64", "value": "float64", "series": "str"}
    )


def lr_frame(view: RunView):
    import pandas as pd

    rows = [(s, lr) for s, _, _, lr in view.losses if lr is not None]
    return pd.DataFrame(rows, columns=["step", "lr"]).astype({"step": "int64", "lr": "float64"})


#: sample pictures found unreadable (or over the bomb limit): the page refreshes every second, so each is
#: warned about once and not opened again
_SKIPPED_SAMPLES: set[str] = set()


#: a preview rendered at a LoRA weight (``--am`` / ``sample_lora_weights``): <prompt's name>_am<weight>.png
_AT_WEIGHT = re.compile(r"^(?P<group>.+)_am(?P<weight>-?[0-9.]+)\.png$")


def sample_caption(name: str) -> str:
    """The gallery caption: "LoRA weight 0.6 · name" for a preview at a weight, else the file name."""
    match = _AT_WEIGHT.match(name)
    return f"LoRA weight {match['weight']} · {name}" if match else name


def _side_by_side(paths: list) -> list:
    """``paths`` with the previews of one prompt at several LoRA weights next to each other, lowest weight
    first (the renders of one prompt share the name before ``_am``); other pictures keep their order."""
    groups: dict[str, list] = {}
    order: list = []
    for path in paths:
        match = _AT_WEIGHT.match(Path(path).name)
        if match is None:
            order.append([path])
            continue
        if match["group"] not in groups:
            groups[match["group"]] = []
            order.append(groups[match["group"]])
        groups[match["group"]].append(path)

    def weight(path) -> float:
        try:
            return float(_AT_WEIGHT.match(Path(path).name)["weight"])
        except ValueError:
            return 0.0

    return [p for group in order for p in (sorted(group, key=weight) if len(group) > 1 else group)]


def newest_samples(view: RunView, count: int = 6) -> list:
    """The newest sample pictures as PIL images (served from gradio's cache, not from arbitrary paths).

    Opened with the project's guarded loader: a picture over PIL's decompression-bomb limit (or one that
    cannot be decoded) is skipped with a warning naming it, never read into memory."""
    images = []
    for path in _side_by_side(view.samples[-count:]):
        if str(path) in _SKIPPED_SAMPLES:
            continue
        try:
            images.append((load_image(path), sample_caption(Path(path).name)))
        except DatasetError as exc:
            _SKIPPED_SAMPLES.add(str(path))
            logger.warning("sample picture skipped: %s", exc)
    return images


def panel_values(view: RunView) -> list:
    points = sum(1 for _, v, _, _ in view.losses if v is not None)
    status = f"**{view.summary()}** · loss points: {points}"
    # no points yet: leave the plots alone (a first empty frame fixes the colour legend to nothing, and the
    # lines of the series that arrive later are never drawn)
    loss, lr = (loss_frame(view), lr_frame(view)) if points else (gr.skip(), gr.skip())
    return [status, loss, lr, newest_samples(view), view.log_tail]


def shell_comment(text: str) -> str:
    """``text`` as shell comment lines: control characters escaped, so no line of it can run."""
    escaped = "".join(
        c if c.isprintable() or c == "\n" else c.encode("unicode_escape").decode() for c in text
    )
    return "\n".join(f"# {line}" for line in escaped.split("\n"))


def pasteable_command(argv: list[str], config_path: Path, toml_text: str) -> str:
    """What "Print command" shows: the shell-quoted command, then the config it reads as comments. Pasted
    whole into a shell it runs exactly ``argv`` and nothing else (a crafted name cannot end a comment)."""
    path_line = shell_comment(f"{config_path!s}:".replace("\n", "\\n"))
    return f"{shell_command(argv)}\n\n{path_line}\n{shell_comment(toml_text.rstrip())}"


@dataclass
class TrainingForm:
    """The callbacks of one training tab, over field values given in ``names`` order (testable directly)."""

    trainer: str
    runner: JobRunner
    queue: TrainingQueue
    launcher: str = "python"
    names: list[str] = field(default_factory=list)
    policy: GuiPolicy = field(default_factory=GuiPolicy)
    #: ``accelerate launch`` arguments of the last kohya_ss import (its accelerate fields); a load clears them
    launch_args: list[str] = field(default_factory=list)
    #: the language of the messages: the GUI's ``--lang``; None: each browser's own (``Accept-Language``)
    lang: str | None = None

    def __post_init__(self) -> None:
        options = form_options(self.trainer)
        self.names = [o.name for o in options]
        self.path_names = [o.name for o in options if o.kind in PATH_KINDS]

    @property
    def msg_lang(self) -> str:
        """The language of the message being made (see :func:`message_lang`)."""
        return message_lang(self.lang)

    def _fields(self, values) -> dict[str, Any]:
        return dict(zip(self.names, values, strict=True))

    def _checked(self, values) -> dict[str, Any]:
        """The fields, after the policy's checks (paths inside ``--allowed_paths``; raises ``UserError``)."""
        fields = self._fields(values)
        self.policy.check_values(fields, self.path_names)
        return fields

    def _ordered(self, fields: dict[str, Any]) -> list:
        return [fields[n] for n in self.names]

    def validate(self, *values) -> str:
        try:
            configs.validate(self.trainer, self._checked(values))
        except UserError as exc:
            return f"❌ {exc}"
        return ui("msg.valid", self.msg_lang)

    def save(self, path: str, *values) -> str:
        if not path or not path.strip():
            return ui("msg.save_needs_path", self.msg_lang)
        try:
            self.policy.check(path.strip())
            written, error = configs.save_config(self.trainer, self._fields(values), path.strip())
        except UserError as exc:
            return f"❌ {exc}"
        except OSError as exc:
            return error_text(exc)
        if error:
            return ui("msg.saved_invalid", self.msg_lang, path=written, error=error)
        return ui("msg.saved", self.msg_lang, path=written)

    def load(self, path: str) -> list:
        try:
            self.policy.check(path.strip())
        except UserError as exc:
            return [f"❌ {exc}", *[gr.skip() for _ in self.names]]
        return self._read(path)

    def _read(self, path: str) -> list:
        try:
            fields = configs.load_config(self.trainer, path.strip())
        except UserError as exc:
            return [f"❌ {exc}", *[gr.skip() for _ in self.names]]
        self.launch_args = []
        return [ui("msg.loaded", self.msg_lang, path=path.strip()), *self._ordered(fields)]

    def load_preset(self, name: str) -> list:
        if not name:
            return [ui("msg.pick_preset", self.msg_lang), *[gr.skip() for _ in self.names]]
        if name not in configs.list_presets(self.trainer):
            return [ui("msg.no_preset", self.msg_lang, name=name), *[gr.skip() for _ in self.names]]
        return self._read(str(configs.preset_path(name)))

    def import_kohya(self, path: str) -> list:
        from library.gui.kohya_convert import import_for_form

        try:
            result, message = import_for_form(path.strip(), self.trainer, self.names, self.policy.check)
        except UserError as exc:
            return [f"❌ {exc}", *[gr.skip() for _ in self.names]]
        except OSError as exc:
            return [error_text(exc), *[gr.skip() for _ in self.names]]
        self.launch_args = list(result.launch_args)
        return [message, *self._ordered(field_values(self.trainer, result.values))]

    def command(self, *values) -> str:
        try:
            config = configs.validate(self.trainer, self._checked(values))
        except UserError as exc:
            return f"❌ {exc}"
        path = configs.run_config_path(config)
        model = config.pretrained_model_name_or_path
        argv = configs.trainer_command(self.trainer, path, self.launcher, model)
        argv = with_launch_args(argv, self.launch_args)
        return pasteable_command(argv, path, configs.effective_toml(config))

    def estimate(self, *values) -> str:
        try:
            return configs.estimate_report(self.trainer, self._checked(values))
        except UserError as exc:
            return f"❌ {exc}"

    def start(self, *values) -> str:
        if self.runner.busy():
            return ui("msg.busy", self.msg_lang)
        try:
            path = configs.write_run_config(self.trainer, self._checked(values))
        except UserError as exc:
            return f"❌ {exc}"
        command = configs.config_command(self.trainer, path, self.launcher)
        command = with_launch_args(command, self.launch_args)
        self.runner.start(command, label=f"{TITLES[self.trainer]} {path.stem}", cwd=os.getcwd())
        return ui("msg.started", self.msg_lang, command=shell_command(command))

    def stop(self) -> str:
        return ui("msg.stopping" if self.runner.stop() else "msg.no_run", self.msg_lang)

    def enqueue(self, *values) -> str:
        try:
            config = configs.validate(self.trainer, self._checked(values))
        except UserError as exc:
            return f"❌ {exc}"
        number = self.queue.add(self.trainer, configs.effective_toml(config), label=config.output_name or "")
        return ui("msg.queued", self.msg_lang, number=number)


def _button(labels: Labels, key: str, elem_id: str, **kwargs) -> gr.Button:
    return labels.value(gr.Button(ui(key, labels.lang), elem_id=elem_id, **kwargs), key)


def _message(elem_id: str) -> gr.Markdown:
    return gr.Markdown("", elem_id=elem_id, elem_classes=["sd-message"])


@dataclass
class PromptStep:
    """Writes the sample-prompt text box to its file before an action (Save, Start …) reads the form."""

    form: TrainingForm
    built: BuiltForm

    def active(self) -> bool:
        return self.built.prompts is not None and "output_dir" in self.built.by_name

    def chain(self, event, config_path=None):
        """``event`` preceded by the prompt writing; returns the event to hang the action on (``.then``)."""
        if not self.active():
            return event
        by_name = self.built.by_name
        inputs = [self.built.prompts, by_name["output_dir"], by_name["sample_prompts"]]
        inputs += [config_path] if config_path is not None else []
        outputs = [self.built.prompts_message, by_name["sample_prompts"]]
        return bind(event, self.write, inputs, outputs, show_progress="hidden").then

    def write(self, text: str, output_dir: str, current: str, config_path: str = "") -> list:
        path = write_prompts(text, output_dir, current, config_path, self.form.policy.check)
        if path is None:
            return [gr.skip(), gr.skip()]
        return [ui("gui.msg.prompts_written", self.form.msg_lang, path=path), str(path)]

    def show(self, path: str) -> str:
        """The text of the prompt file a loaded config names, for the box (empty when it cannot be shown)."""
        from library.gui.form_prompts import current_text

        try:
            self.form.policy.check(path)
        except UserError:
            return ""
        return current_text(path) or ""

    def follow_file(self) -> None:
        if self.active():
            sample = self.built.by_name["sample_prompts"]
            bind(sample.change, self.show, [sample], [self.built.prompts], show_progress="hidden")


def config_bar(form: TrainingForm, fields: list, labels: Labels, prompts: PromptStep) -> None:
    """Preset, load/save/save-as and kohya_ss import controls, wired to ``form``; each row shows its
    messages right below it. The preset list starts empty (nothing is loaded yet)."""
    t, lang = form.trainer, labels.lang
    with gr.Row():
        preset = gr.Dropdown(
            choices=configs.preset_choices(t),
            value=None,
            label=ui("label.preset", lang),
            elem_id=f"{t}-preset",
            scale=2,
        )
        labels.label(preset, "label.preset")
        preset_btn = _button(labels, "button.load_preset", f"{t}-load-preset", scale=1)
    preset_msg = _message(f"{t}-preset-message")
    with gr.Row():
        path = gr.Textbox(
            label=ui("label.config_file", lang),
            placeholder="configs/my_run.toml",
            elem_id=f"{t}-config-path",
            scale=3,
        )
        labels.label(path, "label.config_file")
        load_btn = _button(labels, "button.load", f"{t}-load", scale=1)
        save_btn = _button(labels, "button.save", f"{t}-save", scale=1)
    config_msg = _message(f"{t}-config-message")
    with gr.Row():
        save_as = gr.Textbox(
            label=ui("label.save_as", lang),
            placeholder="configs/copy.toml",
            elem_id=f"{t}-save-as-path",
            scale=3,
        )
        labels.label(save_as, "label.save_as")
        save_as_btn = _button(labels, "button.save_as", f"{t}-save-as", scale=1)
    save_as_msg = _message(f"{t}-save-as-message")
    with labels.label(gr.Accordion(ui("accordion.kohya_import", lang), open=False), "accordion.kohya_import"):
        with gr.Row():
            kohya_path = labels.label(
                gr.Textbox(label=ui("label.kohya_path", lang), elem_id=f"{t}-kohya-path", scale=3),
                "label.kohya_path",
            )
            kohya_btn = _button(labels, "button.import", f"{t}-kohya-import", scale=1)
        kohya_msg = _message(f"{t}-kohya-message")
    bind(preset_btn.click, form.load_preset, [preset], [preset_msg, *fields], api_name=f"{t}_load_preset")
    bind(load_btn.click, form.load, [path], [config_msg, *fields], api_name=f"{t}_load")
    then = prompts.chain(save_btn.click, path)
    bind(then, form.save, [path, *fields], [config_msg], api_name=f"{t}_save")
    then = prompts.chain(save_as_btn.click, save_as)
    saved_as = bind(then, form.save, [save_as, *fields], [save_as_msg], api_name=f"{t}_save_as")
    bind(saved_as.then, lambda p: p, [save_as], [path])
    bind(kohya_btn.click, form.import_kohya, [kohya_path], [kohya_msg, *fields], api_name=f"{t}_import_kohya")


def run_panel(trainer: str, labels: Labels) -> RunPanel:
    lang = labels.lang
    status = gr.Markdown("idle", elem_id=f"{trainer}-run-status")
    with gr.Row():
        loss = gr.LinePlot(
            x="step",
            y="value",
            color="series",
            title=ui("plot.loss", lang),
            elem_id=f"{trainer}-loss-plot",
            height=260,
        )
        lr = gr.LinePlot(
            x="step", y="lr", title=ui("plot.lr", lang), elem_id=f"{trainer}-lr-plot", height=260
        )
    samples = labels.label(
        gr.Gallery(label=ui("label.samples", lang), columns=6, height=200, elem_id=f"{trainer}-samples"),
        "label.samples",
    )
    log = labels.label(
        gr.Textbox(
            label=ui("label.log", lang), lines=8, max_lines=8, elem_id=f"{trainer}-log", autoscroll=True
        ),
        "label.log",
    )
    return RunPanel(status, loss, lr, samples, log, labels)


#: the action row: (name, text key, button variant, handler attribute, output: "message" or "command")
ACTIONS = (
    ("validate", "button.validate", "secondary", "validate", "message"),
    ("command", "button.command", "secondary", "command", "command"),
    ("estimate", "button.estimate", "secondary", "estimate", "command"),
    ("start", "button.start", "primary", "start", "message"),
    ("stop", "button.stop", "stop", "stop", "message"),
    ("enqueue", "button.enqueue", "secondary", "enqueue", "message"),
)


def training_tab(
    trainer: str,
    runner: JobRunner,
    queue: TrainingQueue,
    launcher: str,
    policy: GuiPolicy | None = None,
    lang: str | None = None,
) -> RunPanel:
    """Build the tab's content (call inside ``gr.Tab``) with its words in ``lang`` (None: English, and the
    messages in each browser's language); returns its run panel for the page timer (and for re-labelling in
    the browser's language, :meth:`RunPanel.relabel`)."""
    form = TrainingForm(trainer, runner, queue, launcher, policy=policy or GuiPolicy(), lang=lang)
    bar = gr.Column()
    built = build_form(trainer, lang or DEFAULT_LANG, form.policy)
    labels = built.labels
    prompts = PromptStep(form, built)
    with bar:
        config_bar(form, built.fields, labels, prompts)
    with gr.Row():
        buttons = {
            name: _button(labels, key, f"{trainer}-{name}", variant=variant)
            for name, key, variant, _, _ in ACTIONS
        }
    message = _message(f"{trainer}-message")
    command = labels.label(
        gr.Textbox(label=ui("label.command_output", lang), lines=4, elem_id=f"{trainer}-command"),
        "label.command_output",
    )
    outputs = {"message": message, "command": command}
    for name, _, _, attr, output in ACTIONS:
        inputs = None if name == "stop" else built.fields
        event = buttons[name].click if name == "stop" else prompts.chain(buttons[name].click)
        bind(event, getattr(form, attr), inputs, [outputs[output]], api_name=f"{trainer}_{name}")
    prompts.follow_file()
    return run_panel(trainer, labels)
