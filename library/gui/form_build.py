"""The training form as gradio components, from the schema and :mod:`library.gui.form_layout`'s plan: a
search box, one accordion per section (primary options on top, short fields side by side, the rest under
the section's "more" fold), each model family's own group, and a fold for the options that do nothing here;
labels in the page's language with the option names as hints; a browse button beside every path field; the
LoRA-type selector; the sample-prompt text box; options that do not apply to the model family or to the
chosen scheduler / loss / DeepSpeed hidden.

:func:`build_form` returns the fields in ``form_options(trainer)`` order (the order the handlers zip).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from library.config.options import SCHEMA
from library.config.schema import Option
from library.gui.family_hint import family_groups, family_hint, form_visibility, short_name
from library.gui.fields import field_spec, form_options, to_field
from library.gui.form_family import family_markdown, follow_model_family, is_set
from library.gui.form_language import Labels, option_info, option_label, search_script, ui
from library.gui.form_layout import FormPlan, applies, dependents, form_plan, rows, search_index
from library.gui.form_lora_type import SELECTOR_TYPES, detect_type, type_fields
from library.gui.guard import bind
from library.gui.path_picker import PathPicker
from library.gui.security import GuiPolicy

MODEL_OPTION = SCHEMA["pretrained_model_name_or_path"]
PATH_KINDS = ("path", "dir", "file")
#: the sections a fresh form shows open: what a first LoRA needs (the others start closed)
OPEN_SECTIONS = ("model", "folders", "network", "optimizer")


def make_component(
    trainer: str, opt: Option, visible: bool = True, lang: str = "en", interactive: bool | None = None
) -> gr.components.Component:
    """The gradio field for one option, entirely from its declaration (label and info in ``lang``)."""
    spec = field_spec(opt)
    common = {
        "label": option_label(opt.name, lang),
        "info": option_info(opt.name, lang),
        "elem_id": f"{trainer}-{opt.name}",
        "elem_classes": ["sd-option"],
        "value": to_field(opt, opt.default),
        "visible": visible,
        "interactive": interactive,
    }
    if spec.widget == "checkbox":
        return gr.Checkbox(**common)
    if spec.widget == "dropdown":
        return gr.Dropdown(choices=list(spec.choices), allow_custom_value=spec.custom_values, **common)
    if spec.widget == "number":
        return gr.Number(precision=0 if opt.kind == "int" else None, **common)
    if spec.widget == "lines":
        return gr.Textbox(lines=3, placeholder=ui("placeholder.key_value_lines", lang), **common)
    return gr.Textbox(lines=1, max_lines=1, **common)


@dataclass
class BuiltForm:
    """The form's components: ``fields`` in ``form_options`` order, by name in ``by_name``; the extras the
    tab wires (the sample-prompt box and its message area) and every worded component (``labels``)."""

    trainer: str
    labels: Labels
    fields: list = field(default_factory=list)
    by_name: dict[str, Any] = field(default_factory=dict)
    prompts: gr.Textbox | None = None
    prompts_message: gr.Markdown | None = None


class _Builder:
    """Builds one tab's form (the state of the build: made components, folds, pickers)."""

    def __init__(self, trainer: str, lang: str, policy: GuiPolicy):
        self.trainer, self.lang, self.policy = trainer, lang, policy
        self.labels = Labels(lang)
        self.form = BuiltForm(trainer, self.labels)
        self.names = [o.name for o in form_options(trainer)]
        self.hint = family_hint(MODEL_OPTION.default)
        self.shown = form_visibility(self.hint.family, self.names)
        self.groups = family_groups(self.names)
        self.deps = dependents(self.names)
        self.hidden_by_controller = {
            dep: not applies(dep, to_field(SCHEMA[c], SCHEMA[c].default))
            for c, ds in self.deps.items()
            for dep in ds
        }
        self.made: dict[str, Any] = {}
        self.index: list[tuple[str, str, list[str]]] = []
        self.folds: list[str] = []
        self.family_text = None
        self.picker: PathPicker | None = None

    def visible(self, name: str) -> bool:
        return self.shown.get(name, True) and not self.hidden_by_controller.get(name, False)

    def add(self, opt: Option, folds: list[str], interactive: bool | None = None) -> None:
        comp = make_component(self.trainer, opt, self.visible(opt.name), self.lang, interactive)
        self.labels.option(comp, opt.name)
        self.made[opt.name] = comp
        self.index.append((opt.name, f"{self.trainer}-{opt.name}", folds))
        if opt.kind in PATH_KINDS and self.picker is not None:
            self.picker.button(opt.name, comp)

    def after(self, opt: Option) -> None:
        """What follows a field below its row: the family line under the model, the prompt box."""
        if opt.name == MODEL_OPTION.name:
            self.family_text = gr.Markdown(family_markdown(self.hint), elem_id=f"{self.trainer}-model-family")
        if opt.name == "sample_prompts":
            self.prompt_box()

    def add_rows(self, options: list[Option], folds: list[str], interactive: bool | None = None) -> None:
        for row in rows(options):
            if len(row) == 1 and row[0].kind not in PATH_KINDS:
                self.add(row[0], folds, interactive)
            else:
                with gr.Row(equal_height=True):
                    for opt in row:
                        self.add(opt, folds, interactive)
            for opt in row:
                self.after(opt)

    def fold(self, elem_id: str, words, open_: bool = False, **kwargs) -> gr.Accordion:
        self.folds.append(elem_id)
        box = gr.Accordion(open=open_, elem_id=elem_id, **kwargs, **self.labels.kwargs(words))
        return self.labels.add(box, words)

    def section(self, plan, open_: bool) -> None:
        t, key = self.trainer, plan.key
        own = f"{t}-section-{key}"
        with self.fold(own, lambda lang: {"label": _section(key, lang)}, open_=open_):
            if key == "network":
                self.lora_type()
            self.add_rows(plan.primary, [own])
            if plan.more:
                more = f"{t}-more-{key}"
                with self.fold(more, lambda lang: {"label": ui("accordion.more", lang)}):
                    self.add_rows(plan.more, [own, more])

    def family_group(self, family, members: list[str]) -> Any:
        t, name = self.trainer, short_name(family)
        elem_id = f"{t}-family-{family.name}"
        self.folds.append(elem_id)
        words = lambda lang: {"label": ui("accordion.family", lang, family=name)}  # noqa: E731
        with gr.Accordion(
            open=True, visible=any(self.shown[n] for n in members), elem_id=elem_id, **words(self.lang)
        ) as box:
            self.labels.add(box, words)
            note = gr.Markdown(ui("family.intro", self.lang, family=name, description=family.description))
            self.labels.value(note, "family.intro", family=name, description=family.description)
            self.add_rows([SCHEMA[n] for n in members], [elem_id])
        return box

    def no_effect(self, options: list[Option]) -> None:
        elem_id = f"{self.trainer}-no-effect"
        with self.fold(elem_id, lambda lang: {"label": ui("gui.no_effect_title", lang)}):
            note = gr.Markdown(ui("gui.no_effect_note", self.lang))
            self.labels.value(note, "gui.no_effect_note")
            self.add_rows(options, [elem_id], interactive=False)

    def lora_type(self) -> None:
        if not {"network_module", "network_args"} <= set(self.names):
            return
        choices = list(SELECTOR_TYPES)
        self.lora_selector = gr.Dropdown(
            choices=choices,
            value="Standard",
            elem_id=f"{self.trainer}-lora-type",
            **self.labels.kwargs(_lora_words),
        )
        self.labels.add(self.lora_selector, _lora_words)

    def prompt_box(self) -> None:
        box = gr.Textbox(lines=4, elem_id=f"{self.trainer}-sample-prompts-text", **_prompt_words(self.lang))
        self.labels.add(box, _prompt_words)
        self.form.prompts = box
        self.form.prompts_message = gr.Markdown("", elem_id=f"{self.trainer}-sample-prompts-message")


