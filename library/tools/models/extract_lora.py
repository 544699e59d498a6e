"""Extract a LoRA from two checkpoints: truncated SVD of the weight differences, tuned − original.

Modules are the layers a LoRA trainer targets in each of the model family's parts
(:meth:`library.networks.keys.NetworkPart.targets`: ``lora_te_`` for SD1/SD2, ``lora_te1_`` /
``lora_te2_`` and SGM-named UNet modules for SDXL), so the file loads in the trainer; with ``conv_dim``
also the ResNet / down / upsample blocks (LoCon, 3x3 convs at ``conv_dim``). Each difference D = W_tuned − W_org gives up·down = U_k S_k V_kᵀ with
alpha = k (scale 1), so merging the result at ratio 1 adds the best rank-k approximation of D; the
Frobenius error per module is sqrt(Σ_{i>k} S_i²) (before ``clamp_quantile`` clipping).
``clamp_quantile`` (sd-scripts' name and default, 0.99) clips only outliers: factor entries beyond
:data:`lowrank.OUTLIER_FENCE` (4) times the quantile of the magnitudes of the factors' signal-carrying
components (:func:`lowrank.clamp_outliers`); dense factors are kept exactly, where sd-scripts' clamp to the
quantile itself cut 22.6 % from a rank-2 change extracted at dim 8. Each clipped module is reported with its
relative error before and after the clamp (:attr:`ExtractReport.clamps`).
A text encoder is skipped when none of its weights differs by more than ``min_diff`` (sd-scripts' rule,
applied to each encoder on its own). Two transformer files of a part-file family (FLUX.1, BFL layout) are
read key by key instead (:func:`library.tools.models.part_files.extract_from_part_files`; the transformer only,
as sd-scripts' flux_extract_lora.py).
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
    """Per module: rank kept, singular values (for the error the truncation predicts); text parts skipped."""

    ranks: dict[str, int] = field(default_factory=dict)
    singular_values: dict[str, torch.Tensor] = field(default_factory=dict)
    skipped_parts: list[str] = field(default_factory=list)
    part_counts: dict[str, int] = field(default_factory=dict)
    # module -> (relative error ‖D − up·down‖/‖D‖ before the clamp, after it, entries clipped); clipped ones only
    clamps: dict[str, tuple[float, float, int]] = field(default_factory=dict)

    @property
    def text_encoder_skipped(self) -> bool:
        """True when some text encoder was unchanged and left out."""
        return bool(self.skipped_parts)

    def predicted_error(self, name: str) -> float:
        """‖D − D_k‖_F predicted by the discarded singular values of module ``name``."""
        return lowrank.discarded_error(self.singular_values[name], self.ranks[name])

    def lines(self) -> list[str]:
        kept = [lowrank.fro_retained(self.singular_values[n], k) for n, k in self.ranks.items()]
        counts = ", ".join(f"{n} {part}" for part, n in self.part_counts.items())
        out = [f"modules extracted: {counts or 'none'}"]
        for part in self.skipped_parts:
            out.append(f"{part} unchanged (all differences within min_diff): not extracted")
        if kept:
            out.append(
                f"Frobenius norm of the differences retained: mean {sum(kept) / len(kept):.4f}, min {min(kept):.4f}"
            )
        if self.clamps:
            out.append(f"clamp_quantile clipped outliers in {len(self.clamps)} module(s) (relative error before -> after):")
            out += [f"  {n}: {b:.3g} -> {a:.3g} ({c} entries clipped)" for n, (b, a, c) in self.clamps.items()]
        elif self.ranks:
            out.append("clamp_quantile: no outliers in the factors, nothing clipped")
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


def _max_difference(pairs) -> float:
    with torch.no_grad():
        return max((float((b.weight - t.module.weight).abs().max()) for t, b in pairs), default=0.0)


def extract_modules(
    org: list[keys.NetworkPart] | dict,
    tuned: list[keys.NetworkPart] | dict,
    *,
    dim: int,
    conv_dim: int | None = None,
    clamp_quantile: float | None = DEFAULT_CLAMP_QUANTILE,
    min_diff: float = DEFAULT_MIN_DIFF,
    device: str | None = None,
) -> tuple[dict[str, LoraModule], ExtractReport]:
    """LoRA modules for tuned − org, text encoders first (the trainer's key order).

    ``org`` / ``tuned``: the two models' parts (:func:`keys.model_parts`, same names in both), or
    {"unet", "text_encoder"} modules (SD naming, ``lora_te``).
    """
    from library.util.tensor_checks import require_finite_number

    clamp_quantile = check_extract_options(dim, conv_dim, clamp_quantile)
    min_diff = require_finite_number(min_diff, "--min_diff", "e.g. 0.01.")
    org_parts, tuned_parts = _as_parts(org), {p.name: p for p in _as_parts(tuned)}
    report = ExtractReport()
    modules = {}
    for part in org_parts:
        other = tuned_parts.get(part.name)
        if other is None:
            raise ModelLoadError(f"The tuned model has no {part.name}; extract needs two models of one family.")
        targets = part.targets(include_conv_blocks=part.is_unet and conv_dim is not None)
        pairs = list(_pairs(part.module, other.module, targets))
        if not part.is_unet and (largest := _max_difference(pairs)) <= min_diff:
            report.skipped_parts.append(part.name)
            logger.info("%s max difference %.3g <= min_diff %.3g: not extracted", part.name, largest, min_diff)
            continue
        for target, tuned_layer in pairs:
            rank_limit = conv_dim if target.kind == keys.KIND_CONV else dim
            module, s = _extract_one(target, tuned_layer, rank_limit, clamp_quantile, device, report)
            modules[target.lora_name] = module
            report.ranks[target.lora_name], report.singular_values[target.lora_name] = module.rank, s
        report.part_counts[part.name] = len(pairs)
    return modules, report


def check_extract_options(dim: int, conv_dim: int | None, clamp_quantile: float | None) -> float | None:
    """ConfigError for ranks below 1 or a ``clamp_quantile`` outside (0, 1]; returns the quantile as a float."""
    from library.util.tensor_checks import require_finite_number

    if dim < 1 or (conv_dim is not None and conv_dim < 1):
        raise ConfigError(f"dim and conv_dim must be positive integers, got {dim} and {conv_dim}.")
    if clamp_quantile is not None:
        clamp_quantile = require_finite_number(clamp_quantile, "--clamp_quantile", "e.g. 0.99.")
        if not 0 < clamp_quantile <= 1:
            raise ConfigError(f"--clamp_quantile must be in (0, 1], got {clamp_quantile:g}; e.g. 0.99 (1 = no clamping).")
    return clamp_quantile


def _as_parts(models) -> list[keys.NetworkPart]:
    if isinstance(models, dict):
        return keys.default_parts(models.get("unet"), models.get("text_encoder"))
    return list(models)


def _extract_one(target: keys.Target, tuned_layer, rank_limit: int, clamp_quantile, device, report=None):
    with torch.no_grad():
        diff = tuned_layer.weight.float() - target.module.weight.float()
    return extract_difference(target.lora_name, diff, rank_limit, clamp_quantile, device, report)


def extract_difference(name: str, diff: torch.Tensor, rank_limit: int, clamp_quantile, device,
                       report: ExtractReport | None = None):
    """(LoRA module ``name`` for a weight difference, its singular values): up·down = U_k S_k V_kᵀ, alpha = k.

    With ``report``, a module whose outliers the clamp clipped is entered in ``report.clamps``.
    """
    with torch.no_grad():
        if not bool(torch.isfinite(diff).all()):
            raise ModelLoadError(
                f"The weight of {name} holds NaN or infinite values in one of the models, so no "
                "LoRA can be extracted from it. Use an undamaged copy of the models."
            )
        u, s, vh = lowrank.svd(lowrank.as_matrix(diff), device)
    rank = min(rank_limit, s.numel())
    up, down = lowrank.split_factors(u, s, vh, rank)
    up, down, clamp = lowrank.clamp_outliers(up, down, clamp_quantile, s[:rank])
    if clamp.clipped and report is not None:
        with torch.no_grad():
            matrix = lowrank.as_matrix(diff).to(up.device, torch.float32)
            norm = float(torch.linalg.vector_norm(matrix.double())) or 1.0
            after = float(torch.linalg.vector_norm((matrix - up @ down).double())) / norm
        report.clamps[name] = (lowrank.discarded_error(s, rank) / norm, after, clamp.clipped)
    kernel = tuple(diff.shape[2:]) if diff.dim() == 4 else ()
    up, down = lowrank.to_lora_shapes(up.cpu(), down.cpu(), kernel)
    return LoraModule(name, down, up, float(rank)), s.cpu()


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
    from library.tools.models.part_files import extract_from_part_files, part_file_family

    dtype = precision_dtype(save_precision) or torch.float32
    if part_file_family(model_org) is not None or part_file_family(model_tuned) is not None:
        if conv_dim is not None:  # e.g. FLUX.1 transformer files (BFL layout), as sd-scripts' flux_extract_lora.py
            raise ConfigError(f"--conv_dim {conv_dim}: {model_org} is a transformer file, which has no convolutions "
                              "a LoRA adapts; drop --conv_dim.")
        return extract_from_part_files(model_org, model_tuned, save_to, dim=dim, clamp_quantile=clamp_quantile,
                                       save_precision=save_precision, device=device)
    org = checkpoint.load_model(
        model_org, v2=v2, v_parameterization=v_parameterization, allow_unsafe_pickle=allow_unsafe_pickle
    )
    tuned = checkpoint.load_model(
        model_tuned, v2=v2, v_parameterization=v_parameterization, allow_unsafe_pickle=allow_unsafe_pickle
    )
    from library.tools.models.merge_lora import require_finite_model

    require_finite_model(org.model, f"The original model {model_org}")
    require_finite_model(tuned.model, f"The tuned model {model_tuned}")
    if org.family != tuned.family:
        raise ModelLoadError(
            f"{model_org} is {org.family} but {model_tuned} is {tuned.family}; extract needs the tuned model "
            "and the model it was tuned from, of one family."
        )
    modules, report = extract_modules(
        keys.model_parts(org.model),
        keys.model_parts(tuned.model),
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
