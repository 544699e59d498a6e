"""Coercion of raw option values (TOML types or command-line strings) to each option's kind."""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any

from library.config.schema import Option
from library.errors import ConfigError

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _fail(opt: Option, raw: Any, expected: str) -> ConfigError:
    if isinstance(raw, dict):
        return ConfigError(
            f"option {opt.name!r} must be {expected}, not a table ({raw!r}). Write it as "
            f"{opt.name} = <value>. {opt.help}"
        )
    return ConfigError(f"option {opt.name!r}: {raw!r} is not {expected}. {opt.help}")


def file_name_problem(text: str) -> str | None:
    """Why ``text`` cannot be a plain file name that stays inside its folder, or None when it can.

    Refuses the empty name, ``.`` and ``..``, path separators (``/``, ``\\``) and control characters
    (a newline in a name would forge lines in the log).
    """
    if text.strip() == "":
        return "is empty; give a plain file name"
    if text in (".", ".."):
        return "refers to a folder, not a file; give a plain file name"
    if "/" in text or "\\" in text:
        return "holds a path separator (/ or \\); it must be a plain name that stays inside its folder"
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in text):
        return "holds a control character (such as a newline or tab); remove it"
    return None


def empty_is_unset(opt: Option) -> bool:
    """Whether ``""`` means "unset" for ``opt``: for every option but free text with a non-empty default
    (``output_name = ""`` or ``caption_separator = ""`` is a mistake, not a wish for the default) and those
    declared ``empty_is_value`` (``caption_extension = ""`` names no caption file)."""
    if opt.empty_is_value:
        return False
    return not (opt.kind == "str" and opt.choices is None and opt.default not in (None, ""))


def is_off_value(opt: Option, raw: Any) -> bool:
    """True when ``raw`` is one of sd-scripts' spellings of "unset" for ``opt``, before coercion.

    sd-scripts tests most options with ``if args.x:``, and the kohya_ss GUI writes every field, the empty
    ones as ``false``, ``0`` or ``""``: ``None``; ``""`` (see :func:`empty_is_unset`); ``false`` for an option
    that is not a switch (``resume = false``); ``0`` for an option declared ``zero_is_off``.
    """
    if raw is None:
        return True
    if isinstance(raw, str) and (raw == "" if opt.kind == "str" else raw.strip() == ""):
        return empty_is_unset(opt)
    if opt.kind == "bool":
        return False
    if raw is False:
        return True
    return opt.zero_is_off and isinstance(raw, (int, float)) and raw == 0


def coerce(opt: Option, raw: Any) -> Any:
    """Convert ``raw`` to the option's kind, or raise ``ConfigError`` naming the option and value.

    Returns None for an off value (:func:`is_off_value`, also a ``"0"`` from the command line for a
    ``zero_is_off`` option): the caller then uses the option's default.
    """
    if is_off_value(opt, raw):
        return None
    kind = opt.kind
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, int) and raw in (0, 1):  # sd-scripts reads switches by truth: 0 / 1
            return bool(raw)
        if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
            return raw.strip().lower() in _TRUE
        raise _fail(opt, raw, "true or false")
    if kind == "int":
        value = _to_int(opt, raw)
        return None if opt.zero_is_off and value == 0 else value
    if kind == "float":
        value = _to_float(opt, raw)
        return None if opt.zero_is_off and value == 0 else value
    if kind in ("str", "path", "dir", "file"):
        if isinstance(raw, (list, tuple)) and len(raw) == 1:
            raw = raw[0]
            if is_off_value(opt, raw):
                return None
        if isinstance(raw, (dict, list, tuple)):
            raise _fail(opt, raw, "a single text value")
        return str(raw)
    if kind == "strs":
        if isinstance(raw, str):
            return [raw] if raw.strip() else []
        if isinstance(raw, (list, tuple)) and all(isinstance(x, (str, int, float, bool)) for x in raw):
            return [str(x) for x in raw]
        raise _fail(opt, raw, "a list of strings")
    if kind == "float_or_floats":
        if isinstance(raw, (list, tuple)):
            if len(raw) == 0:
                return None
            if len(raw) > 2:
                raise ConfigError(
                    f"option {opt.name!r}: {list(raw)!r} has {len(raw)} values; give one value, or two for a "
                    f"model with two text encoders (SDXL: text encoder 1, text encoder 2)."
                )
            if len(raw) == 2:
                return [_to_float(opt, x) for x in raw]
            raw = raw[0]
        return _to_float(opt, raw)
    if kind == "steps":
        return _to_steps(opt, raw)
    if kind == "resolution":
        return _to_resolution(opt, raw)
    raise AssertionError(kind)


def _to_int(opt: Option, raw: Any) -> int:
    if isinstance(raw, bool):
        raise _fail(opt, raw, "a whole number")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str):
        try:
            return int(raw.strip())
        except ValueError:
            pass
    raise _fail(opt, raw, "a whole number")


def _to_float(opt: Option, raw: Any) -> float:
    if isinstance(raw, bool):
        raise _fail(opt, raw, "a number")
    value: float | None = None
    if isinstance(raw, (int, float, str)):
        try:
            value = float(raw.strip() if isinstance(raw, str) else raw)
        except ValueError:
            pass
        except OverflowError:  # an int beyond the float range
            value = math.inf
    if value is None:
        raise _fail(opt, raw, "a number")
    if not math.isfinite(value):
        raise ConfigError(f"option {opt.name!r}: {raw!r} must be a finite number (not NaN or infinity). {opt.help}")
    return value


def _to_steps(opt: Option, raw: Any) -> int | float | str:
    """A step count (int), a ratio of the total (0 <= float < 1) or a percentage string ("10%")."""
    if isinstance(raw, str):
        text = raw.strip()
        if re.fullmatch(r"\d+(\.\d+)?%", text):
            pct = float(text[:-1])
            if pct > 100:
                raise _fail(opt, raw, "a percentage up to 100%")
            return text
        try:
            raw = float(text) if "." in text or "e" in text.lower() else int(text)
        except ValueError:
            raise _fail(opt, raw, 'a step count, a ratio below 1 or "N%"') from None
    if isinstance(raw, bool):
        raise _fail(opt, raw, 'a step count, a ratio below 1 or "N%"')
    if isinstance(raw, float) and raw >= 1:
        if not raw.is_integer():
            raise _fail(opt, raw, "a whole step count (or a ratio below 1)")
        raw = int(raw)
    if isinstance(raw, (int, float)) and raw >= 0:
        return raw
    raise _fail(opt, raw, 'a step count, a ratio below 1 or "N%"')


def _to_resolution(opt: Option, raw: Any) -> tuple[int, int]:
    """ "512" -> (512, 512); "512,768" or [512, 768] -> (512, 768) as (width, height)."""
    parts: list[Any]
    if isinstance(raw, bool):
        raise _fail(opt, raw, 'a resolution like "512" or "512,768"')
    if isinstance(raw, int):
        parts = [raw]
    elif isinstance(raw, str):
        parts = [p for p in re.split(r"[,x ]+", raw.strip()) if p]
    elif isinstance(raw, (list, tuple)):
        parts = list(raw)
    else:
        raise _fail(opt, raw, 'a resolution like "512" or "512,768"')
    try:
        nums = [int(p) for p in parts]
    except (TypeError, ValueError):
        raise _fail(opt, raw, 'a resolution like "512" or "512,768"') from None
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2 or min(nums) < 64:
        raise _fail(opt, raw, "one or two sizes of at least 64 pixels")
    return nums[0], nums[1]
