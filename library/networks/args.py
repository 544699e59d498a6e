"""``network_args`` parsing: sd-scripts' "key=value" strings to typed keyword arguments."""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable

from library.errors import ConfigError


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError("must be a whole number") from None
    if value < 0:
        raise ValueError("must not be negative")
    return value


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("must be a number") from None
    if not math.isfinite(value):
        raise ValueError("must be a finite number (not NaN or infinity)")
    return value


def rank(text: str) -> int:
    """A rank such as ``conv_dim``: 0 (off) up to ``network_dim``'s upper bound."""
    from library.config.rules import NETWORK_DIM_MAX

    value = non_negative_int(text)
    if value > NETWORK_DIM_MAX:
        raise ValueError(
            f"must be at most {NETWORK_DIM_MAX}, as network_dim (LoKr's full-matrix setting): a LoRA rank above a "
            "layer's width adds nothing (ranks of 4 to 128 are usual)"
        )
    return value


def _each(text: str, check: Callable[[str], object]) -> str:
    """Check every comma-separated item of ``text`` with ``check``; return ``text`` unchanged (its length
    is checked against the model's blocks when the network is built)."""
    for item in (part.strip() for part in text.split(",")):
        if item:
            try:
                check(item)
            except ValueError as exc:
                raise ValueError(f"has the item {item!r}, which {exc}") from None
    return text


def rank_list(text: str) -> str:
    """Comma-separated ranks (``block_dims``, ``conv_block_dims``), each as :func:`rank`."""
    return _each(text, rank)


def number_list(text: str) -> str:
    """Comma-separated finite numbers (``block_alphas``, ``conv_block_alphas``)."""
    return _each(text, finite_float)


def lr_weights(text: str) -> str:
    """``down_lr_weight`` and friends: numbers or a preset (``sine+.5``), all finite; the text is kept."""
    from library.networks.blocks import parse_lr_weights

    try:
        weights = parse_lr_weights(text, "lr weight")
    except ConfigError:
        raise ValueError(
            "must be comma-separated numbers or a preset (cosine, sine, linear, reverse_linear or zeros, "
            "optionally +base such as sine+.5)"
        ) from None
    if not all(math.isfinite(v) for v in weights):
        raise ValueError("must hold finite numbers only (not NaN or infinity)")
    return text


def _block_lr_weight(text: str) -> str:
    """``block_lr_weight``: every block's lr weight, or a webui LoRA Block Weight form / preset (blocks.py)."""
    from library.networks.blocks import check_block_lr_weight

    return check_block_lr_weight(text)


def probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise ValueError("must be in [0, 1)")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if value <= 0:
        raise ValueError("must be positive")
    return value


def boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError("must be true or false")
    return lowered in ("true", "1", "yes")


def train_blocks(text: str) -> str:
    if text not in ("all", "single", "double"):
        raise ValueError("must be all, single or double")
    return text


def in_dims(text: str) -> tuple[int, ...]:
    """sd-scripts' FLUX ``in_dims``: five ranks for img_in, time_in, vector_in, guidance_in, txt_in (``[4,2,2,2,4]``;
    the brackets are optional), 0 = no LoRA there."""
    inner = text.strip()
    if inner.startswith("[") and inner.endswith("]"):
        inner = inner[1:-1]
    items = [item.strip() for item in inner.split(",")]
    if len(items) != 5:
        raise ValueError(
            f"must be 5 comma-separated ranks (img_in, time_in, vector_in, guidance_in, txt_in), e.g. [4,2,2,2,4]; "
            f"it has {len(items)}"
        )
    values = []
    for item in items:
        try:
            values.append(rank(item))
        except ValueError as exc:
            raise ValueError(f"has the item {item!r}, which {exc}") from None
    return tuple(values)


def block_selection(text: str) -> str:
    """sd-scripts' ``train_double_block_indices`` / ``train_single_block_indices``: ``all``, ``none`` or indices and
    ranges such as ``0,1,4-5,7`` (0-based). The indices are checked against the model's block count later."""
    from library.networks.flux_plan import parse_block_selection

    parse_block_selection(text, None)
    return text.strip()


