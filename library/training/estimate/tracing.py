"""Run code on the meta device and count what it would cost: live tensor bytes (peak) and FLOPs.

Meta tensors have shapes and dtypes but no data, so a whole SD1.5 training step runs in a second on any
machine. :class:`LiveBytes` follows every tensor storage the traced code allocates (forward, backward,
checkpoint recomputation) and frees (when the storage is released), so its peak is the peak of a real
step's new allocations, as PyTorch's caching allocator would see them before fragmentation.

Attention is the one place where the meta device differs from a GPU: meta runs SDPA's math path, which
materialises the (L x L) score matrix, while CUDA (and the CPU) use a fused kernel that keeps only the
output and a log-sum-exp row. :func:`fused_attention` stands in for the fused kernel while tracing.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode


class LiveBytes(TorchDispatchMode):
    """Current and peak bytes of the storages allocated inside the mode (tensors made before are not counted)."""

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, int] = {}
        self.current = 0
        self.peak = 0
        #: operators dispatched (each costs a fixed launch/dispatch time, whatever its size)
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        # an output sharing an input's storage (a view such as a weight's transpose, an in-place op) is
        # not an allocation: that storage was counted when it was made, or belongs to the weights
        inputs = {t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                if storage._cdata not in inputs:
                    self._track(storage)
        return out

    def _track(self, storage) -> None:
        key = storage._cdata
        if key in self._live:
            return
        size = storage.nbytes()
        self._live[key] = size
        self.current += size
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._release, key)

    def _release(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)


class _FusedAttention(torch.autograd.Function):
    """Shapes and saved tensors of a fused SDPA kernel (flash / memory-efficient): out and log-sum-exp."""

    @staticmethod
    def forward(ctx, query, key, value):
        out = query.new_empty(*query.shape[:-1], value.shape[-1])
        logsumexp = query.new_empty(query.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(query, key, value, out, logsumexp)
        return out

    @staticmethod
    def backward(ctx, grad):
        query, key, value, _, _ = ctx.saved_tensors
        return torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)


class AttentionFlops:
    """FLOPs of the stand-in attention: 4·(batch·heads)·Lq·Lk·d forward, twice that again in backward."""

    def __init__(self) -> None:
        self.total = 0

    def __call__(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                 enable_gqa=False):
        lq, lk, dim = query.shape[-2], key.shape[-2], query.shape[-1]
        rows = query.numel() // (lq * dim)
        with_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
        self.total += 4 * rows * lq * lk * dim * (3 if with_grad else 1)
        return _FusedAttention.apply(query, key, value)


@contextlib.contextmanager
def fused_attention() -> Iterator[AttentionFlops]:
    """Replace ``F.scaled_dot_product_attention`` (looked up at call time by diffusers and transformers)."""
    functional = torch.nn.functional
    original = functional.scaled_dot_product_attention
    counter = AttentionFlops()
    functional.scaled_dot_product_attention = counter
    try:
        yield counter
    finally:
        functional.scaled_dot_product_attention = original


class _Everywhere:
    """Stands in for :class:`FlopCounterMode`'s module tracker: all FLOPs count under "Global" only.

    The tracker hooks every module's forward and backward and, through those hooks, keeps each module's
    outputs alive until the counter exits: in a backward pass with gradient checkpointing, every recomputed
    activation stayed "live" and the traced peak grew with the number of checkpointed blocks (FLUX.1-dev at
    1024 px: 33 GiB instead of a few). Per-module counts are not used here."""

    parents = frozenset({"Global"})

    def __enter__(self) -> _Everywhere:
        return self

    def __exit__(self, *exc) -> None:
        return None


class _FlopCounter(FlopCounterMode):
    def __init__(self) -> None:
        super().__init__(display=False)
        self.mod_tracker = _Everywhere()


class Trace:
    """Peak new bytes and FLOPs of the code run inside ``with Trace() as trace:``."""

    def __init__(self) -> None:
        self.memory = LiveBytes()
        self._flops = _FlopCounter()
        self._attention: AttentionFlops | None = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Trace:
        self._attention = self._stack.enter_context(fused_attention())
        self._stack.enter_context(self._flops)
        self._stack.enter_context(self.memory)
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    @property
    def peak_bytes(self) -> int:
        return self.memory.peak

    @property
    def ops(self) -> int:
        return self.memory.ops

    @property
    def attention_flops(self) -> int:
        return self._attention.total if self._attention else 0

    @property
    def flops(self) -> int:
        return int(self._flops.get_total_flops()) + self.attention_flops
