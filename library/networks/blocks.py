"""Block-wise LoRA settings (sd-scripts' ``network_args``): per-block ranks/alphas and learning-rate weights.

The SD 1.x/2.x UNet is numbered in 25 blocks as sd-scripts and the webui's block-weight tools do:
0 = the input conv (no LoRA there), 1–11 the down path, 12 the mid block, 13–24 the up path. A module
``{up|down}_blocks_{i}_{resnets|attentions|downsamplers|upsamplers}_{j}`` has index 3·i + j (samplers 3·i + 2),
plus 1 for down blocks and 13 for up blocks. ``block_lr_weight`` (network_args) sets every block's lr weight
at once, also in the webui LoRA Block Weight forms (17 values, presets such as ``MIDD``).
"""

from __future__ import annotations

import math
import re

from library.errors import ConfigError

NUM_BLOCKS = 12  # per path (down / up); 25 in all with the mid block and the input conv
TOTAL_BLOCKS = 2 * NUM_BLOCKS + 1
MID_BLOCK = NUM_BLOCKS

_UPDOWN = re.compile(r"(up|down)_blocks_(\d+)_(resnets|upsamplers|downsamplers|attentions)_(\d+)_")


def block_index(lora_name: str) -> int | None:
    """The 0–24 block of a UNet module's LoRA name; None for modules outside the numbered blocks."""
    match = _UPDOWN.search(lora_name)
    if match:
        path, i, kind, j = match.group(1), int(match.group(2)), match.group(3), int(match.group(4))
        idx = 3 * i + (2 if kind in ("upsamplers", "downsamplers") else j)
        return 1 + idx if path == "down" else NUM_BLOCKS + 1 + idx
    if "mid_block_" in lora_name:
        return MID_BLOCK
    return None


def parse_block_list(text: str, name: str, kind=int, layout=None) -> list:
    """One comma-separated value per block (``block_dims``, ``block_alphas``, ...): 25 for SD1/SD2
    (IN00-IN11, M00, OUT00-OUT11), the family's ``layout.total`` otherwise (23 for SDXL)."""
    total = TOTAL_BLOCKS if layout is None else layout.total
    names = "IN00-IN11, M00, OUT00-OUT11" if layout is None else f"{layout.names[0]}-{layout.names[-1]}"
    try:
        values = [kind(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"network_args {name}: {text!r} must be {total} comma-separated numbers.") from None
    if len(values) != total:
        raise ConfigError(f"network_args {name} has {len(values)} values; it needs {total} ({names}).")
    return values


_PRESETS = {
    "cosine": lambda i, n: math.sin(math.pi * ((n - 1 - i) / (n - 1)) / 2),
    "sine": lambda i, n: math.sin(math.pi * (i / (n - 1)) / 2),
    "linear": lambda i, n: i / (n - 1),
    "reverse_linear": lambda i, n: (n - 1 - i) / (n - 1),
    "zeros": lambda i, n: 0.0,
}


def parse_lr_weights(text: str, name: str, length: int = NUM_BLOCKS) -> list[float]:
    """A learning-rate weight list: numbers (short lists padded with 1, long ones cut) or a preset
    ``cosine|sine|linear|reverse_linear|zeros`` with an optional ``+base`` (e.g. ``sine+.5``)."""
    head, _, base_text = text.strip().partition("+")
    if head in _PRESETS:
        try:
            base = float(base_text) if base_text else 0.0
        except ValueError:
            raise ConfigError(
                f"network_args {name}: {text!r}: the part after '+' must be a number."
            ) from None
        return [_PRESETS[head](i, length) + base for i in range(length)]
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(
            f"network_args {name}: {text!r} must be comma-separated numbers or one of "
            f"{', '.join(_PRESETS)} (optionally +base)."
        ) from None
    return (values + [1.0] * length)[:length]


SD_NAMES = tuple([f"IN{i:02d}" for i in range(NUM_BLOCKS)] + ["M00"] + [f"OUT{i:02d}" for i in range(NUM_BLOCKS)])


def parse_all_block_lr_weights(text: str, layout=None) -> list[float]:
    """``block_lr_weight``: one lr weight per block of the layout (SD1/SD2 25, SDXL 23), or a webui LoRA
    Block Weight form (17 values for SD1/SD2, 12 for SDXL, 26, or a preset such as ``INALL``:
    :mod:`library.networks.block_weight_presets`; its BASE, the text encoders' weight, does not apply to lrs)."""
    from library.networks import block_weight_presets as lbw

    names = SD_NAMES if layout is None else tuple(layout.names)
    if lbw.is_lbw(text, len(names)):
        return lbw.to_layout(text, names)[0]
    try:
        values = [float(v) for v in str(text).replace(" ", "").split(",") if v]
    except ValueError:
        values = []
    if len(values) != len(names) or not all(math.isfinite(v) for v in values):
        raise ConfigError(
            f"network_args block_lr_weight {text!r} must be {len(names)} comma-separated numbers "
            f"({names[0]}-{names[-1]}) or a LoRA Block Weight form: 17 values for SD1/SD2, 12 for SDXL, 26, or a "
            f"preset ({', '.join(lbw.PRESETS)})."
        )
    return values


def check_block_lr_weight(text: str) -> str:
    """network_args validator for ``block_lr_weight``: a preset or comma-separated finite numbers (their count
    is checked against the model's blocks when the network is built)."""
    from library.networks import block_weight_presets as lbw

    if text.strip().upper() in lbw.PRESETS:
        return text
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) for v in values):
        raise ValueError(f"must be comma-separated numbers, one per block, or a preset ({', '.join(lbw.PRESETS)})")
    return text


def block_lr_weights(down: str | None, mid: str | None, up: str | None, layout=None,
                     all_blocks: str | None = None) -> list[float] | None:
    """The lr weight of each block, or None when no weight is set.

    SD1/SD2 (``layout`` None): 25 blocks, down = IN00-IN11 (IN00 has no LoRA), mid = M00, up = OUT00-OUT11.
    Another family's :class:`~library.models.family.BlockLayout` (SDXL): ``per_path`` values each for down
    and up and the rest of the middle for mid, sd-scripts' SDXL numbering (base and out blocks stay 1.0).
    ``all_blocks`` (network_args ``block_lr_weight``): every block at once, :func:`parse_all_block_lr_weights`.
    """
    if all_blocks is not None:
        if down is not None or mid is not None or up is not None:
            raise ConfigError("network_args block_lr_weight sets every block's lr weight; drop down_lr_weight, "
                              "mid_lr_weight and up_lr_weight, or block_lr_weight.")
        return parse_all_block_lr_weights(all_blocks, layout)
    if down is None and mid is None and up is None:
        return None
    if layout is None:
        total, per_path, first, n_mid = TOTAL_BLOCKS, NUM_BLOCKS, 0, 1
    else:
        total, per_path, first, n_mid = layout.total, layout.per_path, layout.leading, layout.mid_count
    weights = [1.0] * total
    if down is not None:
        weights[first : first + per_path] = parse_lr_weights(down, "down_lr_weight", per_path)
    if mid is not None:
        weights[first + per_path : first + per_path + n_mid] = parse_lr_weights(mid, "mid_lr_weight", n_mid)
    if up is not None:
        start = first + per_path + n_mid
        weights[start : start + per_path] = parse_lr_weights(up, "up_lr_weight", per_path)
    return weights