def _section(key: str, lang: str) -> str:
    from library.gui.form_language import section_title

    return section_title(key, lang)


def _lora_words(lang: str) -> dict[str, str]:
    return {"label": ui("gui.lora_type", lang), "info": ui("gui.lora_type_info", lang)}


def _prompt_words(lang: str) -> dict[str, str]:
    return {
        "label": ui("gui.sample_prompts_text", lang),
        "info": ui("gui.sample_prompts_text_info", lang),
        "placeholder": ui("gui.sample_prompts_placeholder", lang),
    }


def build_form(trainer: str, lang: str = "en", policy: GuiPolicy | None = None) -> BuiltForm:
    """Build the form inside the current Blocks (see the module docstring)."""
    b = _Builder(trainer, lang, policy or GuiPolicy())
    search = gr.Textbox(elem_id=f"{trainer}-search", **_search_words(lang))
    b.labels.add(search, _search_words)
    b.picker = PathPicker(trainer, "form", b.policy, b.labels)
    b.picker.build()
    groups = family_groups(b.names)
    plan: FormPlan = form_plan(trainer, {n for _, members in groups for n in members})
    boxes = {}
    for i, section in enumerate(plan.sections):
        b.section(section, open_=section.key in OPEN_SECTIONS)
        if i == 0:
            for family, members in groups:
                boxes[b.family_group(family, members)] = members
    if plan.no_effect:
        b.no_effect(plan.no_effect)
    b.picker.wire()
    _wire(b, boxes, search)
    b.form.by_name = b.made
    b.form.fields = [b.made[n] for n in b.names]
    return b.form


