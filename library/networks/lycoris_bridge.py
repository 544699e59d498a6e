"""``network_module = "lycoris.kohya"``: LoHa, LoKr, LoCon, IA3, DyLoRA, full … through the ``lycoris-lora`` package.

LyCORIS builds its modules (and owns their math and their on-disk keys, e.g.
``lora_unet_…_attn1_to_q.hada_w1_a``); :class:`LycorisNetwork` wraps them in our
:class:`~library.networks.network.Network` so the trainer (``LoRATarget``) uses them unchanged:
apply_to, to, train, param_groups (LoRA+ included), save (safetensors + sshs hashes), info, load_weights.

Two adjustments keep the files loadable by the webui / ComfyUI / sd-scripts:

* text-encoder keys are rooted at ``text_model_`` (``lora_te_text_model_encoder_layers_0_…``) even though
  transformers 5's ``CLIPTextModel`` dropped that level (see ``keys.py``);
* presets that name a module both by class and by path (lycoris-lora 4.1's ``full`` lists the class
  ``TimestepEmbedding`` and the paths ``time_embedding.linear_1/2``, which would create each LoRA twice and
  abort on diffusers UNets) are de-duplicated: the class is dropped when its paths are all listed anyway.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from library.errors import ConfigError, ModelLoadError
from library.networks import keys
from library.networks.args import (
    boolean,
    non_negative_int,
    parse_network_args,
    positive_float,
    probability,
    rank,
)
from library.networks.network import LoadReport, Network, read_state_dict

logger = logging.getLogger(__name__)

PACKAGE = "lycoris-lora"
ALGOS = ("lora", "locon", "loha", "lokr", "ia3", "dylora", "full", "glora", "diag-oft", "boft")


def _algo(text: str) -> str:
    algo = text.strip().lower()
    if algo not in ALGOS:
        raise ValueError(f"must be one of {', '.join(ALGOS)}")
    return algo


#: network_args of lycoris.kohya (the ones kohya_ss' LyCORIS form writes): key -> converter.
LYCORIS_ARGS: dict[str, Callable[[str], object]] = {
    "algo": _algo,
    "preset": str,
    "conv_dim": rank,
    "conv_alpha": float,
    "dropout": probability,
    "rank_dropout": probability,
    "module_dropout": probability,
    "use_tucker": boolean,
    "use_cp": boolean,
    "use_conv_cp": boolean,
    "use_scalar": boolean,
    "block_size": non_negative_int,
    "factor": int,
    "decompose_both": boolean,
    "full_matrix": boolean,
    "unbalanced_factorization": boolean,
    "train_norm": boolean,
    "constraint": float,
    "constrain": float,
    "rescaled": boolean,
    "dora_wd": boolean,
    "wd_on_output": boolean,
    "bypass_mode": boolean,
    "rs_lora": boolean,
    "loraplus_lr_ratio": positive_float,
    "loraplus_unet_lr_ratio": positive_float,
    "loraplus_text_encoder_lr_ratio": positive_float,
}

#: LyCORIS' own names for some keys (its deprecated aliases).
_RENAMED = {"use_cp": "use_tucker", "use_conv_cp": "use_tucker", "constrain": "constraint"}


def parse_lycoris_args(items: list[str] | tuple[str, ...] | None) -> dict[str, object]:
    """``network_args`` strings -> keyword arguments of :func:`create_lycoris_network`.

    ``dropout`` (LyCORIS' neuron dropout) becomes ``neuron_dropout`` so that it is not mistaken for
    ``network_dropout``, which the trainer passes as ``dropout``.
    """
    parsed = parse_network_args(items, known=LYCORIS_ARGS)
    if "dropout" in parsed:
        parsed["neuron_dropout"] = parsed.pop("dropout")
    return {_RENAMED.get(k, k): v for k, v in parsed.items()}


def _lycoris_kohya():
    try:
        from lycoris import kohya
    except ImportError as exc:
        raise ConfigError(
            f"network_module 'lycoris.kohya' needs the package {PACKAGE!r}, which is not installed ({exc}). "
            f"Install it with: pip install {PACKAGE}"
        ) from None
    return kohya


class _TextModelRoot(nn.Module):
    """Puts a transformers-5 ``CLIPTextModel`` under ``text_model`` so module paths (and keys) are rooted there."""

    def __init__(self, text_encoder: nn.Module):
        super().__init__()
        self.text_model = text_encoder


def _rooted(text_encoder):
    """A text encoder (or a list of them) with module paths rooted at ``text_model.``."""
    if isinstance(text_encoder, (list, tuple)):
        return [_rooted(te) for te in text_encoder]
    if text_encoder is None or hasattr(text_encoder, "text_model"):
        return text_encoder
    return _TextModelRoot(text_encoder)


def _text_encoders(parts: list[keys.NetworkPart] | None, text_encoder):
    """What LyCORIS takes as ``text_encoder``: one module (``lora_te``) or a list (``lora_te1``, ``lora_te2``)."""
    if parts is None:
        return text_encoder
    text_parts = [p for p in parts if not p.is_unet]
    if not text_parts:
        return None
    if len(text_parts) == 1 and text_parts[0].prefix == keys.TE_PREFIX:
        return text_parts[0].module
    return [p.module for p in text_parts]


def _unet_renames(parts: list[keys.NetworkPart] | None) -> dict[str, str]:
    """LyCORIS' UNet module names (diffusers paths) -> the family's key names (SDXL: SGM paths)."""
    renames = {}
    for part in parts or []:
        if not part.is_unet or part.key_path is None:
            continue
        for path, _ in part.module.named_modules():
            if path:
                plain, named = keys.lora_name(part.prefix, path), keys.lora_name(part.prefix, part.key_path(path))
                if plain != named:
                    renames[plain] = named
    return renames


def _rename_state(state_dict: dict, renames: dict[str, str]) -> dict:
    if not renames:
        return state_dict
    out = {}
    for key, value in state_dict.items():
        name, dot, rest = key.partition(".")
        out[renames.get(name, name) + dot + rest] = value
    return out


def _targetable_children(module: nn.Module, path: str) -> set[str]:
    return {
        f"{path}.{name}"
        for name, child in module.named_modules()
        if name and isinstance(child, (nn.Linear, nn.Conv2d))
    }


def _deduplicated(preset: dict, unet: nn.Module) -> dict:
    """``preset`` without targets LyCORIS would create twice: a UNet class whose Linear/Conv children are all
    listed by path is dropped; when the class stays targeted (SDXL's ``add_embedding`` keeps
    ``TimestepEmbedding``), the paths of its instances that are listed in full are dropped instead."""
    classes = list(preset.get("unet_target_module", []))
    names = list(preset.get("unet_target_name", []))
    kept, covered = [], set()
    for cls in classes:
        children = [_targetable_children(m, path) for path, m in unet.named_modules() if type(m).__name__ == cls]
        if children and all(c <= set(names) for c in children):
            continue
        kept.append(cls)
        covered |= set().union(*(c for c in children if c <= set(names)))
    kept_names = [n for n in names if n not in covered]
    if kept == classes and kept_names == names:
        return preset
    logger.info("LyCORIS preset: %s targeted by path and by class; each is kept once",
                ", ".join(sorted(set(classes) - set(kept)) or sorted(set(names) - set(kept_names))))
    return {**preset, "unet_target_module": kept, "unet_target_name": kept_names}


def _preset_key(preset: str | None, unet: nn.Module) -> str:
    """The LyCORIS preset name to use: a built-in one, or a preset TOML, de-duplicated for this UNet."""
    from lycoris.config import PRESET
    from lycoris.utils.preset import read_preset

    name = preset or "full"
    if name in PRESET:
        config = PRESET[name]
    elif Path(name).is_file():
        config = read_preset(name)
        if config is None:
            raise ConfigError(
                f"network_args preset={name!r}: the LyCORIS preset file cannot be read as TOML."
            )
    else:
        raise ConfigError(
            f"network_args preset={name!r} is neither a LyCORIS preset "
            f"({', '.join(sorted(PRESET))}) nor an existing preset .toml file."
        )
    fixed = _deduplicated(config, unet)
    if fixed is config:
        return name
    key = f"{name}#sdtrain-dedup"
    PRESET[key] = fixed  # lycoris.kohya only takes preset names or paths: register the fixed one
    return key


@contextlib.contextmanager
def _seeded(generator: torch.Generator | None):
    """LyCORIS initialises from the global RNG: seed it from ``generator`` without disturbing the caller's."""
    if generator is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(generator.initial_seed())
        yield


class LycorisNetwork(Network):
    """LyCORIS modules (LoHa, LoKr, …) as a :class:`Network`; ``state_dict()`` keys are LyCORIS' own."""

    def remove(self) -> None:
        for module in self.network_modules():
            module.restore()

    def load_weights(self, source, strict: bool = False) -> LoadReport:
        """Copy a LyCORIS file's tensors into this network (shapes must match: error names the keys)."""
        state_dict, description = read_state_dict(source)
        own = self.state_dict()
        report = LoadReport(source=description)
        file_modules = {key.split(".", 1)[0] for key in state_dict}
        for name in self.text_encoder_names + self.unet_names:
            (report.loaded if name in file_modules else report.missing).append(name)
        report.unexpected = sorted(file_modules - set(self._modules))
        mismatches = [
            (k, tuple(v.shape), tuple(own[k].shape))
            for k, v in state_dict.items()
            if k in own and tuple(v.shape) != tuple(own[k].shape)
        ]
        if mismatches:
            shown = "; ".join(f"{k}: file {f} vs network {n}" for k, f, n in mismatches[:4])
            raise ModelLoadError(
                f"The LyCORIS weights in {description} do not fit the network being trained "
                f"(algo={self.info.get('algo')}, network_dim={self.info.get('dim')}): {shown}. Use the file's "
                "algo/dim/conv_dim, or set dim_from_weights = true to size the network from the file."
            )
        if strict and (report.missing or report.unexpected):
            raise ModelLoadError(f"network weights do not match the network exactly: {report.summary()}")
        self.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False)
        logger.info("network weights: %s", report.summary())
        return report


