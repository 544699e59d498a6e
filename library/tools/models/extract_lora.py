"""Extract a LoRA from two checkpoints: truncated SVD of the weight differences, tuned − original.

Modules are the layers a LoRA trainer targets (:func:`library.networks.keys.find_unet_targets` /
``find_text_encoder_targets``); with ``conv_dim`` also the ResNet / down / upsample blocks (LoCon,
3x3 convs at ``conv_dim``). Each difference D = W_tuned − W_org gives up·down = U_k S_k V_kᵀ with
alpha = k (scale 1), so merging the result at ratio 1 adds the best rank-k approximation of D; the
Frobenius error per module is sqrt(Σ_{i>k} S_i²) (before ``clamp_quantile`` clipping).
The text encoder is skipped when no weight differs by more than ``min_diff`` (sd-scripts' rule).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from library.errors import ConfigError, ModelLoadError
from library.networks import keys
from library.tools.models import lora_file, lowrank
from library.tools.models.lora_file import LoraModule

logger = logging.getLogger(__name__)

DEFAULT_CLAMP_QUANTILE = 0.99
DEFAULT_MIN_DIFF = 0.01


@dataclass
class ExtractReport:
    """Per module: rank kept, singular values (for the error the truncation predicts)."""

    ranks: dict[str, int] = field(default_factory=dict)
    singular_values: dict[str, torch.Tensor] = field(default_factory=dict)
    text_encoder_skipped: bool = False

    def predicted_error(self, name: str) -> float:
        """‖D − D_k‖_F predicted by the discarded singular values of module ``name``."""
        return lowrank.discarded_error(self.singular_values[name], self.ranks[name])

    def lines(self) -> list[str]:
        n_te = sum(n.startswith(keys.TE_PREFIX) for n in self.ranks)
        kept = [lowrank.fro_retained(self.singular_values[n], k) for n, k in self.ranks.items()]
        out = [f"{len(self.ranks) - n_te} UNet and {n_te} text-encoder modules extracted"]
        if self.text_encoder_skipped:
            out.append("text encoder unchanged (all differences within min_diff): not extracted")
        if kept:
            out.append(
                f"Frobenius norm of the differences retained: mean {sum(kept) / len(kept):.4f}, min {min(kept):.4f}"
            )
        return out


def _pairs(org_root: torch.nn.Module, tuned_root: torch.nn.Module, targets: list[keys.Target]):
    tuned = dict(tuned_root.named_modules())
    for target in targets:
        other = tuned.get(target.module_path)
        if other is None or tuple(other.weight.shape) != tuple(target.module.weight.shape):
            raise ModelLoadError(
                f"The models differ in architecture at {target.module_path} "
                f"({tuple(target.module.weight.shape)} vs "
                f"{tuple(other.weight.shape) if other is not None else 'missing'}); "
                "extract needs the tuned model and the model it was tuned from."
            )
        yield target, other


def extract_modules(
    org: dict,
    tuned: dict,
    *,
    dim: int,
    conv_dim: int | None = None,
    clamp_quantile: float | None = DEFAULT_CLAMP_QUANTILE,
    min_diff: float = DEFAULT_MIN_DIFF,
    device: str | None = None,
) -> tuple[dict[str, LoraModule], ExtractReport]:
    """LoRA modules for tuned − org; ``org`` / ``tuned`` are {"unet", "text_encoder"} modules."""
    if dim < 1 or (conv_dim is not None and conv_dim < 1):
        raise ConfigError(f"dim and conv_dim must be positive integers, got {dim} and {conv_dim}.")
    report = ExtractReport()
    te_pairs = list(
        _pairs(
            org["text_encoder"], tuned["text_encoder"], keys.find_text_encoder_targets(org["text_encoder"])
        )
    )
    with torch.no_grad():
        te_max = max((float((b.weight - t.module.weight).abs().max()) for t, b in te_pairs), default=0.0)
    if te_max <= min_diff:
        report.text_encoder_skipped, te_pairs = True, []
        logger.info("text encoder max difference %.3g <= min_diff %.3g: not extracted", te_max, min_diff)
    unet_targets = keys.find_unet_targets(org["unet"], include_conv_blocks=conv_dim is not None)
    modules = {}
    for target, other in te_pairs + list(_pairs(org["unet"], tuned["unet"], unet_targets)):
        rank_limit = conv_dim if target.kind == keys.KIND_CONV else dim
        module, s = _extract_one(target, other, rank_limit, clamp_quantile, device)
        modules[target.lora_name] = module
        report.ranks[target.lora_name], report.singular_values[target.lora_name] = module.rank, s
    return modules, report


def _extract_one(target: keys.Target, tuned_layer, rank_limit: int, clamp_quantile, device):
    with torch.no_grad():
        diff = tuned_layer.weight.float() - target.module.weight.float()
        u, s, vh = lowrank.svd(lowrank.as_matrix(diff), device)
    rank = min(rank_limit, s.numel())
    up, down = lowrank.split_factors(u, s, vh, rank)
    up, down = lowrank.clamp_factors(up, down, clamp_quantile)
    kernel = tuple(diff.shape[2:]) if diff.dim() == 4 else ()
    up, down = lowrank.to_lora_shapes(up.cpu(), down.cpu(), kernel)
    return LoraModule(target.lora_name, down, up, float(rank)), s.cpu()


def extract_lora_file(
    model_org: str,
    model_tuned: str,
    save_to: str | os.PathLike,
    *,
    dim: int = 4,
    conv_dim: int | None = None,
    clamp_quantile: float | None = DEFAULT_CLAMP_QUANTILE,
    min_diff: float = DEFAULT_MIN_DIFF,
    v2: bool | None = None,
    v_parameterization: bool | None = None,
    save_precision: str | None = None,
    device: str | None = None,
    allow_unsafe_pickle: bool = False,
) -> tuple[Path, ExtractReport]:
    """Load both models, extract, save the LoRA (with ``ss_*`` / ``modelspec.*`` metadata)."""
    from library.tools.models import checkpoint
    from library.tools.models.common import precision_dtype

    dtype = precision_dtype(save_precision) or torch.float32
    org = checkpoint.load_model(
        model_org, v2=v2, v_parameterization=v_parameterization, allow_unsafe_pickle=allow_unsafe_pickle
    )
    tuned = checkpoint.load_model(
        model_tuned, v2=v2, v_parameterization=v_parameterization, allow_unsafe_pickle=allow_unsafe_pickle
    )
    if org.family != tuned.family:
        raise ModelLoadError(
            f"{model_org} is {org.family} but {model_tuned} is {tuned.family}; they must match."
        )
    parts = ("unet", "text_encoder")
    modules, report = extract_modules(
        {p: getattr(org.model, p) for p in parts},
        {p: getattr(tuned.model, p) for p in parts},
        dim=dim,
        conv_dim=conv_dim,
        clamp_quantile=clamp_quantile,
        min_diff=min_diff,
        device=device,
    )
    unet = org.model.unet
    resolution = int(unet.config.sample_size) * 2 ** (len(org.model.vae.config.block_out_channels) - 1)
    metadata = lora_file.network_metadata(
        family=org.family,
        v_parameterization=org.prediction_type == "v_prediction",
        dim=dim,
        alpha=dim,
        conv_dim=conv_dim,
        conv_alpha=conv_dim,
        title=Path(save_to).stem,
        resolution=resolution,
        extra={
            "ss_sd_model_name": Path(model_org).name,
            "ss_training_comment": f"extracted from {Path(model_tuned).name} - {Path(model_org).name}",
        },
    )
    return lora_file.save_lora(save_to, modules, metadata, dtype), report
