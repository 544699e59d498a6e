"""Pure LoRA math shared by the network, the merge / extract / resize tools and the inspector.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") adds
ΔW = up · down · scale to a frozen weight W, with scale = alpha / rank (sd-scripts' convention).
"""

from __future__ import annotations

import torch


def lora_scale(alpha: float | torch.Tensor, rank: int) -> float:
    """Scale factor alpha / rank (alpha may be a 0-d tensor as stored in files)."""
    if rank <= 0:
        raise ValueError(f"LoRA rank must be positive, got {rank}")
    return float(alpha) / rank


def lora_delta_weight(down: torch.Tensor, up: torch.Tensor, scale: float) -> torch.Tensor:
    """ΔW = up · down · scale, in the layout of the original weight.

    Shapes:
        Linear: down (r, in), up (out, r) -> (out, in).
        Conv2d: down (r, in, kh, kw), up (out, r, 1, 1) -> (out, in, kh, kw); a 1x1 down gives
        (out, in, 1, 1).
    Computed in float32 (inputs are upcast), returned in float32.
    """
    down32, up32 = down.float(), up.float()
    if down32.dim() == 2 and up32.dim() == 2:
        return (up32 @ down32) * scale
    if down32.dim() == 4 and up32.dim() == 4:
        if up32.shape[2:] != (1, 1):
            raise ValueError(f"conv lora_up must be 1x1, got shape {tuple(up32.shape)}")
        rank = down32.shape[0]
        delta = up32.flatten(1) @ down32.reshape(rank, -1)
        return delta.reshape(up32.shape[0], *down32.shape[1:]) * scale
    raise ValueError(f"unsupported LoRA shapes: down {tuple(down.shape)}, up {tuple(up.shape)}")


def merged_weight(
    weight: torch.Tensor,
    down: torch.Tensor,
    up: torch.Tensor,
    alpha: float | torch.Tensor,
    multiplier: float = 1.0,
) -> torch.Tensor:
    """W + multiplier · ΔW, returned in ``weight``'s dtype; rank is taken from ``down``."""
    delta = lora_delta_weight(down, up, lora_scale(alpha, down.shape[0]) * multiplier)
    return (weight.float() + delta.reshape(weight.shape)).to(weight.dtype)


def max_norm_factors(delta_norms: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Max-norm regularisation (Srivastava et al. 2014, as sd-scripts' ``scale_weight_norms``): the factor
    that brings each ΔW's Frobenius norm down to ``max_norm`` (1 where it is already within). Applied as
    its square root to both ``up`` and ``down``. Shape as ``delta_norms``."""
    return torch.clamp(max_norm / delta_norms.clamp(min=1e-12), max=1.0)
