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


class _LoRALinear(torch.autograd.Function):
    """``F.linear(x, weight, bias) + scale · (x·downᵀ)·upᵀ`` as one autograd node: the LoRA's product is
    accumulated into the layer's output (``addmm_``) and its input gradient into the layer's (``addmm_``), so
    neither pass allocates the delta, the sum, the scaled gradient or a second input gradient (four elementwise
    passes over a fresh (tokens, features) buffer each, page faults included). On SD1.5's 192 LoRA layers at
    256 px, 2 CPU cores, it took the LoRA's cost over the bare layers from 227 to 134 ms per step."""

    @staticmethod
    def forward(ctx, x, weight, bias, down, up, scale):
        x2 = x.reshape(-1, x.shape[-1])
        h = torch.mm(x2, down.t())
        out = torch.mm(x2, weight.t()) if bias is None else torch.addmm(bias, x2, weight.t())
        out.addmm_(h, up.t(), alpha=scale)
        ctx.save_for_backward(x2, weight, down, up, h)
        ctx.scale, ctx.x_shape = scale, x.shape
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x2, weight, down, up, h = ctx.saved_tensors
        need_x, need_w, need_b, need_down, need_up, _ = ctx.needs_input_grad
        g2 = grad.reshape(-1, grad.shape[-1])
        gh = torch.mm(g2, up).mul_(ctx.scale) if need_x or need_down else None
        gx = None
        if need_x:
            gx = torch.mm(g2, weight).addmm_(gh, down).view(ctx.x_shape)
        g_weight = torch.mm(g2.t(), x2) if need_w else None
        g_bias = g2.sum(0) if need_b else None
        g_down = torch.mm(gh.t(), x2) if need_down else None
        g_up = torch.mm(g2.t(), h).mul_(ctx.scale) if need_up else None
        return gx, g_weight, g_bias, g_down, g_up, None


def lora_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, down: torch.Tensor,
                up: torch.Tensor, scale: float) -> torch.Tensor:
    """``F.linear(x, weight, bias) + F.linear(F.linear(x, down), up) · scale`` for x of shape (…, in), down
    (r, in), up (out, r), all in one dtype; its gradients reach every input that requires them. The same
    sum as the three calls, rounded differently (the product is accumulated into the layer's output)."""
    return _LoRALinear.apply(x, weight, bias, down, up, scale)


class _LoRAPointwiseConv(torch.autograd.Function):
    """:class:`_LoRALinear` for a 1x1 ``Conv2d`` (stride 1, no padding, one group) on a contiguous (B, C, H, W)
    input, as batched matmuls over (B, C, H·W). On 2 CPU cores this took SD1.5's ``proj_in`` / ``proj_out``
    with their LoRA from 1.3-1.7x the bare convolution's cost to 1.1-1.5x (the 1x1 convolution itself is
    slower than its matmul at 640 and 1280 channels)."""

    @staticmethod
    def forward(ctx, x, weight, bias, down, up, scale):
        batch, channels = x.shape[:2]
        x3 = x.view(batch, channels, -1)
        w, d, u = weight.view(weight.shape[0], channels), down.view(down.shape[0], channels), up.flatten(1)
        h = torch.bmm(d.expand(batch, *d.shape), x3)
        out = torch.bmm(w.expand(batch, *w.shape), x3)
        if bias is not None:
            out.add_(bias.view(1, -1, 1))
        out.baddbmm_(u.expand(batch, *u.shape), h, alpha=scale)
        ctx.save_for_backward(x3, w, d, u, h)
        ctx.scale, ctx.shapes = scale, (x.shape, weight.shape, down.shape, up.shape)
        return out.view(batch, -1, *x.shape[2:])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x3, w, d, u, h = ctx.saved_tensors
        x_shape, w_shape, d_shape, u_shape = ctx.shapes
        need_x, need_w, need_b, need_down, need_up, _ = ctx.needs_input_grad
        batch = x_shape[0]
        g3 = grad.reshape(batch, grad.shape[1], -1)
        gh = None
        if need_x or need_down:
            ut = u.t()
            gh = torch.bmm(ut.expand(batch, *ut.shape), g3).mul_(ctx.scale)
        gx = None
        if need_x:
            wt, dt = w.t(), d.t()
            gx = torch.bmm(wt.expand(batch, *wt.shape), g3).baddbmm_(dt.expand(batch, *dt.shape), gh).view(x_shape)
        g_weight = torch.bmm(g3, x3.transpose(1, 2)).sum(0).view(w_shape) if need_w else None
        g_bias = g3.sum((0, 2)) if need_b else None
        g_down = torch.bmm(gh, x3.transpose(1, 2)).sum(0).view(d_shape) if need_down else None
        g_up = torch.bmm(g3, h.transpose(1, 2)).sum(0).mul_(ctx.scale).view(u_shape) if need_up else None
        return gx, g_weight, g_bias, g_down, g_up, None


def lora_pointwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, down: torch.Tensor,
                        up: torch.Tensor, scale: float) -> torch.Tensor:
    """``F.conv2d(x, weight, bias) + F.conv2d(F.conv2d(x, down), up) · scale`` for a 1x1 convolution (stride 1,
    no padding, one group): x a contiguous (B, C, H, W), weight (out, C, 1, 1), down (r, C, 1, 1), up
    (out, r, 1, 1), all in one dtype. As :func:`lora_linear`: one node, the same sum rounded differently."""
    return _LoRAPointwiseConv.apply(x, weight, bias, down, up, scale)
