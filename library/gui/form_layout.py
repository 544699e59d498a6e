"""Where each option of a training form goes, without gradio: the sections (``library.config.i18n``'s
``SECTIONS``: primary options on top, the rest under the section's "more" fold), the fold of options that
are accepted for sd-scripts configs but do nothing here, which fields are short enough to sit side by side,
the search over option names and labels, and the options that only mean something for some value of
another option (a scheduler's own settings, the Huber loss's, DeepSpeed's).

The browser search runs the same rule as :func:`search_matches` (in JavaScript, over
:func:`search_index`), so the tests of the pure function describe what the page does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from library.config import i18n
from library.config.options import SCHEMA
from library.config.options_distributed import DEEPSPEED_ONLY
from library.config.schema import Option
from library.gui.fields import field_spec, form_options

#: widgets narrow enough to share a row (three to a row)
SHORT_WIDGETS = ("checkbox", "number", "dropdown")
ROW_WIDTH = 3
#: the marker of options kept only so sd-scripts configs load (their help or compat note says so)
NO_EFFECT_MARK = "accepted for sd-scripts configs"

#: option -> (the option it depends on, the values of that option it applies to). Data, not branches: an
#: option is shown while its controller holds one of the values, or while it is set away from its default.
DEPENDS_ON: dict[str, tuple[str, tuple[Any, ...]]] = {
    "lr_scheduler_num_cycles": ("lr_scheduler", ("cosine_with_restarts",)),
    "lr_scheduler_power": ("lr_scheduler", ("polynomial",)),
    "lr_scheduler_timescale": ("lr_scheduler", ("inverse_sqrt",)),
    "lr_scheduler_min_lr_ratio": ("lr_scheduler", ("cosine_with_min_lr", "warmup_stable_decay")),
    "lr_decay_steps": ("lr_scheduler", ("warmup_stable_decay",)),
    "fused_backward_pass": ("optimizer_type", ("AdaFactor",)),  # sd-scripts' flag takes AdaFactor only
    "huber_schedule": ("loss_type", ("huber", "smooth_l1")),
    "huber_c": ("loss_type", ("huber", "smooth_l1")),
    "huber_scale": ("loss_type", ("huber", "smooth_l1")),
    **{name: ("deepspeed", (True,)) for name in ("zero_stage", *DEEPSPEED_ONLY)},
}


def has_no_effect(opt: Option) -> bool:
    """True for an option accepted only so sd-scripts configs load (``xformers``, ``lowram`` …): it has a
    compat note, or its help says it is accepted for sd-scripts configs."""
    return opt.compat_note is not None or NO_EFFECT_MARK in opt.help.casefold()


def no_effect_note(opt: Option) -> str:
    """Why the option does nothing here (its compat note, else its help)."""
    return opt.compat_note or opt.help


def is_short(opt: Option) -> bool:
    """Whether the option's field is narrow (checkbox, number, dropdown) and may share a row."""
    return field_spec(opt).widget in SHORT_WIDGETS


def rows(options: Iterable[Option], width: int = ROW_WIDTH) -> list[list[Option]]:
    """``options`` (in order) as rows: each wide field alone, runs of short fields ``width`` to a row."""
    out: list[list[Option]] = []
    run: list[Option] = []
    for opt in options:
        if is_short(opt):
            run.append(opt)
            if len(run) == width:
                out.append(run)
                run = []
            continue
        if run:
            out.append(run)
            run = []
        out.append([opt])
    if run:
        out.append(run)
    return out


@dataclass(frozen=True)
class SectionPlan:
    """One accordion of the form: ``key`` (title ``section.<key>``), its primary options (the section's
    order) and the others (schema order), which go under the section's own "more" fold."""

    key: str
    primary: list[Option] = field(default_factory=list)
    more: list[Option] = field(default_factory=list)

    @property
    def options(self) -> list[Option]:
        return [*self.primary, *self.more]


