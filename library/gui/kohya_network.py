"""kohya_ss' ``LoRA_type`` and its form fields -> ``network_module`` / ``network_args``, as kohya_ss
builds them.

Source: bmaltais/kohya_ss ``kohya_gui/lora_gui.py`` ``train_model`` (2026 snapshot). Each LoRA type is one
entry of :data:`LORA_TYPES`: the module kohya_ss passes, the fields it writes into ``network_args`` (in its
order, under sd-scripts' key names), and whether it writes them always or only when set. The same
fields then go through our own ``network_args`` parser when the config is validated, so a value we cannot
train is refused there with its key named, never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: LyCORIS keys kohya_ss passes that lycoris-lora's ``kohya.create_network`` never reads (4.1.x): they
#: have no effect under kohya_ss either, so they are listed in the import message instead of passed on.
LYCORIS_IGNORES = {
    "rank_dropout_scale": "lycoris-lora's kohya.create_network does not read rank_dropout_scale, so it has "
    "no "
    "effect under kohya_ss either",
    "train_on_input": "lycoris-lora's kohya.create_network does not read train_on_input (iA3 trains on the "
    "output), so it has no effect under kohya_ss either",
}

#: kohya_ss field -> network_args key, where they differ.
ARG_NAMES = {"LyCORIS_preset": "preset", "constrain": "constraint", "unit": "block_size"}

#: kohya_ss' form defaults (lora_gui.py): a field missing from a JSON keeps this value in its form, and
#: kohya_ss passes it for the types that always write the field (conv_dim 1 is not LyCORIS' own default).
FORM_DEFAULTS = {
    "LyCORIS_preset": "full",
    "conv_dim": 1,
    "conv_alpha": 1,
    "factor": -1,
    "unit": 1,
    "use_tucker": False,
    "use_scalar": False,
    "rank_dropout": 0,
    "module_dropout": 0.0,
    "bypass_mode": False,
    "dora_wd": False,
    "train_norm": False,
    "use_cp": False,
    "decompose_both": False,
    "constrain": 0.0,
    "rescaled": False,
    "train_on_input": True,
    "rank_dropout_scale": False,
}

#: network_args keys that LyCORIS / sd-scripts read as whole numbers (kohya_ss' sliders may save 8.0).
INT_KEYS = {"conv_dim", "block_size", "factor", "unit"}

_LYCORIS_COMMON = (
    "LyCORIS_preset",
    "conv_dim",
    "conv_alpha",
    "use_tucker",
    "rank_dropout",
    "bypass_mode",
    "dora_wd",
    "module_dropout",
    "use_scalar",
    "rank_dropout_scale",
)
#: sd-scripts networks.lora block-wise fields kohya_ss passes when they are set (non-empty, non-zero).
_LORA_BLOCK_FIELDS = (
    "down_lr_weight",
    "mid_lr_weight",
    "up_lr_weight",
    "block_lr_zero_threshold",
    "block_dims",
    "block_alphas",
    "conv_block_dims",
    "conv_block_alphas",
    "rank_dropout",
    "module_dropout",
)
_FLUX_FIELDS = (
    "img_attn_dim",
    "img_mlp_dim",
    "img_mod_dim",
    "single_dim",
    "txt_attn_dim",
    "txt_mlp_dim",
    "txt_mod_dim",
    "single_mod_dim",
    "in_dims",
    "train_double_block_indices",
    "train_single_block_indices",
)
_LORAPLUS = ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio")


@dataclass(frozen=True)
class LoraType:
    """One kohya_ss LoRA type: the module, the fields always written, the fields written when set."""

    module: str
    always: tuple[str, ...] = ()
    when_set: tuple[str, ...] = ()
    #: a fixed ``algo=`` for lycoris.kohya
    algo: str | None = None
    #: why we cannot train it (None: we can)
    refused: str | None = None


def _lycoris(algo: str, *fields: str) -> LoraType:
    return LoraType("lycoris.kohya", always=(*fields, "train_norm"), algo=algo)


def _refused(module: str, instead: str) -> LoraType:
    return LoraType(module, refused=f"it needs sd-scripts' {module}, which sdtrain does not have; {instead}")


LORA_TYPES: dict[str, LoraType] = {
    "Standard": LoraType("networks.lora", when_set=_LORA_BLOCK_FIELDS),
    "Kohya LoCon": LoraType("networks.lora", always=("conv_dim", "conv_alpha"), when_set=_LORA_BLOCK_FIELDS),
    "LyCORIS/LoCon": _lycoris("locon", *_LYCORIS_COMMON),
    "LoCon": _lycoris("locon", *_LYCORIS_COMMON),  # kohya_ss' old name, which it renames to LyCORIS/LoCon
    "LyCORIS/LoHa": _lycoris("loha", *_LYCORIS_COMMON),
    "LyCORIS/LoKr": _lycoris("lokr", *_LYCORIS_COMMON, "factor", "use_cp", "decompose_both"),
    "LyCORIS/iA3": _lycoris("ia3", "LyCORIS_preset", "conv_dim", "conv_alpha", "train_on_input"),
    "LyCORIS/DyLoRA": _lycoris(
        "dylora",
        "LyCORIS_preset",
        "conv_dim",
        "conv_alpha",
        "use_tucker",
        "unit",
        "rank_dropout",
        "module_dropout",
    ),
    "LyCORIS/GLoRA": _lycoris(
        "glora",
        "LyCORIS_preset",
        "conv_dim",
        "conv_alpha",
        "use_tucker",
        "rank_dropout",
        "module_dropout",
        "rank_dropout_scale",
    ),
    "LyCORIS/Diag-OFT": _lycoris(
        "diag-oft",
        "LyCORIS_preset",
        "conv_dim",
        "conv_alpha",
        "module_dropout",
        "use_tucker",
        "rank_dropout",
        "rank_dropout_scale",
        "constrain",
        "rescaled",
    ),
    "LyCORIS/BOFT": _lycoris(
        "boft",
        "LyCORIS_preset",
        "conv_dim",
        "conv_alpha",
        "module_dropout",
        "use_tucker",
        "rank_dropout",
        "rank_dropout_scale",
    ),
    "LyCORIS/Native Fine-Tuning": _lycoris(
        "full", "LyCORIS_preset", "rank_dropout", "module_dropout", "rank_dropout_scale"
    ),
    "Flux1": LoraType("networks.lora_flux", when_set=_FLUX_FIELDS),
    "Kohya DyLoRA": _refused(
        "networks.dylora", "LyCORIS/DyLoRA (lycoris.kohya, algo=dylora) trains the same kind of network here"
    ),
    "LoRA-FA": _refused("networks.lora_fa", "Standard (networks.lora) trains a plain LoRA"),
    "Kohya LoHa": _refused(
        "networks.loha", "LyCORIS/LoHa (lycoris.kohya, algo=loha) writes the same LoHa keys"
    ),
    "Kohya LoKr": _refused(
        "networks.lokr", "LyCORIS/LoKr (lycoris.kohya, algo=lokr) writes the same LoKr keys"
    ),
    "Flux1 OFT": _refused("networks.oft_flux", "Flux1 (networks.lora_flux) trains a FLUX LoRA"),
    "HunyuanImage-2.1": _refused("networks.lora_hunyuan_image", "the HunyuanImage family is not supported"),
    "Lumina": _refused("networks.lora_lumina", "the Lumina family is not supported"),
    "Anima": _refused("networks.lora_anima", "the Anima family is not supported"),
}

#: every field a LoRA type may read (consumed by :func:`network_options`).
NETWORK_FIELDS = frozenset(
    {
        "LoRA_type",
        "lora_type",
        *ARG_NAMES,
        *_LORAPLUS,
        "split_mode",
        "split_qkv",
        "train_t5xxl",
        "train_blocks",
        "train_lora_ggpo",
        "ggpo_beta",
        "ggpo_sigma",
        "enable_all_linear",
    }
    | {f for t in LORA_TYPES.values() for f in (*t.always, *t.when_set)}
)


def _arg_text(key: str, value: Any) -> str:
    """A value as kohya_ss' f-string writes it (True, 0.1, 8), whole-number floats as ints for rank keys."""
    if isinstance(value, float) and value.is_integer() and key in INT_KEYS:
        value = int(value)
    return str(value).replace('"', "")


