"""Low-rank factorisation for extract / resize / SVD merge (pure functions on tensors).

A LoRA module stands for ΔW = scale · up · down. Conv weights are handled as matrices
(out, in·kh·kw) and reshaped back. The truncated SVD ΔW ≈ U_k S_k V_kᵀ is the best rank-k
approximation in the Frobenius norm (Eckart–Young), with error ‖ΔW − ΔW_k‖_F = sqrt(Σ_{i>k} S_i²).
Factors are split symmetrically, up = U_k √S_k and down = √S_k V_kᵀ, so both stay in a range
that fp16 stores well.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

DYNAMIC_METHODS = ("sv_ratio", "sv_fro", "sv_cumulative")


def as_matrix(weight: torch.Tensor) -> torch.Tensor:
    """(out, in) or (out, in, kh, kw) -> (out, in·kh·kw)."""
    return weight.reshape(weight.shape[0], -1)


def svd(matrix: torch.Tensor, device: str | torch.device | None = None):
    """(U (out, k), S (k,), Vh (k, in)) of a matrix, k = min(out, in), computed in float32 on ``device``."""
    m = matrix.to(device or matrix.device, torch.float32)
    return torch.linalg.svd(m, full_matrices=False)


def svd_of_product(up: torch.Tensor, down: torch.Tensor, device: str | torch.device | None = None):
    """SVD of up @ down (up (out, r), down (r, in)) without forming the (out, in) product.

    QR of up and downᵀ reduces the problem to an SVD of an r x r core: with up = Q_u R_u and
    downᵀ = Q_d R_d, up·down = Q_u (R_u R_dᵀ) Q_dᵀ, so U = Q_u U_c, S = S_c, Vh = Vh_c Q_dᵀ.
    Returns (U (out, k), S (k,), Vh (k, in)) with k = min(out, in, r), in float32.
    """
    up32 = up.to(device or up.device, torch.float32)
    down32 = down.to(device or down.device, torch.float32)
    q_u, r_u = torch.linalg.qr(up32)
    q_d, r_d = torch.linalg.qr(down32.T)
    u_c, s, vh_c = torch.linalg.svd(r_u @ r_d.T, full_matrices=False)
    return q_u @ u_c, s, vh_c @ q_d.T


def choose_rank(
    singular_values: torch.Tensor, max_rank: int, method: str | None = None, param: float | None = None
) -> int:
    """Rank to keep, at most ``max_rank`` and at least 1.

    Methods (sd-scripts' ``--dynamic_method``): ``sv_ratio`` keeps singular values ≥ S_max / param;
    ``sv_cumulative`` the smallest k with Σ_{i<k} S_i / Σ S ≥ param; ``sv_fro`` the smallest k with
    sqrt(Σ_{i<k} S_i² / Σ S²) ≥ param. Without a method the rank is ``max_rank``.
    """
    s = singular_values.float()
    n = s.numel()
    if method is None:
        return max(1, min(max_rank, n))
    if method not in DYNAMIC_METHODS:
        raise ValueError(f"unknown dynamic method {method!r}; use one of {DYNAMIC_METHODS}")
    if param is None:
        raise ValueError(f"dynamic method {method} needs a dynamic_param")
    if n == 0 or float(s[0]) == 0.0:
        return 1
    if method == "sv_ratio":
        k = int((s >= s[0] / param).sum())
    else:
        values = s if method == "sv_cumulative" else s**2
        target = param if method == "sv_cumulative" else param**2
        fraction = torch.cumsum(values, 0) / values.sum()
        k = int(torch.searchsorted(fraction, torch.tensor(target - 1e-7))) + 1
    return max(1, min(k, max_rank, n))


def fro_retained(singular_values: torch.Tensor, rank: int) -> float:
    """Fraction of the Frobenius norm kept by the first ``rank`` values: sqrt(Σ_{i<k} S_i² / Σ S²)."""
    s2 = singular_values.double() ** 2
    total = float(s2.sum())
    return 1.0 if total == 0 else math.sqrt(float(s2[:rank].sum()) / total)


def discarded_error(singular_values: torch.Tensor, rank: int) -> float:
    """Frobenius error of the rank-k truncation: sqrt(Σ_{i≥k} S_i²) (Eckart–Young)."""
    return math.sqrt(float((singular_values.double()[rank:] ** 2).sum()))


def split_factors(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, rank: int):
    """(up (out, k), down (k, in)) = (U_k √S_k, √S_k V_kᵀ)."""
    root = s[:rank].clamp_min(0).sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


def clamp_factors(up: torch.Tensor, down: torch.Tensor, quantile: float | None):
    """Clip both factors to ±q, q = the ``quantile`` of |values| of both (sd-scripts' ``--clamp_quantile``).

    This is sd-scripts' plain clamp, which also clips signal (see :func:`clamp_outliers`, what extract uses).
    ``None`` or ≥ 1 leaves them unchanged.
    """
    if quantile is None or quantile >= 1:
        return up, down
    limit = _quantile_of_magnitudes(torch.cat([up.flatten(), down.flatten()]), quantile)
    return up.clamp(-limit, limit), down.clamp(-limit, limit)


def _quantile_of_magnitudes(values: torch.Tensor, quantile: float) -> float:
    values = values.abs().float()
    if values.numel() > 16_000_000:  # torch.quantile's input limit
        values = values[
            torch.randperm(values.numel(), generator=torch.Generator().manual_seed(0))[:16_000_000]
        ]
    return float(torch.quantile(values, quantile))


# An entry is an outlier when its magnitude exceeds OUTLIER_FENCE times the clamp_quantile value of the
# factors' magnitudes. Dense factors (Gaussian-like, even Laplace-like tails) have max/q99 of about 2-3 over
# millions of entries, so they are never touched; a planted or SVD-produced spike far above the bulk is.
OUTLIER_FENCE = 4.0
# Components whose singular value is below this fraction of the largest carry no signal (numerical rank
# deficiency, e.g. a rank-2 change extracted at dim 8); their near-zero entries are left out of the quantile,
# which they would otherwise drag down until it cuts into the real components.
SIGNIFICANT_SV = 1e-5


@dataclass
class ClampResult:
    """What :func:`clamp_outliers` did to one module's factors."""

    limit: float  # the magnitude entries were clipped to (OUTLIER_FENCE x the quantile value); inf: none
    clipped: int  # entries clipped


def clamp_outliers(up: torch.Tensor, down: torch.Tensor, quantile: float | None, singular_values=None):
    """(up, down, ClampResult): clip only outliers, entries beyond OUTLIER_FENCE x the ``quantile`` value.

    The rule (extract's ``--clamp_quantile``, sd-scripts' name and default 0.99): q = the ``quantile`` of the
    magnitudes of the factor entries of the components that carry signal (singular value above
    SIGNIFICANT_SV x the largest; ``singular_values`` are the kept ones, up's columns / down's rows); entries
    with |x| > OUTLIER_FENCE·q are outliers and are clipped to ±OUTLIER_FENCE·q; every other entry is kept
    exactly. sd-scripts clips everything beyond q, which on dense factors removes signal (a rank-2 change
    extracted at dim 8 lost 22.6 % of its norm); here such factors are returned unchanged.
    ``None`` or ≥ 1: no clipping.
    """
    none = ClampResult(math.inf, 0)
    if quantile is None or quantile >= 1 or up.numel() == 0:
        return up, down, none
    rows = slice(None)
    if singular_values is not None and singular_values.numel() and float(singular_values[0]) > 0:
        keep = singular_values[: up.shape[1]] > float(singular_values[0]) * SIGNIFICANT_SV
        rows = keep.nonzero().flatten().to(up.device)
    values = torch.cat([up[:, rows].flatten(), down[rows].flatten()])
    limit = _quantile_of_magnitudes(values, quantile) * OUTLIER_FENCE
    clipped = int((up.abs() > limit).sum()) + int((down.abs() > limit).sum())
    if clipped == 0 or limit == 0:
        return up, down, none
    return up.clamp(-limit, limit), down.clamp(-limit, limit), ClampResult(limit, clipped)


def to_lora_shapes(up2d: torch.Tensor, down2d: torch.Tensor, kernel: tuple[int, ...]):
    """Matrix factors -> LoRA weight shapes: Linear keeps them; conv gives up (out, k, 1, 1), down (k, in, kh, kw)."""
    if not kernel:
        return up2d.contiguous(), down2d.contiguous()
    rank = down2d.shape[0]
    return (
        up2d.reshape(up2d.shape[0], rank, 1, 1).contiguous(),
        down2d.reshape(rank, -1, *kernel).contiguous(),
    )
