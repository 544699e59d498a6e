"""A training tab (LoRA or DreamBooth): the form generated from the schema, config files and presets,
validation, Start / Stop / Add to queue, and the live run panel (progress, loss and lr plots, samples, log).
"""

from __future__ import annotations

import functools
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from library.config.options import SCHEMA
from library.config.schema import Option
from library.data.images import load_image
from library.errors import DatasetError, UserError
from library.gui import configs
from library.gui.family_hint import (
    FamilyHint,
    assumed_family,
    family_groups,
    family_hint,
    family_notes,
    file_options,
    form_visibility,
    short_name,
)
from library.gui.fields import (
    common_and_advanced,
    field_spec,
    field_values,
    form_options,
    from_field,
    to_field,
)
from library.gui.guard import bind, error_text
from library.gui.jobs import JobRunner, RunView
from library.gui.kohya_convert import with_launch_args
from library.gui.run_queue import TrainingQueue
from library.gui.security import GuiPolicy, shell_command

logger = logging.getLogger(__name__)

TITLES = {"network": "LoRA", "db": "DreamBooth"}
MODEL_OPTION = SCHEMA["pretrained_model_name_or_path"]
PATH_KINDS = ("path", "dir", "file")


def make_component(trainer: str, opt: Option, visible: bool = True) -> gr.components.Component:
    """The gradio field for one option, entirely from its declaration."""
    spec = field_spec(opt)
    common = {
        "label": opt.name,
        "info": spec.info,
        "elem_id": f"{trainer}-{opt.name}",
        "value": to_field(opt, opt.default),
        "visible": visible,
    }
    if spec.widget == "checkbox":
        return gr.Checkbox(**common)
    if spec.widget == "dropdown":
        return gr.Dropdown(choices=list(spec.choices), allow_custom_value=spec.custom_values, **common)
    if spec.widget == "number":
        return gr.Number(precision=0 if opt.kind == "int" else None, **common)
    if spec.widget == "lines":
        return gr.Textbox(lines=3, placeholder="one key=value per line", **common)
    return gr.Textbox(lines=1, max_lines=1, **common)


@dataclass
class RunPanel:
    """The components that show the current run (one set per tab; all show the same single run)."""

    status: gr.Markdown
    loss_plot: gr.LinePlot
    lr_plot: gr.LinePlot
    samples: gr.Gallery
    log: gr.Textbox

    def outputs(self) -> list:
        return [self.status, self.loss_plot, self.lr_plot, self.samples, self.log]


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

    def __post_init__(self) -> None:
        options = form_options(self.trainer)
        self.names = [o.name for o in options]
        self.path_names = [o.name for o in options if o.kind in PATH_KINDS]

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
        return "✅ the config is valid"

    def save(self, path: str, *values) -> str:
        if not path or not path.strip():
            return "❌ give a file name to save to (e.g. configs/my_lora.toml)."
        try:
            self.policy.check(path.strip())
            written, error = configs.save_config(self.trainer, self._fields(values), path.strip())
        except UserError as exc:
            return f"❌ {exc}"
        except OSError as exc:
            return error_text(exc)
        return f"saved {written}" + (f" — note, it does not validate yet: {error}" if error else "")

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
        return [f"loaded {path.strip()}", *self._ordered(fields)]

    def load_preset(self, name: str) -> list:
        if not name:
            return ["❌ pick a preset first", *[gr.skip() for _ in self.names]]
        if name not in configs.list_presets(self.trainer):
            return [f"❌ there is no preset {name!r} for this trainer", *[gr.skip() for _ in self.names]]
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
            return "❌ a run is already going (one run at a time): stop it or add this config to the queue."
        try:
            path = configs.write_run_config(self.trainer, self._checked(values))
        except UserError as exc:
            return f"❌ {exc}"
        command = configs.config_command(self.trainer, path, self.launcher)
        command = with_launch_args(command, self.launch_args)
        self.runner.start(command, label=f"{TITLES[self.trainer]} {path.stem}", cwd=os.getcwd())
        return f"started: {shell_command(command)}"

    def stop(self) -> str:
        return (
            "stopping: the trainer finishes the step and saves" if self.runner.stop() else "no run is going"
        )

    def enqueue(self, *values) -> str:
        try:
            config = configs.validate(self.trainer, self._checked(values))
        except UserError as exc:
            return f"❌ {exc}"
        number = self.queue.add(self.trainer, configs.effective_toml(config), label=config.output_name or "")
        return f"added to the queue as entry {number}"