def _is_set(value: Any) -> bool:
    """kohya_ss' ``if value`` test (with numbers saved as text, "0" is unset too)."""
    if isinstance(value, str):
        try:
            return float(value) != 0
        except ValueError:
            return value.strip() != ""
    return bool(value)


@dataclass
class NetworkResult:
    module: str | None
    args: list[str]
    #: kohya field -> why it is not passed on (fields the type does not read, ignored LyCORIS keys)
    skipped: dict[str, str]
    refused: str | None = None


def network_options(data: dict[str, Any], lora_type: str) -> NetworkResult:
    """``network_module`` and ``network_args`` for ``lora_type`` from the kohya_ss fields in ``data``."""
    kind = LORA_TYPES.get(lora_type)
    if kind is None:
        known = ", ".join(LORA_TYPES)
        return NetworkResult(
            None, [], {}, f"kohya_ss LoRA_type {lora_type!r} is unknown; known types: {known}"
        )
    args: list[str] = []
    used: set[str] = set()
    skipped: dict[str, str] = {}

    def put(field: str, always: bool) -> None:
        value = data.get(field, FORM_DEFAULTS.get(field) if always else None)
        used.add(field)
        if value is None or (not always and not _is_set(value)):
            return
        key = ARG_NAMES.get(field, field)
        if key in LYCORIS_IGNORES:
            if field in data:
                skipped[field] = LYCORIS_IGNORES[key]
            return
        args.append(f"{key}={_arg_text(key, value)}")

    for field in kind.always:
        put(field, True)
    if kind.algo:
        args.append(f"algo={kind.algo}")
    for field in kind.when_set:
        put(field, False)
    if kind.module == "networks.lora_flux":
        _flux_args(data, args, used)
    for field in _LORAPLUS:
        put(field, False)
    for field in NETWORK_FIELDS - used - {"LoRA_type", "lora_type"}:
        if field in data:
            skipped[field] = f"not read by LoRA_type {lora_type!r} in kohya_ss"
    return NetworkResult(
        kind.module, args, skipped, kind.refused and f"LoRA_type {lora_type!r}: {kind.refused}"
    )


def _flux_args(data: dict[str, Any], args: list[str], used: set[str]) -> None:
    """The FLUX-only switches kohya_ss adds for Flux1 (split_mode forces train_blocks=single)."""
    used.update({"split_mode", "split_qkv", "train_t5xxl", "train_blocks", "train_lora_ggpo"})
    if data.get("train_lora_ggpo"):
        for field in ("ggpo_beta", "ggpo_sigma"):
            used.add(field)
            if _is_set(data.get(field)):
                args.append(f"{field}={_arg_text(field, data[field])}")
    if data.get("split_mode"):
        args.append("train_blocks=single")
    if data.get("split_qkv"):
        args.append("split_qkv=True")
    if data.get("train_t5xxl") and data.get("flux1_checkbox"):
        args.append("train_t5xxl=True")
    for field in ("rank_dropout", "module_dropout"):
        used.add(field)
        if _is_set(data.get(field)):
            args.append(f"{field}={_arg_text(field, data[field])}")
