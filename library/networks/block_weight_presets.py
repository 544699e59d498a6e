"""Block weights as the webui's LoRA Block Weight extension writes them (hako-mikan/sd-webui-lora-block-weight).

The extension numbers blocks BASE (the text encoders), IN00–IN11, M00, OUT00–OUT11 (26, its
``BLOCKID26``) and accepts shorter forms that list only the blocks a plain LoRA has (its
``BLOCKID17`` / ``BLOCKID12`` / ``BLOCKID20``); a missing block gets 0, as its ``to26`` does:

- 17 values (SD1/SD2): BASE, IN01, IN02, IN04, IN05, IN07, IN08, M00, OUT03–OUT11
- 12 values (SDXL): BASE, IN04, IN05, IN07, IN08, M00, OUT00–OUT05
- 20 values (SDXL, LyCORIS): BASE, IN00–IN08, M00, OUT00–OUT08
- 26 values: BASE, IN00–IN11, M00, OUT00–OUT11

and named presets (its ``DEF_WEIGHT_PRESET``, 17 values each): NONE, ALL, INS, IND, INALL, MIDD, OUTD,
OUTS, OUTALL, ALL0.5; a line of its ``lbwpresets.txt`` (``MYNAME:1,0,…``) is read as its values.

The extension applies a value to every LoRA module whose key contains the block's LDM path
(``input_blocks_4_`` …), so one 26-vector serves SD and SDXL alike. In our layouts (sd-scripts'
numbering) that means: SD1/SD2's 25 blocks take IN00–OUT11 as they are; SDXL's 23 take IN00–IN08 and
OUT00–OUT08, its M00–M02 all take the extension's M00 (the whole middle block), and its BASE (time / label
embedding) and OUT (the final norm and conv), which the extension leaves at 1, stay 1. The extension's
BASE is the text encoders' weight (:data:`TEXT_ENCODER_KEY` in the parsed weights).
"""

from __future__ import annotations

import math

from library.errors import ConfigError

BLOCKID26 = ("BASE", *(f"IN{i:02d}" for i in range(12)), "M00", *(f"OUT{i:02d}" for i in range(12)))
BLOCKID17 = ("BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00",
             *(f"OUT{i:02d}" for i in range(3, 12)))
BLOCKID12 = ("BASE", "IN04", "IN05", "IN07", "IN08", "M00", *(f"OUT{i:02d}" for i in range(6)))
BLOCKID20 = ("BASE", *(f"IN{i:02d}" for i in range(9)), "M00", *(f"OUT{i:02d}" for i in range(9)))
FORMS = {len(ids): ids for ids in (BLOCKID12, BLOCKID17, BLOCKID20, BLOCKID26)}

#: the extension's default presets (DEF_WEIGHT_PRESET), 17 values each
PRESETS = {
    "NONE": "0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0",
    "ALL": "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1",
    "INS": "1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0",
    "IND": "1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "INALL": "1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "MIDD": "1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0",
    "OUTD": "1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0",
    "OUTS": "1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1",
    "OUTALL": "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1",
    "ALL0.5": "0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5",
}

#: key of the text encoders' weight (the extension's BASE) in parsed block weights
TEXT_ENCODER_KEY = "TE"


def _items(values) -> list[str]:
    if isinstance(values, str):
        text = values.strip()
        preset = PRESETS.get(text.upper())
        if preset is not None:
            text = preset
        elif ":" in text:
            text = text.split(":", 1)[1]  # a line of the extension's lbwpresets.txt, "NAME:values"
        return [v for v in text.replace(" ", "").split(",") if v]
    return [str(v).strip() for v in values]


def is_lbw(values, layout_total: int | None = None) -> bool:
    """True for a preset name or a list of 12/17/20/26 values (unless that is ``layout_total``, our own form)."""
    if isinstance(values, str) and values.strip().upper() in PRESETS:
        return True
    n = len(_items(values))
    return n in FORMS and n != layout_total


def expand_to_26(values) -> list[float]:
    """The extension's 26 values (BASE, IN00–IN11, M00, OUT00–OUT11) of a preset or a 12/17/20/26 list;
    blocks the short form leaves out are 0 (its ``to26``)."""
    items = _items(values)
    if len(items) not in FORMS:
        raise ConfigError(
            f"block weights {values!r}: the LoRA Block Weight forms have 12, 17, 20 or 26 values or are a preset "
            f"({', '.join(PRESETS)}), got {len(items)} values."
        )
    try:
        numbers = [float(v) for v in items]
    except ValueError:
        raise ConfigError(f"block weights must be numbers or a preset ({', '.join(PRESETS)}), got {values!r}.") from None
    if not all(math.isfinite(v) for v in numbers):
        raise ConfigError(f"block weights must be finite numbers, got {values!r}.")
    out = dict.fromkeys(BLOCKID26, 0.0)
    out.update(zip(FORMS[len(numbers)], numbers, strict=True))
    return [out[b] for b in BLOCKID26]


def to_layout(values, names: tuple[str, ...]) -> tuple[list[float], float]:
    """(one weight per block of a layout with block ``names``, the text encoders' weight) for a LoRA Block
    Weight preset or list, mapped as the module docstring says."""
    lbw = dict(zip(BLOCKID26, expand_to_26(values), strict=True))
    weights = []
    for name in names:
        if name != "BASE" and name in lbw:
            weights.append(lbw[name])
        elif name.startswith("M") and name[1:].isdigit():
            weights.append(lbw["M00"])  # SDXL's middle block parts
        else:
            weights.append(1.0)  # outside the extension's blocks (SDXL's BASE / OUT): it applies 1
    return weights, lbw["BASE"]