def config_bar(form: TrainingForm, fields: list, message: gr.Markdown) -> None:
    """Preset, load/save/save-as and kohya_ss import controls, wired to ``form``."""
    t = form.trainer
    with gr.Row():
        preset = gr.Dropdown(choices=configs.preset_choices(t), label="Preset", elem_id=f"{t}-preset", scale=2)
        preset_btn = gr.Button("Load preset", elem_id=f"{t}-load-preset", scale=1)
    with gr.Row():
        path = gr.Textbox(
            label="Config file", placeholder="configs/my_run.toml", elem_id=f"{t}-config-path", scale=3
        )
        load_btn = gr.Button("Load", elem_id=f"{t}-load", scale=1)
        save_btn = gr.Button("Save", elem_id=f"{t}-save", scale=1)
    with gr.Row():
        save_as = gr.Textbox(
            label="Save as", placeholder="configs/copy.toml", elem_id=f"{t}-save-as-path", scale=3
        )
        save_as_btn = gr.Button("Save as", elem_id=f"{t}-save-as", scale=1)
    with gr.Accordion("Import a kohya_ss GUI config (.json)", open=False):
        with gr.Row():
            kohya_path = gr.Textbox(label="kohya_ss JSON file", elem_id=f"{t}-kohya-path", scale=3)
            kohya_btn = gr.Button("Import", elem_id=f"{t}-kohya-import", scale=1)
    bind(preset_btn.click, form.load_preset, [preset], [message, *fields], api_name=f"{t}_load_preset")
    bind(load_btn.click, form.load, [path], [message, *fields], api_name=f"{t}_load")
    bind(save_btn.click, form.save, [path, *fields], [message], api_name=f"{t}_save")
    saved_as = bind(save_as_btn.click, form.save, [save_as, *fields], [message], api_name=f"{t}_save_as")
    bind(saved_as.then, lambda p: p, [save_as], [path])
    bind(kohya_btn.click, form.import_kohya, [kohya_path], [message, *fields], api_name=f"{t}_import_kohya")


def form_fields(trainer: str) -> list:
    """All fields: the common options first (open), then one group per model family for the options only
    that family takes (FLUX's files and flow-matching options; shown only for it), then "Advanced" with one
    accordion per schema group. The model field shows its detected family below it; options some families
    refuse are hidden for those families."""
    made: dict[str, Any] = {}
    common, advanced = common_and_advanced(trainer)
    names = [o.name for o in form_options(trainer)]
    hint = family_hint(MODEL_OPTION.default)
    shown = form_visibility(hint.family, names)
    groups = family_groups(names)
    grouped = {n for _, members in groups for n in members}
    family_text = None

    def add(opt: Option) -> None:
        nonlocal family_text
        made[opt.name] = make_component(trainer, opt, visible=shown.get(opt.name, True))
        if opt.name == MODEL_OPTION.name:
            family_text = gr.Markdown(family_markdown(hint), elem_id=f"{trainer}-model-family")

    with gr.Accordion("Common options", open=True):
        for opt in common:
            if opt.name not in grouped:
                add(opt)
    boxes = {}
    for family, members in groups:
        with gr.Accordion(
            f"{short_name(family)} options",
            open=True,
            visible=any(shown[n] for n in members),
            elem_id=f"{trainer}-family-{family.name}",
        ) as box:
            gr.Markdown(
                f"Options only {family.description} models take; shown when the base model is "
                f"{short_name(family)} (the trainer refuses them for other families)."
            )
            for name in members:
                add(SCHEMA[name])
        boxes[box] = members
    with gr.Accordion("Advanced", open=False):
        titles = {g.key: g for g in SCHEMA.groups}
        for key, opts in advanced.items():
            opts = [o for o in opts if o.name not in grouped]
            if not opts:
                continue
            with gr.Accordion(titles[key].title, open=False):
                gr.Markdown(titles[key].description)
                for opt in opts:
                    add(opt)
    if family_text is not None:
        follow_model_family(made[MODEL_OPTION.name], family_text, {n: made[n] for n in shown}, boxes)
    return [made[o.name] for o in form_options(trainer)]


def family_markdown(hint: FamilyHint, notes: list[str] | tuple = ()) -> str:
    """The family line, then one line per note (what else the family needs, what is hidden)."""
    if not hint.text:
        return ""
    return "  \n".join([f"Model family: {hint.text}", *notes])


