"""``network_args`` parsing: sd-scripts' "key=value" strings to typed keyword arguments."""

from __future__ import annotations

import difflib
from collections.abc import Callable

from library.errors import ConfigError


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must not be negative")
    return value


def probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise ValueError("must be in [0, 1)")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise ValueError("must be positive")
    return value


def boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError("must be true or false")
    return lowered in ("true", "1", "yes")


#: network_args understood by networks.lora: key -> converter from the string value.
LORA_ARGS: dict[str, Callable[[str], object]] = {
    "conv_dim": non_negative_int,
    "conv_alpha": float,
    "rank_dropout": probability,
    "module_dropout": probability,
    "loraplus_lr_ratio": positive_float,
    "loraplus_unet_lr_ratio": positive_float,
    "loraplus_text_encoder_lr_ratio": positive_float,
    # block-wise settings (library/networks/blocks.py parses the lists when the network is built)
    "block_dims": str,
    "block_alphas": str,
    "conv_block_dims": str,
    "conv_block_alphas": str,
    "down_lr_weight": str,
    "mid_lr_weight": str,
    "up_lr_weight": str,
    "block_lr_zero_threshold": float,
}

#: sd-scripts keys we know but do not implement yet: an explicit error instead of silently ignoring them.
NOT_YET_SUPPORTED: tuple[str, ...] = ()


def split_network_args(items: list[str] | tuple[str, ...] | None) -> dict[str, str]:
    """["conv_dim=8", "a=b=c"] -> {"conv_dim": "8", "a": "b=c"} (split on the first "="; later wins)."""
    pairs: dict[str, str] = {}
    for item in items or ():
        if "=" not in item:
            raise ConfigError(
                f'network_args entry {item!r} is not of the form key=value (e.g. "conv_dim=8").'
            )
        key, value = item.split("=", 1)
        pairs[key.strip()] = value.strip()
    return pairs


def parse_network_args(
    items: list[str] | tuple[str, ...] | None, known: dict[str, Callable[[str], object]] = LORA_ARGS
) -> dict[str, object]:
    """Parse and convert ``network_args``; unknown keys raise :class:`ConfigError` listing the valid ones."""
    parsed: dict[str, object] = {}
    for key, text in split_network_args(items).items():
        if key in NOT_YET_SUPPORTED and key not in known:
            raise ConfigError(
                f"network_args key {key!r} (sd-scripts block-wise options) is not supported yet. "
                f"Remove it; supported keys: {', '.join(known)}."
            )
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"Unknown network_args key {key!r}.{hint} Valid keys: {', '.join(known)}.")
        if text.lower() == "none":
            parsed[key] = None
            continue
        try:
            parsed[key] = known[key](text)
        except ValueError as exc:
            raise ConfigError(f"network_args {key}={text!r} is invalid: {exc}.") from exc
    return parsed
