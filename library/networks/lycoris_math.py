"""Pure ΔW math of LyCORIS' LoHa and LoKr modules, for merging their files without the package.

Formulas as LyCORIS (KohakuBlueleaf/LyCORIS, ``lycoris.functional.loha`` / ``lycoris.functional.lokr``)
computes them and as its modules apply them in ``forward`` (checked against lycoris-lora 4.1.3 in
``tests/tools_models/test_tools_models_lycoris.py``):

* LoHa (Hadamard product, Nam et al. 2022 "FedPara"): ΔW = (w1a · w1b) ⊙ (w2a · w2b) · scale with
  scale = alpha / rank, rank = ``hada_w1_b.shape[0]``. With Tucker cores ``hada_t1/t2`` (r, r, kh, kw),
  each half is t ×₀ w_a ×₁ w_b (``hada_w*_a``: (r, out), ``hada_w*_b``: (r, in)).
* LoKr (Kronecker product, Yeh et al. 2023 "LyCORIS"): ΔW = kron(w1, w2) · scale, each side stored whole
  (``lokr_w1`` / ``lokr_w2``) or factorised (``lokr_w*_a`` · ``lokr_w*_b``, optionally with a Tucker core
  ``lokr_t2``); scale = alpha / rank when a side is factorised (rank = that side's inner dimension, w1's
  first), 1 when both sides are whole (LyCORIS then stores alpha = dim and ignores it).

All functions upcast to float32 and return float32.
"""

from __future__ import annotations

import torch


def factor_scale(alpha: float | torch.Tensor | None, rank: int | None) -> float:
    """alpha / rank; 1 when there is no rank (unfactorised LoKr); alpha defaults to rank (scale 1)."""
    if rank is None or rank <= 0:
        return 1.0
    return 1.0 if alpha is None else float(alpha) / rank


def _tucker(core: torch.Tensor, w_a: torch.Tensor, w_b: torch.Tensor) -> torch.Tensor:
    """Rebuild (p, r, *k) from core (i, j, *k), w_a (i, p), w_b (j, r): Σ_ij core[i,j] w_a[i,p] w_b[j,r]."""
    return torch.einsum("i j ..., i p, j r -> p r ...", core.float(), w_a.float(), w_b.float())


def loha_half(w_a: torch.Tensor, w_b: torch.Tensor, core: torch.Tensor | None = None) -> torch.Tensor:
    """One Hadamard factor: w_a · w_b, shape (out, in, *k) (w_b (r, in, *k) is flattened for the product),
    or with a Tucker core (r, r, *k): (out, in, *k)."""
    if core is not None:
        return _tucker(core, w_a, w_b)
    rank = w_b.shape[0]
    return (w_a.float().reshape(-1, rank) @ w_b.float().reshape(rank, -1)).reshape(
        w_a.shape[0], *w_b.shape[1:]
    )


def loha_delta_weight(
    w1a: torch.Tensor,
    w1b: torch.Tensor,
    w2a: torch.Tensor,
    w2b: torch.Tensor,
    scale: float,
    t1: torch.Tensor | None = None,
    t2: torch.Tensor | None = None,
) -> torch.Tensor:
    """LoHa ΔW = (w1a · w1b) ⊙ (w2a · w2b) · scale, shape (out, in, *k)."""
    return loha_half(w1a, w1b, t1) * loha_half(w2a, w2b, t2) * scale


def lokr_side(
    whole: torch.Tensor | None,
    w_a: torch.Tensor | None,
    w_b: torch.Tensor | None,
    core: torch.Tensor | None = None,
) -> torch.Tensor:
    """One Kronecker side: stored whole, w_a (m, r) · w_b (r, n, *k) -> (m, n, *k), or Tucker-rebuilt."""
    if whole is not None:
        return whole.float()
    if w_a is None or w_b is None:
        raise ValueError("a LoKr side needs either the whole matrix or both factors")
    if core is not None:
        return _tucker(core, w_a, w_b)
    rank = w_b.shape[0]
    return (w_a.float() @ w_b.float().reshape(rank, -1)).reshape(w_a.shape[0], *w_b.shape[1:])


def lokr_rank(
    w1a: torch.Tensor | None, w2a: torch.Tensor | None, t2: torch.Tensor | None = None
) -> int | None:
    """The rank LoKr's scale divides by: w1a's inner dimension, else w2's (the Tucker core's size when
    there is one: ``lokr_w2_a`` is (r, c) then), else None (both sides whole: scale 1).

    With a Tucker core this follows LyCORIS' module (alpha / dim), which is what training applies;
    ``lycoris.functional.lokr.rank_scale`` reads ``w2a.shape[1]`` (= c) there instead."""
    if w1a is not None:
        return int(w1a.shape[1])
    if t2 is not None:
        return int(t2.shape[0])
    if w2a is not None:
        return int(w2a.shape[1])
    return None


def lokr_delta_weight(w1: torch.Tensor, w2: torch.Tensor, scale: float) -> torch.Tensor:
    """LoKr ΔW = kron(w1, w2) · scale; w1 (a, b) gets trailing singleton dims to match w2 (c, d, *k),
    giving (a·c, b·d, *k)."""
    w1 = w1.float()
    while w1.dim() < w2.dim():
        w1 = w1.unsqueeze(-1)
    return torch.kron(w1.contiguous(), w2.float().contiguous()) * scale