def _wrap(inner, train_unet: bool, train_text_encoder: bool, multiplier: float, info: dict,
          parts: list[keys.NetworkPart] | None = None) -> LycorisNetwork:
    te = list(inner.text_encoder_loras) if train_text_encoder else []
    unet = list(inner.unet_loras) if train_unet else []
    if not te and not unet:
        raise ConfigError("lycoris.kohya created no modules for this model: check network_args preset/algo.")
    renames = _unet_renames(parts)
    for module in unet:
        module.lora_name = renames.get(module.lora_name, module.lora_name)
    text_parts = [p for p in parts or [] if not p.is_unet]
    if len(text_parts) > 1:
        by_part = {p.name: [m for m in te if keys.part_of_name(m.lora_name, text_parts) is p] for p in text_parts}
        return LycorisNetwork(by_part, unet, multiplier=multiplier, info=info)
    return LycorisNetwork(te, unet, multiplier=multiplier, info=info)


def create_lycoris_network(
    unet: nn.Module,
    text_encoder: nn.Module | None,
    *,
    dim: int | None,
    alpha: float | None,
    dropout: float | None = None,
    train_unet: bool = True,
    train_text_encoder: bool = True,
    multiplier: float = 1.0,
    generator: torch.Generator | None = None,
    neuron_dropout: float | None = None,
    algo: str = "lora",
    preset: str | None = None,
    parts: list[keys.NetworkPart] | None = None,
    block_layout=None,
    **options,
) -> LycorisNetwork:
    """A fresh LyCORIS network of ``algo`` over ``unet`` / ``text_encoder`` (LyCORIS' ``create_network``).

    ``dim``/``alpha`` are network_dim/network_alpha (None -> 4 / 1); ``conv_dim``/``conv_alpha`` default to
    them, as in LyCORIS. ``dropout`` is network_dropout, overridden by network_args ``dropout``
    (``neuron_dropout``). LoRA+ ratios are applied by :meth:`Network.param_groups`, not here.
    """
    kohya = _lycoris_kohya()
    dim = 4 if dim is None else dim
    alpha = 1.0 if alpha is None else alpha
    lycoris_kwargs = {k: v for k, v in options.items() if v is not None and not k.startswith("loraplus")}
    drop = neuron_dropout if neuron_dropout is not None else dropout
    preset_key = _preset_key(preset, unet)
    try:
        with _seeded(generator):
            inner = kohya.create_network(
                multiplier,
                dim,
                alpha,
                None,
                _rooted(_text_encoders(parts, text_encoder)) if train_text_encoder else None,
                unet,
                warn_on_unmatched=False,
                algo=algo,
                preset=preset_key,
                dropout=drop or 0.0,
                **lycoris_kwargs,
            )
    except (AssertionError, ValueError, TypeError) as exc:  # LyCORIS checks its arguments with asserts
        raise ConfigError(
            f"lycoris.kohya (algo={algo}, network_dim={dim}) rejected the network_args: {exc or type(exc).__name__}. "
            "E.g. dylora needs network_dim and conv_dim to be multiples of block_size (4 by default)."
        ) from None
    info = {
        "dim": dim,
        "alpha": alpha,
        "algo": algo,
        "conv_dim": options.get("conv_dim", dim),
        "conv_alpha": options.get("conv_alpha", alpha),
    }
    return _wrap(inner, train_unet, train_text_encoder, multiplier, info, parts)


