"""Resize a LoRA to a lower rank by SVD, keeping its effect as closely as the rank allows.

For each module, the SVD of up·down (computed through an r x r core, see
:func:`lowrank.svd_of_product`) is truncated to the new rank k (fixed, or chosen per module by a
dynamic method). The scale alpha / rank is kept: new alpha = old scale · k, so ΔW_new is the best
rank-k approximation of ΔW and the fraction of its Frobenius norm retained is reported per module.
A rank never grows: a module already at or below the target keeps its rank (and its ΔW exactly).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from library.errors import ConfigError
from library.tools.models import lora_file, lowrank
from library.tools.models.lora_file import LoraModule

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResizeRow:
    """One module's resize: ranks, alphas and the fraction of ‖ΔW‖_F kept."""

    name: str
    old_rank: int
    new_rank: int
    old_alpha: float
    new_alpha: float
    fro_retained: float


def resize_module(
    module: LoraModule,
    max_rank: int,
    *,
    dynamic_method: str | None = None,
    dynamic_param: float | None = None,
    device: str | None = None,
) -> tuple[LoraModule, ResizeRow]:
    """The module truncated to at most ``max_rank`` (float32, CPU) and its report row."""
    up2d, down2d = lowrank.as_matrix(module.up), lowrank.as_matrix(module.down)
    u, s, vh = lowrank.svd_of_product(up2d, down2d, device)
    rank = lowrank.choose_rank(s, min(max_rank, module.rank), dynamic_method, dynamic_param)
    up, down = lowrank.split_factors(u, s, vh, rank)
    kernel = module.kernel if module.is_conv else ()
    up, down = lowrank.to_lora_shapes(up.cpu(), down.cpu(), kernel)
    new_alpha = module.scale * rank
    row = ResizeRow(module.name, module.rank, rank, module.alpha, new_alpha, lowrank.fro_retained(s, rank))
    return LoraModule(module.name, down, up, new_alpha), row


def check_resize_options(
    new_rank, new_conv_rank=None, dynamic_method: str | None = None, dynamic_param: float | None = None
) -> None:
    """ConfigError for ranks below 1 and a ``dynamic_param`` outside its method's range: sv_ratio takes a
    ratio ≥ 1 (max / min singular value), sv_fro and sv_cumulative a fraction in (0, 1]."""
    import math

    for option, rank in (("--new_rank", new_rank), ("--new_conv_rank", new_conv_rank)):
        if rank is None and option == "--new_conv_rank":
            continue
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ConfigError(f"{option} must be a positive integer, got {rank!r}.")
    if dynamic_method is not None and dynamic_method not in lowrank.DYNAMIC_METHODS:
        raise ConfigError(
            f"dynamic_method must be one of {', '.join(lowrank.DYNAMIC_METHODS)}, got {dynamic_method!r}."
        )
    if dynamic_method is None:
        if dynamic_param is not None:
            raise ConfigError(
                f"--dynamic_param {dynamic_param:g} is given without --dynamic_method; add --dynamic_method "
                f"({', '.join(lowrank.DYNAMIC_METHODS)}) or drop --dynamic_param."
            )
        return
    if dynamic_param is None:
        raise ConfigError(f"dynamic_method {dynamic_method} needs --dynamic_param (e.g. 0.9 for sv_fro).")
    param = float(dynamic_param)
    if dynamic_method == "sv_ratio":
        if not (math.isfinite(param) and param >= 1):
            raise ConfigError(
                f"--dynamic_param for sv_ratio is the largest / smallest singular value kept, a number ≥ 1; got "
                f"{dynamic_param!r}. Try 10."
            )
    elif not (math.isfinite(param) and 0 < param <= 1):
        raise ConfigError(
            f"--dynamic_param for {dynamic_method} is the fraction to keep, in (0, 1]; got {dynamic_param!r}. "
            "Try 0.9."
        )


def resize_modules(
    modules: dict[str, LoraModule],
    new_rank: int,
    *,
    new_conv_rank: int | None = None,
    dynamic_method: str | None = None,
    dynamic_param: float | None = None,
    device: str | None = None,
) -> tuple[dict[str, LoraModule], list[ResizeRow]]:
    """Resize every module: 3x3 conv modules to ``new_conv_rank`` (default ``new_rank``), others to ``new_rank``."""
    check_resize_options(new_rank, new_conv_rank, dynamic_method, dynamic_param)
    out, rows = {}, []
    for name, module in modules.items():
        target = (new_conv_rank or new_rank) if module.is_conv3x3 else new_rank
        out[name], row = resize_module(
            module, target, dynamic_method=dynamic_method, dynamic_param=dynamic_param, device=device
        )
        rows.append(row)
    return out, rows


def resize_lora_file(
    model: str | os.PathLike,
    new_rank: int,
    save_to: str | os.PathLike,
    *,
    new_conv_rank: int | None = None,
    dynamic_method: str | None = None,
    dynamic_param: float | None = None,
    save_precision: str | None = None,
    device: str | None = None,
) -> tuple[Path, list[ResizeRow]]:
    """Resize the LoRA file ``model`` and save it; the metadata is kept with the new dims recorded."""
    from library.tools.models.common import precision_dtype
    from library.tools.models.merge_lora import merged_metadata

    check_resize_options(new_rank, new_conv_rank, dynamic_method, dynamic_param)
    precision_dtype(save_precision)
    lora = lora_file.read_lora(model)
    modules, rows = resize_modules(
        lora.modules,
        new_rank,
        new_conv_rank=new_conv_rank,
        dynamic_method=dynamic_method,
        dynamic_param=dynamic_param,
        device=device,
    )
    metadata = dict(lora.metadata)
    metadata.update(merged_metadata(lora.metadata, modules, [], []))
    old_dim = lora.metadata.get("ss_network_dim", str(max(m.rank for m in lora.modules.values())))
    new_dim = "Dynamic" if dynamic_method else str(new_rank)
    if dynamic_method:
        metadata["ss_network_dim"] = metadata["ss_network_alpha"] = "Dynamic"
    comment = metadata.get("ss_training_comment")
    note = f"dimension is resized from {old_dim} to {new_dim}"
    metadata["ss_training_comment"] = f"{note}; {comment}" if comment and comment != "None" else note
    dtype = precision_dtype(save_precision) or lora.dtype or torch.float32
    path = lora_file.save_lora(save_to, modules, metadata, dtype)
    return path, rows


def summary_lines(rows: list[ResizeRow], verbose: bool = False) -> list[str]:
    """Report lines: per module when ``verbose``, and the mean / minimum fraction of the norm kept."""
    lines = []
    if verbose:
        lines += [
            f"{r.name}: rank {r.old_rank} -> {r.new_rank}, alpha {r.old_alpha:g} -> {r.new_alpha:g}, "
            f"fro retained {r.fro_retained:.4f}"
            for r in rows
        ]
    if rows:
        kept = [r.fro_retained for r in rows]
        worst = min(rows, key=lambda r: r.fro_retained)
        lines.append(
            f"{len(rows)} modules; Frobenius norm retained: mean {sum(kept) / len(kept):.4f}, "
            f"min {worst.fro_retained:.4f} ({worst.name})"
        )
    return lines
