"""The model-family side of the training form, with gradio: the family line under the model field and
the fields and family groups shown or hidden when the model (or one of a family's separate files) changes.
The decisions are :mod:`library.gui.family_hint`'s; this module turns them into component updates.
"""

from __future__ import annotations

import functools
from typing import Any

import gradio as gr

from library.config.options import SCHEMA
from library.config.schema import Option
from library.gui.family_hint import (
    FamilyHint,
    assumed_family,
    family_groups,
    family_hint,
    family_notes,
    file_options,
    form_visibility,
)
from library.gui.fields import from_field
from library.gui.guard import bind


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