def lycoris_network_from_weights(
    source,
    unet: nn.Module,
    text_encoder: nn.Module | None,
    *,
    train_unet: bool = True,
    train_text_encoder: bool = True,
    multiplier: float = 1.0,
    parts: list[keys.NetworkPart] | None = None,
    **_ignored,
) -> tuple[LycorisNetwork, LoadReport]:
    """A network shaped by a LyCORIS file (algorithm, ranks per module) with its weights loaded."""
    kohya = _lycoris_kohya()
    state_dict, description = read_state_dict(source)
    renames = _unet_renames(parts)
    plain_state = _rename_state(state_dict, {named: plain for plain, named in renames.items()})
    inner, _ = kohya.create_network_from_weights(
        multiplier, description, None, _rooted(_text_encoders(parts, text_encoder)), unet, weights_sd=plain_state
    )
    info = {"dim": _file_rank(state_dict), "alpha": _file_alpha(state_dict), "algo": "from_weights"}
    network = _wrap(inner, train_unet, train_text_encoder, multiplier, info, parts)
    return network, network.load_weights(state_dict)


def _file_rank(state_dict: dict[str, torch.Tensor]) -> int | None:
    for key, value in state_dict.items():
        if key.endswith((keys.DOWN_SUFFIX, ".hada_w1_b", ".lokr_w1_b")) or key.endswith(".lokr_w2_b"):
            return int(value.shape[0])
    return None


def _file_alpha(state_dict: dict[str, torch.Tensor]) -> float | None:
    for key, value in state_dict.items():
        if key.endswith(keys.ALPHA_SUFFIX):
            return float(value)
    return None
