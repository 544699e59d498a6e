"""The form's LoRA-type selector (LoRA, LoCon, LoHa, LoKr, DoRA …) -> ``network_module`` / ``network_args``.

The mapping is kohya_ss' own (:data:`library.gui.kohya_network.LORA_TYPES`, applied by
:func:`~library.gui.kohya_network.network_options`), so a type picked here gives the same fields as the
same type imported from a kohya_ss config. Only the types we can train are offered; DoRA, which kohya_ss
reaches as LyCORIS/LoCon with ``dora_wd`` on, is one entry more. Changing the type keeps the arguments
the new type also reads (``conv_dim=8`` stays when LoCon becomes LoHa) and any argument that is no type's
field (a hand-written one); the other type fields are dropped. No gradio here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from library.gui.kohya_network import ARG_NAMES, LORA_TYPES, NETWORK_FIELDS, network_options

#: kohya_ss' old spelling of LyCORIS/LoCon: the same type, not offered twice
_ALIASES = ("LoCon",)


@dataclass(frozen=True)
class SelectorType:
    """One entry of the selector: the kohya_ss LoRA type it stands for and the fields it turns on."""

    kohya_type: str
    fields: dict[str, Any] = field(default_factory=dict)


#: the selector's entries, in the order shown
SELECTOR_TYPES: dict[str, SelectorType] = {
    **{
        name: SelectorType(name)
        for name, kind in LORA_TYPES.items()
        if kind.refused is None and name not in _ALIASES
    },
    "LyCORIS/DoRA": SelectorType("LyCORIS/LoCon", {"dora_wd": True}),
}

#: network_args key -> the kohya_ss field it comes from (``preset`` -> ``LyCORIS_preset``)
_FIELD_OF_KEY = {key: name for name, key in ARG_NAMES.items()}
#: every network_args key some type writes (plus ``algo``): these belong to the type
TYPE_KEYS = frozenset({ARG_NAMES.get(f, f) for f in NETWORK_FIELDS} | {"algo"})


def parse_args(lines: list[str] | str) -> dict[str, str]:
    """``network_args`` (a list of ``key=value`` or the form's one-per-line text) as key -> value text."""
    items = lines.splitlines() if isinstance(lines, str) else list(lines or [])
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = str(item).strip().partition("=")
        if sep and key.strip():
            out[key.strip()] = value.strip()
    return out


def type_fields(type_name: str, current_args: list[str] | str = ()) -> tuple[str, list[str]]:
    """(network_module, network_args) for the selector entry ``type_name``, keeping from ``current_args``
    what the new type reads and what no type writes. Raises ``KeyError`` for an unknown entry."""
    entry = SELECTOR_TYPES[type_name]
    current = parse_args(current_args)
    data: dict[str, Any] = {_FIELD_OF_KEY.get(k, k): v for k, v in current.items() if k in TYPE_KEYS}
    data.update(entry.fields)
    result = network_options(data, entry.kohya_type)
    own = [f"{k}={v}" for k, v in current.items() if k not in TYPE_KEYS]
    return result.module or "", [*result.args, *own]


def detect_type(module: str | None, args: list[str] | str = ()) -> str | None:
    """The selector entry a loaded ``network_module`` / ``network_args`` pair is (None: none fits, e.g. a
    hypernetwork or a LyCORIS algorithm not offered)."""
    module = (module or "").strip()
    parsed = parse_args(args)
    if module == "lycoris.kohya":
        algo = parsed.get("algo", "lora").lower()
        dora = parsed.get("dora_wd", "").lower() == "true"
        if algo == "locon" and dora:
            return "LyCORIS/DoRA"
        for name, entry in SELECTOR_TYPES.items():
            if LORA_TYPES[entry.kohya_type].algo == algo and not entry.fields:
                return name
        return None
    if module == "networks.lora":
        return "Kohya LoCon" if "conv_dim" in parsed else "Standard"
    for name, entry in SELECTOR_TYPES.items():
        if LORA_TYPES[entry.kohya_type].module == module and not LORA_TYPES[entry.kohya_type].algo:
            return name
    return None