def _search_words(lang: str) -> dict[str, str]:
    return {"label": ui("gui.search", lang), "placeholder": ui("gui.search_placeholder", lang)}


def _wire(b: _Builder, boxes: dict, search: gr.Textbox) -> None:
    script = search_script(search_index(b.index), b.folds)
    bind(search.change, _searched, [search], None, js=script, show_progress="hidden")
    if b.family_text is not None:
        follow_model_family(b.made[MODEL_OPTION.name], b.family_text, {n: b.made[n] for n in b.shown}, boxes)
    for controller, deps in b.deps.items():
        follow_controller(b.made[controller], {d: b.made[d] for d in deps})
    if hasattr(b, "lora_selector"):
        follow_lora_type(b.lora_selector, b.made["network_module"], b.made["network_args"])


def _searched(query: str) -> None:
    """The search runs in the browser (:func:`search_script`); nothing to do here."""


def follow_controller(controller, fields: dict[str, Any]) -> None:
    """Show the options that depend on ``controller`` only for the values they apply to (or while set)."""
    names = list(fields)

    def update(value, *values) -> list:
        return [
            gr.update(visible=applies(n, value) or is_set(SCHEMA[n], v))
            for n, v in zip(names, values, strict=True)
        ]

    bind(
        controller.change,
        update,
        [controller, *fields.values()],
        list(fields.values()),
        show_progress="hidden",
    )


def follow_lora_type(selector, module, args) -> None:
    """Picking a type sets network_module / network_args; a loaded config's pair sets the shown type."""

    def picked(kind: str, current: str) -> list:
        if kind not in SELECTOR_TYPES:
            return [gr.skip(), gr.skip()]
        new_module, new_args = type_fields(kind, current)
        return [new_module, "\n".join(new_args)]

    def loaded(module_value: str, args_value: str):
        found = detect_type(module_value, args_value)
        return found if found is not None else gr.skip()

    bind(selector.input, picked, [selector, args], [module, args], show_progress="hidden")
    bind(module.change, loaded, [module, args], [selector], show_progress="hidden")
    bind(args.change, loaded, [module, args], [selector], show_progress="hidden")


def form_fields(trainer: str, lang: str = "en", policy: GuiPolicy | None = None) -> list:
    """The fields of :func:`build_form`, in ``form_options(trainer)`` order."""
    return build_form(trainer, lang, policy).fields
