"""The form face of the option schema, without gradio: which options a form shows, in which order, and how
a value travels between the config (typed values) and a form field (text, number, bool).

Every field is generated from the option's declaration (name, kind, default, help, choices), so nothing
about an option is written twice. Conversions are pure functions, tested without a browser.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from library.config.options import SCHEMA
from library.config.schema import Option, Schema

#: value of a dropdown entry meaning "unset" (the option's ``None``).
UNSET = ""

#: kinds shown as a free-text box (kept as text and parsed by the schema's own coercion).
TEXT_KINDS = ("str", "path", "dir", "file", "steps", "float_or_floats", "resolution")


@dataclass(frozen=True)
class FieldSpec:
    """How one option appears in a form: widget ``widget`` ("checkbox", "number", "dropdown", "text",
    "lines"), the label (the option's name), its help text and, for dropdowns, (label, value) choices."""

    option: Option
    widget: str
    choices: tuple[tuple[str, Any], ...] = ()
    custom_values: bool = False

    @property
    def name(self) -> str:
        return self.option.name

    @property
    def info(self) -> str:
        note = (
            f" (accepted for sd-scripts configs: {self.option.compat_note})"
            if self.option.compat_note
            else ""
        )
        return self.option.help + note


def form_options(trainer: str, schema: Schema = SCHEMA) -> list[Option]:
    """The options a training form shows: every option of ``trainer`` except the transient ones (the config
    file path itself, --output_config, secrets that are never written to a config)."""
    return [o for o in schema.for_trainer(trainer) if not o.transient]


def common_and_advanced(
    trainer: str, schema: Schema = SCHEMA
) -> tuple[list[Option], dict[str, list[Option]]]:
    """The common options (schema order) and the rest grouped by the schema's groups (in group order)."""
    options = form_options(trainer, schema)
    common = [o for o in options if o.common]
    advanced: dict[str, list[Option]] = {}
    for group in schema.groups:
        rest = [o for o in options if not o.common and o.group == group.key]
        if rest:
            advanced[group.key] = rest
    return common, advanced


def field_spec(opt: Option) -> FieldSpec:
    """The widget for ``opt``: checkbox for bool, dropdown for choices, number for int/float, a multi-line
    box for lists (one value per line), a text box for paths, strings, steps and resolutions."""
    if opt.kind == "bool":
        return FieldSpec(opt, "checkbox")
    choices = opt.allowed_choices()
    if choices:
        entries = tuple((str(c), str(c)) for c in choices)
        if opt.default is None:
            entries = (("(unset)", UNSET), *entries)
        return FieldSpec(opt, "dropdown", entries, custom_values=opt.check is not None)
    if opt.kind in ("int", "float"):
        # an optional number is a text box: a browser number field sends 0 when left empty, and 0 is not
        # "unset" (clip_skip = 0 is an error, noise_offset = 0 is not the same as off in every option)
        return FieldSpec(opt, "number" if opt.default is not None else "text")
    if opt.kind == "strs":
        return FieldSpec(opt, "lines")
    return FieldSpec(opt, "text")


def to_field(opt: Option, value: Any) -> Any:
    """A typed config value as the value of its form field (``None`` shows as an empty field)."""
    spec = field_spec(opt)
    if spec.widget == "checkbox":
        return bool(value)
    if spec.widget == "number":
        return value
    if value is None:
        return UNSET
    if opt.kind == "strs":
        return "\n".join(str(v) for v in value)
    if opt.kind == "resolution" and isinstance(value, (tuple, list)):
        w, h = value
        return f"{w}" if w == h else f"{w},{h}"
    return str(value)


def from_field(opt: Option, value: Any) -> Any:
    """A form field's value as a raw config value (validated later by ``config_from_values``).

    Empty text and the "(unset)" entry mean ``None`` (or ``""`` for text options whose default is ``""``);
    a list is one value per line, blank lines skipped; numbers that are whole stay ints for int options.
    """
    if opt.kind == "bool":
        return bool(value)
    if opt.kind == "strs":
        items = [line.strip() for line in str(value or "").splitlines() if line.strip()]
        # an empty box is the option's default "unset" (None), not an empty list the CLI never writes
        return items if items or opt.default is not None else None
    if value is None:
        return None
    if isinstance(value, str):
        value = value.strip() if opt.kind != "str" else value
        if value == UNSET:
            return "" if opt.default == "" else None
        return value
    if opt.kind == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def form_values(trainer: str, fields: dict[str, Any], schema: Schema = SCHEMA) -> dict[str, Any]:
    """Raw config values from the fields: only the options that differ from the schema default, so the
    written TOML is short and ``Config.explicit`` names what the user changed."""
    from library.config.values import coerce

    out: dict[str, Any] = {}
    for opt in form_options(trainer, schema):
        if opt.name not in fields:
            continue
        raw = from_field(opt, fields[opt.name])
        try:
            same = coerce(opt, raw) == coerce(opt, opt.default)
        except Exception:  # noqa: BLE001 - an invalid value is kept and reported by the validation
            same = False
        if not same:
            out[opt.name] = raw
    return out


def field_values(trainer: str, values: dict[str, Any], schema: Schema = SCHEMA) -> dict[str, Any]:
    """Form field values for every form option: ``values`` (typed or raw) over the schema defaults."""
    from library.config.values import coerce

    out = {}
    for opt in form_options(trainer, schema):
        raw = values.get(opt.name, opt.default)
        try:
            typed = coerce(opt, raw)
        except Exception:  # noqa: BLE001 - show what the file says; validation reports it on Start
            typed = raw
        out[opt.name] = to_field(opt, typed)
    return out