def is_set(opt: Option, raw: Any) -> bool:
    """Whether a field's raw value turns ``opt`` on, as the trainer's family check counts it: not unset,
    empty, false, 0 or the default (an invalid value counts as set: it is shown, and Validate names it)."""
    from library.config.values import coerce

    try:
        value = coerce(opt, raw)
    except Exception:  # noqa: BLE001 - any value the schema refuses
        return True
    off = value is None or value is False or value == 0 or value == ""
    return not off and value != coerce(opt, opt.default)


def family_updates(
    source: str | None, options: dict[str, Option], values: list, groups: list[list[str]] | tuple = ()
) -> list:
    """The family line and, per family-dependent option (``values``: their fields, in ``options`` order), its
    visibility for the model ``source``; then, per family group (its option names, all among ``options``),
    whether the group shows (when any of its options does).

    When the model cannot be told (a placeholder path) but the config sets one family's own options (a FLUX
    preset's clip_l), the form is shown for that family."""
    hint = family_hint(source)
    raw = {name: from_field(opt, value) for (name, opt), value in zip(options.items(), values, strict=True)}
    changed = [name for name, value in raw.items() if is_set(options[name], value)]
    family = hint.family or assumed_family(changed)
    shown = form_visibility(family, list(options), changed)
    notes = family_notes(hint, list(options), raw, changed)
    return [
        family_markdown(hint, notes),
        *[gr.update(visible=shown[n]) for n in options],
        *[gr.update(visible=any(shown[n] for n in members)) for members in groups],
    ]


def follow_model_family(
    model: gr.components.Component,
    text: gr.Markdown,
    options: dict[str, Any],
    boxes: dict[Any, list[str]] | None = None,
) -> None:
    """Re-detect the family whenever the model field changes (typing, Load, preset, kohya_ss import) or one
    of the families' separate-file fields does (the line says which are still missing); ``boxes``: the
    family groups (accordion -> its option names)."""
    boxes = boxes or {}
    opts = {name: SCHEMA[name] for name in options}
    groups = list(boxes.values())
    files = {n for family, _ in family_groups(list(options)) for n in file_options(family) if n in options}
    bind(
        functools.partial(gr.on, [model.change, *(options[n].change for n in sorted(files))]),
        lambda source, *values: family_updates(source, opts, list(values), groups),
        [model, *options.values()],
        [text, *options.values(), *boxes],
        show_progress="hidden",
        trigger_mode="always_last",
    )


def run_panel(trainer: str) -> RunPanel:
    status = gr.Markdown("idle", elem_id=f"{trainer}-run-status")
    with gr.Row():
        loss = gr.LinePlot(
            x="step", y="value", color="series", title="Loss", elem_id=f"{trainer}-loss-plot", height=260
        )
        lr = gr.LinePlot(x="step", y="lr", title="Learning rate", elem_id=f"{trainer}-lr-plot", height=260)
    samples = gr.Gallery(label="Newest samples", columns=6, height=200, elem_id=f"{trainer}-samples")
    log = gr.Textbox(
        label="Log (last lines)", lines=8, max_lines=8, elem_id=f"{trainer}-log", autoscroll=True
    )
    return RunPanel(status, loss, lr, samples, log)


def training_tab(
    trainer: str, runner: JobRunner, queue: TrainingQueue, launcher: str, policy: GuiPolicy | None = None
) -> RunPanel:
    """Build the tab's content (call inside ``gr.Tab``); returns its run panel for the page timer."""
    form = TrainingForm(trainer, runner, queue, launcher, policy=policy or GuiPolicy())
    message = gr.Markdown("", elem_id=f"{trainer}-message")
    bar = gr.Column()
    fields = form_fields(trainer)
    with bar:
        config_bar(form, fields, message)
    with gr.Row():
        buttons = {
            name: gr.Button(label, elem_id=f"{trainer}-{name}", variant=variant)
            for name, label, variant in (
                ("validate", "Validate", "secondary"),
                ("command", "Print command", "secondary"),
                ("estimate", "Estimate memory and time", "secondary"),
                ("start", "Start", "primary"),
                ("stop", "Stop", "stop"),
                ("enqueue", "Add to queue", "secondary"),
            )
        }
    command = gr.Textbox(label="Command or estimate", lines=4, elem_id=f"{trainer}-command")
    for name, handler, inputs, output in (
        ("validate", form.validate, fields, message),
        ("command", form.command, fields, command),
        ("estimate", form.estimate, fields, command),
        ("start", form.start, fields, message),
        ("stop", form.stop, None, message),
        ("enqueue", form.enqueue, fields, message),
    ):
        bind(buttons[name].click, handler, inputs, [output], api_name=f"{trainer}_{name}")
    return run_panel(trainer)