def _pattern_pairs(text: str, convert: Callable[[str], object]) -> dict[str, object]:
    """``pattern=value,pattern=value`` (sd-scripts' network_reg_dims / network_reg_lrs), each pattern a regular
    expression searched in the module names (lora_unet_double_blocks_0_img_attn_qkv …)."""
    import re

    pairs: dict[str, object] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if "=" not in item:
            raise ValueError(f"has the item {item!r}, which is not pattern=value (e.g. img_attn=8)")
        pattern, value = (part.strip() for part in item.split("=", 1))
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"has the pattern {pattern!r}, which is not a regular expression ({exc})") from None
        try:
            pairs[pattern] = convert(value)
        except ValueError as exc:
            raise ValueError(f"has the value {value!r} for {pattern!r}, which {exc}") from None
    if not pairs:
        raise ValueError("must hold at least one pattern=value pair")
    return pairs


def pattern_ranks(text: str) -> dict[str, object]:
    return _pattern_pairs(text, rank)


def _learning_rate(text: str) -> float:
    value = finite_float(text)
    if value < 0:
        raise ValueError("must not be negative")
    return value


def pattern_lrs(text: str) -> dict[str, object]:
    return _pattern_pairs(text, _learning_rate)


#: network_args understood by networks.lora: key -> converter from the string value.
LORA_ARGS: dict[str, Callable[[str], object]] = {
    "conv_dim": rank,
    "conv_alpha": finite_float,
    "rank_dropout": probability,
    "module_dropout": probability,
    "loraplus_lr_ratio": positive_float,
    "loraplus_unet_lr_ratio": positive_float,
    "loraplus_text_encoder_lr_ratio": positive_float,
    # block-wise settings (library/networks/blocks.py parses the lists when the network is built)
    "block_dims": rank_list,
    "block_alphas": number_list,
    "conv_block_dims": rank_list,
    "conv_block_alphas": number_list,
    "down_lr_weight": lr_weights,
    "mid_lr_weight": lr_weights,
    "up_lr_weight": lr_weights,
    "block_lr_weight": _block_lr_weight,
    "block_lr_zero_threshold": finite_float,
    # FLUX (sd-scripts' networks.lora_flux): which blocks, and whether T5 gets a LoRA (the family applies them)
    "train_blocks": train_blocks,
    "train_t5xxl": boolean,
    "split_qkv": boolean,
    "in_dims": in_dims,
    **dict.fromkeys(("img_attn_dim", "img_mlp_dim", "img_mod_dim", "txt_attn_dim", "txt_mlp_dim", "txt_mod_dim",
                     "single_dim", "single_mod_dim"), rank),
    "train_double_block_indices": block_selection,
    "train_single_block_indices": block_selection,
    "network_reg_dims": pattern_ranks,
    "network_reg_lrs": pattern_lrs,
    "verbose": boolean,
}

#: sd-scripts keys we know but do not implement yet -> what they are: an explicit error instead of silently
#: ignoring them.
NOT_YET_SUPPORTED: dict[str, str] = {
    "ggpo_sigma": "LoRA-GGPO, networks.lora_flux's gradient-guided weight perturbation",
    "ggpo_beta": "LoRA-GGPO, networks.lora_flux's gradient-guided weight perturbation",
}


#: keys whose value "none" means something (no block), not "unset"
NONE_IS_A_VALUE = frozenset({"train_double_block_indices", "train_single_block_indices"})


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
                f"network_args key {key!r} ({NOT_YET_SUPPORTED[key]}) is not supported yet. "
                f"Remove it; supported keys: {', '.join(known)}."
            )
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"Unknown network_args key {key!r}.{hint} Valid keys: {', '.join(known)}.")
        if text.lower() == "none" and key not in NONE_IS_A_VALUE:
            parsed[key] = None
            continue
        try:
            value = known[key](text)
        except ValueError as exc:
            reason = str(exc) if str(exc).startswith(("must", "has the item")) else f"cannot be read ({exc})"
            raise ConfigError(f"network_args {key}={text!r} is invalid: it {reason}.") from None
        if isinstance(value, float) and not math.isfinite(value):  # a plain float converter let it through
            raise ConfigError(
                f"network_args {key}={text!r} is invalid: it must be a finite number (not NaN or infinity)."
            )
        parsed[key] = value
    return parsed
