"""Merge checkpoints tensor by tensor: weighted sum ``A·(1−M) + B·M``, add difference ``A + (B − C)·M``.

As the webui's checkpoint merger. Models are loaded as diffusers modules (any source the loader
takes), so EMA copies and other non-model keys are dropped. With per-block weights, UNet tensors
use the weight of their block in the family's layout (SD1/SD2: IN00–IN11, M00, OUT00–OUT11; SDXL:
BASE, IN00–IN08, M00–M02, OUT00–OUT08, OUT; see :mod:`library.tools.models.layers`) instead of M; UNet
tensors outside those blocks (SD: time embedding, final norm and conv) and the VAE use M; the text
encoders (all of the family's) use ``text_encoder_ratio`` (default M). Computed in float32.
"""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from library.errors import ConfigError, ModelLoadError
from library.util.registry import Registry

logger = logging.getLogger(__name__)

MERGE_MODES = Registry("merge mode")


@MERGE_MODES.register("weighted_sum", description="A*(1-M) + B*M (two models)")
def weighted_sum(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None, m: float) -> torch.Tensor:
    """A·(1−M) + B·M."""
    return a * (1 - m) + b * m


@MERGE_MODES.register("add_difference", description="A + (B-C)*M (three models)")
def add_difference(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None, m: float) -> torch.Tensor:
    """A + (B − C)·M."""
    return a + (b - c) * m


#: models each mode needs
MODE_MODELS = {"weighted_sum": 2, "add_difference": 3}


@dataclass
class ModelMergeReport:
    """Tensors merged per part and per UNet block (with the weight used), tensors copied from A."""

    mode: str
    merged: dict[str, int] = field(default_factory=dict)
    copied: int = 0
    block_ratios: dict[str, float] = field(default_factory=dict)
    block_counts: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"{self.mode}: " + ", ".join(f"{part} {n} tensors" for part, n in self.merged.items())]
        if self.copied:
            out.append(f"{self.copied} tensors copied from model A (not floating point, or --unet_only)")
        if self.block_counts:
            out.append(
                "blocks: "
                + " ".join(f"{b}={self.block_ratios[b]:g}({n})" for b, n in self.block_counts.items())
            )
        return out


def merge_state_dicts(
    a: dict[str, torch.Tensor],
    b: dict[str, torch.Tensor],
    c: dict[str, torch.Tensor] | None,
    ratio_of: Callable[[str], float],
    mode: str = "weighted_sum",
    what: str = "",
) -> dict[str, torch.Tensor]:
    """Merge key by key with ``ratio_of(key)``; non-floating tensors come from ``a``; float32 out."""
    entry = MERGE_MODES.find(mode)
    if entry is None:
        raise ConfigError(f"--mode: {MERGE_MODES.unknown_message(mode)}")
    out = {}
    for key, value in a.items():
        if not value.is_floating_point():
            out[key] = value
            continue
        others = [b] + ([c] if c is not None else [])
        for other in others:
            if key not in other or other[key].shape != value.shape:
                found = tuple(other[key].shape) if key in other else "missing"
                raise ModelLoadError(
                    f"The models do not have the same architecture: {what}{key} is {tuple(value.shape)} in "
                    f"model A but {found} in another model. Merge models of one family (SD1 with SD1...)."
                )
        c_value = c[key].float() if c is not None else None
        out[key] = entry.factory(value.float(), b[key].float(), c_value, ratio_of(key))
    return out


def _check_mode(mode: str | None, models: list) -> str:
    mode = mode or ("add_difference" if len(models) == 3 else "weighted_sum")
    if MERGE_MODES.find(mode) is None:
        raise ConfigError(f"--mode: {MERGE_MODES.unknown_message(mode)}")
    if len(models) != MODE_MODELS[mode]:
        raise ConfigError(
            f"{mode} needs {MODE_MODELS[mode]} models (A B{' C' if mode == 'add_difference' else ''}), "
            f"got {len(models)}."
        )
    return mode


def _unet_ratio(
    blocks, ratio: float, weights: dict | None, counts: collections.Counter
) -> Callable[[str], float]:
    """Key -> M: the block's weight inside the layout's blocks when block weights are given, else ``ratio``."""

    def ratio_of(key: str) -> float:
        block = blocks.block_of_key(key) if weights else None
        if block is None:
            return ratio
        counts[block] += 1
        return weights[block]

    return ratio_of


