"""Memory savers for big frozen models, for any family: fp8 weight storage and block swapping.

**fp8 storage** (sd-scripts' ``fp8_base`` / ``fp8_base_unet``): the frozen weights of every ``nn.Linear``
and ``nn.Conv2d`` of a module are stored as ``float8_e4m3fn`` (1 byte instead of 2) and cast to the
input's dtype inside ``forward``, so the arithmetic runs in bf16/fp16/fp32; biases, norms and embeddings
keep their dtype, and adapters (LoRA) wrapping these layers keep full precision. e4m3fn has 3 mantissa
bits: a normal value moves by at most 2⁻⁴ of itself, values below 2⁻⁶ by at most 2⁻¹⁰ (half the smallest
subnormal step), and magnitudes above 448 (the format's largest) are clamped there.

**Block swapping** (sd-scripts' ``blocks_to_swap``): the weights of the first N blocks of a stack live on
the host; each moves to the device just before it runs (forward, and backward for the gradients through
it) and back after, with the next swapped block's copy started on a side stream so it overlaps the
current block's compute. On a CPU-only machine the device is the host and the moves are no-ops, so a run
gives the same numbers with and without swapping.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448


def to_fp8(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` rounded to float8_e4m3fn, magnitudes clamped to the format's largest value."""
    return tensor.detach().float().clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def fp8_rounding_bound(tensor: torch.Tensor) -> torch.Tensor:
    """The largest change :func:`to_fp8` may make to each element of ``tensor`` (clamping aside)."""
    t = tensor.detach().float().abs()
    return torch.maximum(t * 2.0**-4, torch.full_like(t, 2.0**-10))


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return x.dtype if x.dtype.is_floating_point and x.element_size() > 1 else torch.bfloat16


class Fp8Linear(nn.Linear):
    """``nn.Linear`` whose weight is stored in fp8 and computed in the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = _compute_dtype(x)
        bias = None if self.bias is None else self.bias.to(dtype)
        return F.linear(x.to(dtype), self.weight.to(dtype), bias)


class Fp8Conv2d(nn.Conv2d):
    """``nn.Conv2d`` whose weight is stored in fp8 and computed in the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = _compute_dtype(x)
        bias = None if self.bias is None else self.bias.to(dtype)
        return self._conv_forward(x.to(dtype), self.weight.to(dtype), bias)


_FP8_CLASSES = {nn.Linear: Fp8Linear, nn.Conv2d: Fp8Conv2d}


def store_in_fp8(module: nn.Module) -> int:
    """Store the weights of ``module``'s Linear and Conv2d layers in fp8 (frozen); returns the bytes saved.

    Call it before an adapter wraps the layers (the adapter keeps the layer's forward it finds).
    """
    saved = 0
    for layer in module.modules():
        fp8_class = _FP8_CLASSES.get(type(layer))
        if fp8_class is None:
            continue
        weight = layer.weight
        saved += weight.numel() * (weight.element_size() - 1)
        layer.weight = nn.Parameter(to_fp8(weight.data).to(weight.device), requires_grad=False)
        layer.__class__ = fp8_class
    return saved


def fp8_layer_count(module: nn.Module) -> int:
    return sum(isinstance(m, (Fp8Linear, Fp8Conv2d)) for m in module.modules())


Mover = Callable[[nn.Module, torch.device], None]


def move_weights(block: nn.Module, device: torch.device) -> None:
    """Move ``block``'s parameters and buffers to ``device`` in place (non-blocking from pinned memory)."""
    pin = device.type == "cpu" and torch.cuda.is_available()  # pinned host memory: asynchronous copies
    for tensor in [*block.parameters(recurse=True), *block.buffers(recurse=True)]:
        if tensor.device != device:
            moved = tensor.data.to(device, non_blocking=True)
            tensor.data = moved.pin_memory() if pin else moved
        elif pin and not tensor.is_pinned():  # placed on the host at load, never moved yet
            tensor.data = tensor.data.pin_memory()


def move_except(module: nn.Module, device: torch.device, kept: Sequence[nn.Module] = ()) -> None:
    """``module.to(device)``, except the weights of ``kept`` (blocks that stay in host memory): a model with
    swapped blocks never has them on the device all at once, not even while it is placed."""
    if not kept:
        module.to(device)
        return
    skipped = {id(sub) for block in kept for sub in block.modules()}
    for sub in module.modules():
        if id(sub) not in skipped:
            sub._apply(lambda t: t.to(device), recurse=False)


class BlockSwapper:
    """Keep the first ``count`` of ``blocks`` on ``host`` and bring each to ``device`` only while it runs.

    ``mover(block, device)`` does a move (default :func:`move_weights`); tests pass a recorder. On CUDA the
    move of the next swapped block is issued on a side stream while the current one computes, and a
    block waits for its own copy before it runs.
    """

    def __init__(self, blocks: Sequence[nn.Module], count: int, device: torch.device | str,
                 host: torch.device | str = "cpu", mover: Mover | None = None):
        if count < 0 or count > len(blocks):
            raise ValueError(f"blocks_to_swap must be between 0 and {len(blocks)}, not {count}")
        self.blocks = list(blocks)
        self.count = count
        self.device = torch.device(device)
        self.host = torch.device(host)
        self.mover = mover or move_weights
        self.handles: list = []
        cuda = self.device.type == "cuda" and self.host != self.device
        self.stream = torch.cuda.Stream(self.device) if cuda else None
        self.events: dict[int, torch.cuda.Event] = {}
        #: blocks between their backward pre-hook and backward hook: a gradient-checkpointing recompute of
        #: their forward must not send them out while their backward still needs the weights
        self.in_backward: set[int] = set()

    @property
    def swapped(self) -> list[nn.Module]:
        return self.blocks[: self.count]

    def _bring_in(self, index: int, prefetch_next: int | None) -> None:
        event = self.events.pop(index, None)
        if event is not None:
            torch.cuda.current_stream(self.device).wait_event(event)
        else:
            self.mover(self.blocks[index], self.device)
        if prefetch_next is not None and 0 <= prefetch_next < self.count and prefetch_next not in self.events:
            self._prefetch(prefetch_next)

    def _prefetch(self, index: int) -> None:
        if self.stream is None:
            return
        with torch.cuda.stream(self.stream):
            self.mover(self.blocks[index], self.device)
            event = torch.cuda.Event()
            event.record(self.stream)
        self.events[index] = event

    def _send_out(self, index: int) -> None:
        self.mover(self.blocks[index], self.host)

    def _forward_done(self, index: int) -> None:
        if index not in self.in_backward:
            self._send_out(index)

    def _backward_start(self, index: int) -> None:
        self.in_backward.add(index)
        self._bring_in(index, index - 1)

    def _backward_done(self, index: int) -> None:
        self.in_backward.discard(index)
        self._send_out(index)

    def install(self) -> BlockSwapper:
        """Put the swapped blocks on the host and register the hooks that move them."""
        for index, block in enumerate(self.swapped):
            self.mover(block, self.host)
            self.handles += [
                block.register_forward_pre_hook(lambda m, a, i=index: self._bring_in(i, i + 1)),
                block.register_forward_hook(lambda m, a, o, i=index: self._forward_done(i)),
                block.register_full_backward_pre_hook(lambda m, g, i=index: self._backward_start(i)),
                block.register_full_backward_hook(lambda m, gi, go, i=index: self._backward_done(i)),
            ]
        return self

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        for block in self.swapped:
            self.mover(block, self.device)

    def weight_bytes_on_host(self) -> int:
        return sum(p.numel() * p.element_size() for b in self.swapped for p in b.parameters())