@dataclass(frozen=True)
class FormPlan:
    """The whole form of a trainer: the sections in ``SECTIONS`` order, the options of each model family's
    own group (placed by the caller), and the options that have no effect (one fold of their own)."""

    sections: list[SectionPlan]
    no_effect: list[Option]
    grouped: frozenset[str]

    def names(self) -> list[str]:
        placed = [o.name for s in self.sections for o in s.options] + [o.name for o in self.no_effect]
        return placed + sorted(self.grouped)


def form_plan(trainer: str, grouped: Iterable[str] = ()) -> FormPlan:
    """Where every form option of ``trainer`` goes; ``grouped``: the options shown in a family's own group
    instead (left out of the sections). Each form option lands in exactly one place."""
    grouped = frozenset(grouped)
    options = [o for o in form_options(trainer) if o.name not in grouped]
    no_effect = [o for o in options if has_no_effect(o)]
    rest = [o for o in options if not has_no_effect(o)]
    by_section: dict[str, list[Option]] = {}
    for opt in rest:
        by_section.setdefault(i18n.section_of(opt.name), []).append(opt)
    sections = []
    for section in i18n.SECTIONS:
        members = by_section.pop(section.key, [])
        names = {o.name for o in members}
        primary = [SCHEMA[n] for n in section.primary if n in names]
        more = [o for o in members if o.name not in section.primary]
        if primary or more:
            sections.append(SectionPlan(section.key, primary, more))
    for key, members in by_section.items():  # a section key the catalogue does not list: kept, at the end
        sections.append(SectionPlan(key, [], members))
    return FormPlan(sections, no_effect, grouped & {o.name for o in form_options(trainer)})


# --- search ---------------------------------------------------------------------------------------------


def search_words(query: str) -> list[str]:
    """The words of a search (case-folded, split on blanks; ``_`` counts as a letter)."""
    return [w for w in query.casefold().split() if w]


def matches(query: str, name: str, labels: Iterable[str]) -> bool:
    """True when every word of ``query`` is part of the option name or of one of its labels (an empty
    query matches everything)."""
    haystack = " ".join([name, *labels]).casefold()
    return all(word in haystack for word in search_words(query))


def search_matches(query: str, names: Iterable[str], langs: Iterable[str] = i18n.LANGUAGES) -> list[str]:
    """The option names among ``names`` that the search ``query`` finds, by name or by label in any of
    ``langs`` (so a Chinese label is found from an English page and the other way round)."""
    langs = tuple(langs)
    return [n for n in names if matches(query, n, [i18n.label(n, lang) for lang in langs])]


def search_index(entries: Iterable[tuple[str, str, list[str]]]) -> list[dict[str, Any]]:
    """The data the page's search script reads: per field, its element id, option name, labels in every
    language and the ids of the accordions that hold it (outermost first; opened on a match).
    ``entries``: (option name, field element id, accordion ids)."""
    return [
        {
            "id": elem_id,
            "name": name,
            "labels": [i18n.label(name, lang) for lang in i18n.LANGUAGES],
            "in": folds,
        }
        for name, elem_id, folds in entries
    ]


# --- options that depend on another option ---------------------------------------------------------------


def dependents(names: Iterable[str]) -> dict[str, list[str]]:
    """controller -> the options among ``names`` that depend on it (both in ``names``), in ``names`` order."""
    names = list(names)
    present = set(names)
    out: dict[str, list[str]] = {}
    for name in names:
        if name in DEPENDS_ON and DEPENDS_ON[name][0] in present:
            out.setdefault(DEPENDS_ON[name][0], []).append(name)
    return out


def applies(name: str, controller_value: Any) -> bool:
    """Whether ``name`` applies for this value of the option it depends on (raw form values: a dropdown's
    text, a checkbox's bool)."""
    controller, values = DEPENDS_ON[name]
    opt = SCHEMA[controller]
    if opt.kind == "bool":
        return bool(controller_value) in values
    folded = str(controller_value or "").strip().casefold()
    return folded in {str(v).casefold() for v in values}