def merge_checkpoints(
    models: list[str],
    save_to: str | os.PathLike,
    *,
    mode: str | None = None,
    ratio: float = 0.5,
    block_weights=None,
    text_encoder_ratio: float | None = None,
    unet_only: bool = False,
    save_precision: str | None = None,
    v2: bool | None = None,
    allow_unsafe_pickle: bool = False,
) -> ModelMergeReport:
    """Merge 2 (weighted sum) or 3 (add difference) checkpoints and save to ``save_to``.

    ``block_weights``: one value per block of the models' family (SD1/SD2 25, SDXL 23) or a comma string.
    ``unet_only`` keeps A's text encoders and VAE. Models of different families are refused.
    """
    from library.models.family import UNET_PART, VAE_PART
    from library.tools.models import checkpoint
    from library.tools.models.common import precision_dtype
    from library.tools.models.layers import UnetBlocks, parse_block_weights, precheck_block_weights
    from library.util.tensor_checks import require_finite_number

    mode = _check_mode(mode, models)
    ratio = require_finite_number(ratio, "--ratio", "Give the multiplier M, e.g. 0.5.")
    if text_encoder_ratio is not None:
        text_encoder_ratio = require_finite_number(text_encoder_ratio, "--text_encoder_ratio", "Give e.g. 0.5.")
    if block_weights:
        precheck_block_weights(block_weights)
    dtype = precision_dtype(save_precision)
    loaded = [checkpoint.load_model(m, v2=v2, allow_unsafe_pickle=allow_unsafe_pickle) for m in models]
    if len({lm.family for lm in loaded}) > 1:
        found = ", ".join(f"{Path(m).name}: {lm.family}" for m, lm in zip(models, loaded, strict=True))
        raise ModelLoadError(
            f"The models are of different families ({found}); their weights do not correspond. Merge models "
            "of one family (SD1 with SD1, SDXL with SDXL)."
        )
    report = ModelMergeReport(mode)
    base = loaded[0].model
    family = base.adapter
    layout = family.block_layout
    weights = parse_block_weights(block_weights, layout, family.name) if block_weights else None
    counts: collections.Counter = collections.Counter()
    te_ratio = ratio if text_encoder_ratio is None else text_encoder_ratio
    if text_encoder_ratio is None and weights and "TE" in weights:  # a LoRA Block Weight form's BASE
        te_ratio = weights["TE"]
    ratios = {part: (lambda key: te_ratio) for part in family.text_parts}
    ratios[UNET_PART] = _unet_ratio(UnetBlocks(base.unet.config, layout), ratio, weights, counts)
    for part in (UNET_PART, *family.text_parts, VAE_PART):
        states = [lm.model.parts[part].state_dict() for lm in loaded]
        if unet_only and part != UNET_PART:
            report.copied += len(states[0])
            continue
        merged = merge_state_dicts(
            states[0], states[1], states[2] if len(states) > 2 else None,
            ratios.get(part, lambda key: ratio), mode, f"{part}."
        )
        _require_finite_merge(merged, states, models, part)
        base.parts[part].load_state_dict(merged)
        report.merged[part] = sum(v.is_floating_point() for v in states[0].values())
        report.copied += len(states[0]) - report.merged[part]
    if weights:
        report.block_counts = dict(sorted(counts.items()))
        report.block_ratios = weights
    checkpoint.save_model(
        base,
        save_to,
        dtype=dtype or loaded[0].source_dtype or torch.float32,
        prediction_type=loaded[0].prediction_type,
        extra_metadata={"modelspec.merged_from": ", ".join(Path(m).name for m in models)},
    )
    return report


def _require_finite_merge(merged: dict, states: list[dict], models: list[str], part: str) -> None:
    """ModelLoadError naming the merged tensors holding NaN/inf and the input models they come from."""
    from library.util.tensor_checks import examples, nonfinite_keys

    bad = nonfinite_keys(merged)
    if not bad:
        return
    sources = [Path(m).name for m, state in zip(models, states, strict=True)
               if nonfinite_keys({k: state[k] for k in bad if k in state})]
    where = (f"{', '.join(sources)} already hold{'s' if len(sources) == 1 else ''} NaN/inf there: use another "
             "copy of that model") if sources else "the values overflow: use a smaller --ratio"
    raise ModelLoadError(
        f"The merged {part} would hold NaN or infinite values in {len(bad)} tensors ({examples(bad)}); "
        f"{where}. Nothing was saved."
    )
