"""LoRA and LoCon (``network_module = "networks.lora"``), compatible with sd-scripts' files and options.

forward(x) = org(x) + up(down(x)) · multiplier · alpha / dim. ``down`` is a Linear in→r (or a Conv2d
with the original kernel, stride and padding), ``up`` a Linear r→out (or a 1x1 Conv2d). ``down`` is
kaiming-uniform(a=√5), ``up`` zero, so a fresh network leaves the model unchanged.
"""

from __future__ import annotations

import collections
import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from library.errors import ConfigError, ModelLoadError
from library.networks import blocks, keys
from library.networks.base import NetworkModule
from library.networks.functional import lora_delta_weight, lora_linear, lora_pointwise_conv
from library.networks.network import LoadReport, Network, check_positive_int, group_by_module, read_state_dict

logger = logging.getLogger(__name__)

DEFAULT_DIM = 4
DEFAULT_ALPHA = 1.0

#: a tensor op's fixed cost on the CPU, in multiply-adds (dispatch, autograd node, allocation): measured on 2
#: cores, where a small layer's op costs about as much as this many multiply-adds of its matmul
OP_COST_MACS = 1_000_000


class LoRAModule(NetworkModule):
    """LoRA around one ``nn.Linear`` or ``nn.Conv2d``.

    Args:
        dim: rank r. alpha: scale numerator (None or 0 -> alpha = dim, as sd-scripts).
        dropout: dropout on down(x) in train mode (``network_dropout``).
        rank_dropout: in train mode, each rank of down(x) is zeroed per sample with this
            probability and the rest rescaled by 1 / (1 - p).
        module_dropout: in train mode, the whole LoRA path is skipped with this probability.
    """

    def __init__(
        self,
        lora_name: str,
        org_module: nn.Module,
        dim: int,
        alpha: float | None = None,
        multiplier: float = 1.0,
        dropout: float | None = None,
        rank_dropout: float | None = None,
        module_dropout: float | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__(lora_name, org_module, multiplier, module_dropout)
        self.lora_dim = dim
        self.is_conv = isinstance(org_module, nn.Conv2d)
        if self.is_conv:
            self.lora_down = nn.Conv2d(
                org_module.in_channels,
                dim,
                org_module.kernel_size,
                org_module.stride,
                org_module.padding,
                bias=False,
            )
            self.lora_up = nn.Conv2d(dim, org_module.out_channels, (1, 1), (1, 1), bias=False)
        elif isinstance(org_module, nn.Linear):
            self.lora_down = nn.Linear(org_module.in_features, dim, bias=False)
            self.lora_up = nn.Linear(dim, org_module.out_features, bias=False)
        else:
            raise TypeError(
                f"{lora_name}: LoRA wraps nn.Linear or nn.Conv2d, not {type(org_module).__name__}"
            )
        alpha = dim if alpha is None or alpha == 0 else alpha
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        self.scale = float(alpha) / dim
        self.dropout = dropout
        self.rank_dropout = rank_dropout
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5), generator=generator)
        nn.init.zeros_(self.lora_up.weight)

        #: False: never the merged weight (:meth:`merges`), e.g. to compare the two paths
        self.merge_when_cheaper = True
        #: False: never the layer and its LoRA as one node (:meth:`_fused_call`), e.g. to compare the two paths
        self.fuse_with_layer = True
        #: (input features, lo, hi): the calls of lo < tokens < hi run merged; None: never (see :meth:`apply_to`)
        self._merge_tokens: tuple[int, float, float] | None = None
        #: a plain nn.Linear or 1x1 nn.Conv2d with its own forward: the layer and its LoRA run as one node
        self._fused = False

    def on_weights_loaded(self) -> None:
        self.scale = float(self.alpha) / self.lora_dim

    def apply_to(self) -> None:
        super().apply_to()
        org = self.org_module
        own_forward = getattr(self._org_forward, "__func__", None) is type(org).forward
        plain = type(org) is nn.Linear or (type(org) is nn.Conv2d and org.kernel_size == (1, 1) and org.groups == 1
                                           and org.stride == (1, 1) and org.padding == (0, 0)
                                           and org.padding_mode == "zeros")
        self._merge_tokens = None
        self._fused = own_forward and plain
        if not self._fused:
            return
        n_out, n_in = org.weight.shape[:2]
        r = self.lora_dim
        # multiply-adds of forward + backward beyond the layer's own op, fixed + per token: merged, the weight's
        # product (and its two gradients) plus the full weight's gradient per token; separate, r-wide products
        merged_fixed, merged_per_token = 3 * r * n_out * n_in + 4 * OP_COST_MACS, n_out * n_in
        separate_fixed, separate_per_token = 9 * OP_COST_MACS, 3 * r * (n_in + n_out)
        # merged costs less when (merged_per_token - separate_per_token) * tokens < separate_fixed - merged_fixed
        slope, room = merged_per_token - separate_per_token, separate_fixed - merged_fixed
        if slope > 0:
            self._merge_tokens = (n_in, -math.inf, room / slope)
        elif slope < 0:
            self._merge_tokens = (n_in, room / slope, math.inf)
        elif room > 0:
            self._merge_tokens = (n_in, -math.inf, math.inf)

    def merges(self, x: torch.Tensor) -> bool:
        """Whether this call runs as one layer op on the merged weight W + up·down·scale (the layer's own op,
        2 ops forward and 3 backward) rather than the separate r-wide path (about 3 forward and 6 backward).
        Only where that costs less: layers so small that each op's fixed cost outweighs the work (the built-in
        tiny model's: a tenth of its step), never an SD-sized layer (2.7x to 47x the work merged); a plain
        ``nn.Linear`` or 1x1 ``nn.Conv2d``, all in one dtype. The op cost is the CPU's (:data:`OP_COST_MACS`); a
        GPU's is larger against its work, so it merges no layer there that would be slower merged. The same on
        the meta device, so the estimate traces what the run does."""
        return self._merges(x, self.lora_down.weight, self.lora_up.weight)

    def _merges(self, x: torch.Tensor, down: torch.Tensor, up: torch.Tensor) -> bool:
        bounds = self._merge_tokens
        if bounds is None or not self.merge_when_cheaper or not (x.dtype == down.dtype == up.dtype):
            return False
        n_in, lo, hi = bounds
        return lo < x.numel() // n_in < hi and self._org_holder[0].weight.dtype == x.dtype

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """The base class's forward with the plain case (no dropouts, multiplier ≠ 0) calling the functional ops
        itself: the same ops in the same order, so the same numbers, without the two sub-module calls (a tiny
        model's step has 120 of these modules; about a tenth of their Python cost); or, where :meth:`merges`,
        the layer's op on the merged weight; or, for a plain ``nn.Linear`` or 1x1 ``nn.Conv2d``, the layer and
        its LoRA as one autograd node (:meth:`_fused_call`); the last two give the same sum, rounded differently."""
        org_forward = self._org_forward
        if org_forward is None or self.multiplier == 0 or (
                self.training and (self.dropout or self.rank_dropout or self.module_dropout)):
            return super().forward(x, *args, **kwargs)
        down, up = self.lora_down.weight, self.lora_up.weight
        if self._merges(x, down, up):
            org = self._org_holder[0]
            if self.is_conv:
                weight = org.weight
                merged = torch.addmm(weight.flatten(1), up.flatten(1), down.flatten(1),
                                     alpha=self.scale * self.multiplier)
                return F.conv2d(x, merged.view_as(weight), org.bias)
            return F.linear(x, torch.addmm(org.weight, up, down, alpha=self.scale * self.multiplier), org.bias)
        shape_fits = x.dim() == 4 and x.is_contiguous() if self.is_conv else x.dim() >= 2
        if self._fused and self.fuse_with_layer and shape_fits and not args and not kwargs:
            fused = self._fused_call(x, down, up)
            if fused is not None:
                return fused
        out = org_forward(x, *args, **kwargs)
        if x.dtype != down.dtype:
            x = x.to(down.dtype)
        if self.is_conv:
            conv = self.lora_down
            delta = F.conv2d(F.conv2d(x, down, None, conv.stride, conv.padding, conv.dilation, conv.groups), up)
        else:
            delta = F.linear(F.linear(x, down), up)
        return torch.add(out, delta.to(out.dtype), alpha=self.scale * self.multiplier)

    def _fused_call(self, x: torch.Tensor, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor | None:
        """The layer and its LoRA as one autograd node (:func:`lora_linear`, :func:`lora_pointwise_conv`), in
        the dtype the layer's op would compute in: autocast's where it is on (every operand cast to it, as
        autocast casts a linear's or a convolution's), else the operands' own where all share one; None where
        they do not (e.g. a bf16 base with fp32 LoRA weights outside autocast), for the separate path to cast."""
        org = self._org_holder[0]
        weight, bias = org.weight, org.bias
        op = lora_pointwise_conv if self.is_conv else lora_linear
        scale = self.scale * self.multiplier
        device = x.device.type
        if device != "meta" and torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
            with torch.autocast(device, enabled=False):
                return op(x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype), down.to(dtype),
                          up.to(dtype), scale)
        if not (x.dtype == weight.dtype == down.dtype == up.dtype) or (bias is not None and bias.dtype != x.dtype):
            return None
        return op(x, weight, bias, down, up, scale)

    def delta_forward(self, x: torch.Tensor) -> torch.Tensor:
        """up(down(x)) · alpha / dim with train-mode dropouts; x is (B, …, in) or (B, in, H, W)."""
        delta, factor = self.delta_and_factor(x)
        return delta * factor

    def delta_and_factor(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(up(down(x)), alpha / dim · the rank-dropout rescale): :meth:`delta_forward` without its scaling."""
        weight_dtype = self.lora_down.weight.dtype
        lx = self.lora_down(x if x.dtype == weight_dtype else x.to(weight_dtype))
        scale = self.scale
        if self.training and self.dropout:
            lx = F.dropout(lx, p=self.dropout)
        if self.training and self.rank_dropout:
            mask = torch.rand((lx.size(0), self.lora_dim), device=lx.device) > self.rank_dropout
            if self.is_conv:
                mask = mask[:, :, None, None]
            elif lx.dim() == 3:
                mask = mask[:, None, :]
            lx = lx * mask.to(lx.dtype)
            scale = scale / (1.0 - self.rank_dropout)
        return self.lora_up(lx), scale

    def delta_weight(self) -> torch.Tensor:
        return lora_delta_weight(self.lora_down.weight, self.lora_up.weight, self.scale)


class SplitLoRAModule(NetworkModule):
    """LoRA on a fused projection with one down/up pair per part of its output (sd-scripts' ``split_qkv``: a FLUX
    double block's q, k, v; a single block's q, k, v and MLP), all of rank ``dim`` with one alpha.

    forward(x) = org(x) + cat_i(up_i(down_i(x))) · alpha / dim. The file holds the fused form sd-scripts writes
    (and every client loads as a plain LoRA): ``lora_down`` = the downs stacked (n·dim, in), ``lora_up`` = the ups
    block-diagonal (out, n·dim). Its alpha is alpha · n, so that alpha / rank of the fused module is this module's
    scale and the file's ΔW is the one trained; sd-scripts keeps alpha unchanged there, so clients apply its split
    layers at 1/n strength (kohya-ss/sd-scripts#2204).
    """

    def __init__(
        self,
        lora_name: str,
        org_module: nn.Module,
        dim: int,
        split_dims: list[int],
        alpha: float | None = None,
        multiplier: float = 1.0,
        dropout: float | None = None,
        rank_dropout: float | None = None,
        module_dropout: float | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__(lora_name, org_module, multiplier, module_dropout)
        if not isinstance(org_module, nn.Linear) or sum(split_dims) != org_module.out_features:
            raise TypeError(f"{lora_name}: split parts {split_dims} do not add up to the layer's output width")
        self.lora_dim = dim
        self.is_conv = False
        self.split_dims = list(split_dims)
        self.lora_down = nn.ModuleList(nn.Linear(org_module.in_features, dim, bias=False) for _ in split_dims)
        self.lora_up = nn.ModuleList(nn.Linear(dim, width, bias=False) for width in split_dims)
        alpha = dim if alpha is None or alpha == 0 else alpha
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        self.scale = float(alpha) / dim
        self.dropout = dropout
        self.rank_dropout = rank_dropout
        for down, up in zip(self.lora_down, self.lora_up, strict=True):
            nn.init.kaiming_uniform_(down.weight, a=math.sqrt(5), generator=generator)
            nn.init.zeros_(up.weight)

    def on_weights_loaded(self) -> None:
        self.scale = float(self.alpha) / self.lora_dim

    def delta_forward(self, x: torch.Tensor) -> torch.Tensor:
        weight_dtype = self.lora_down[0].weight.dtype
        x = x if x.dtype == weight_dtype else x.to(weight_dtype)
        scale = self.scale
        outs = []
        for down, up in zip(self.lora_down, self.lora_up, strict=True):
            lx = down(x)
            if self.training and self.dropout:
                lx = F.dropout(lx, p=self.dropout)
            if self.training and self.rank_dropout:
                mask = torch.rand((lx.size(0), self.lora_dim), device=lx.device) > self.rank_dropout
                lx = lx * (mask[:, None, :] if lx.dim() == 3 else mask).to(lx.dtype)
            outs.append(up(lx))
        if self.training and self.rank_dropout:
            scale = scale / (1.0 - self.rank_dropout)
        return torch.cat(outs, dim=-1) * scale

    def delta_weight(self) -> torch.Tensor:
        return torch.cat([lora_delta_weight(down.weight, up.weight, self.scale)
                          for down, up in zip(self.lora_down, self.lora_up, strict=True)], dim=0)

    def file_entries(self) -> dict[str, torch.Tensor]:
        """The fused form of the file (keys without the module name): stacked downs, block-diagonal ups."""
        downs = [down.weight.detach() for down in self.lora_down]
        down = torch.cat(downs, dim=0)
        up = torch.zeros(sum(self.split_dims), down.shape[0], dtype=down.dtype, device=down.device)
        row = 0
        for i, part in enumerate(self.lora_up):
            width = self.split_dims[i]
            up[row : row + width, i * self.lora_dim : (i + 1) * self.lora_dim] = part.weight.detach()
            row += width
        alpha = torch.tensor(float(self.alpha) * len(self.split_dims), dtype=self.alpha.dtype)
        return {"lora_down.weight": down, "lora_up.weight": up, "alpha": alpha}

    def entries_from_file(self, entries: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A fused file module (stacked downs, block-diagonal ups) as this module's parts; anything that is not
        that form cannot be trained per part and is refused, naming the module and the way out."""
        n, dim = len(self.split_dims), self.lora_dim
        down, up = entries.get("lora_down.weight"), entries.get("lora_up.weight")
        if down is None or up is None:
            return {}
        if down.dim() != 2 or down.shape[0] != n * dim or tuple(up.shape) != (sum(self.split_dims), n * dim):
            raise ModelLoadError(
                f"{self.lora_name}: the file's module has rank {down.shape[0]} (lora_down {tuple(down.shape)}, "
                f"lora_up {tuple(up.shape)}), but split_qkv trains {n} parts of rank network_dim = {dim}, which "
                f"needs rank {n * dim}. Set network_dim to {down.shape[0] // n if down.shape[0] % n == 0 else '?'} "
                "(the file's rank / parts), or train it without split_qkv (dim_from_weights = true)."
            )
        parts: dict[str, torch.Tensor] = {}
        row = 0
        for i, width in enumerate(self.split_dims):
            cols = slice(i * dim, (i + 1) * dim)
            block = up[row : row + width]
            off_diagonal = torch.cat([block[:, : i * dim], block[:, (i + 1) * dim :]], dim=1)
            if off_diagonal.numel() and off_diagonal.abs().max() > 0:
                raise ModelLoadError(
                    f"{self.lora_name}: this module of the file mixes the parts of the fused projection (its lora_up "
                    f"is not block-diagonal over {n} parts of rank {dim}), so it cannot be trained as separate "
                    "q/k/v LoRAs exactly. Remove split_qkv from network_args to continue training it as one fused "
                    "module (with dim_from_weights = true)."
                )
            parts[f"lora_down.{i}.weight"] = down[cols]
            parts[f"lora_up.{i}.weight"] = block[:, cols]
            row += width
        alpha = entries.get("alpha")
        parts["alpha"] = torch.tensor(float(down.shape[0] if alpha is None else alpha) / n)
        return parts


class LoRANetwork(Network):
    """A LoRA / LoCon network; see :func:`create_network` and :func:`network_from_weights`."""


class BlockPlan:
    """Rank, alpha and learning-rate weight per module: network-wide, or per UNet block (block_dims …)."""

    def __init__(
        self,
        dim,
        alpha,
        conv_dim,
        conv_alpha,
        block_sizes=None,
        conv_block_sizes=None,
        lr_weights=None,
        zero_threshold=0.0,
        layout=None,
    ):
        #: the family's block numbering (None: SD1/SD2's 25 blocks)
        self.layout = layout
        self.sizes = {keys.KIND_LINEAR: (dim, alpha), keys.KIND_CONV: (conv_dim, conv_alpha)}
        self.block_sizes = {keys.KIND_LINEAR: block_sizes, keys.KIND_CONV: conv_block_sizes}
        self.lr_weights, self.zero_threshold = lr_weights, zero_threshold

    @classmethod
    def from_args(cls, extra: dict, dim, alpha, conv_dim, conv_alpha, layout=None) -> BlockPlan:
        """Take the block-wise network_args out of ``extra`` (sd-scripts' names)."""

        def sizes(dims_key, alphas_key, default_alpha):
            dims_text, alphas_text = extra.pop(dims_key, None), extra.pop(alphas_key, None)
            if dims_text is None:
                if alphas_text is not None:
                    raise ConfigError(f"network_args {alphas_key} needs {dims_key} as well.")
                return None
            dims = blocks.parse_block_list(dims_text, dims_key, layout=layout)
            alphas = (
                blocks.parse_block_list(alphas_text, alphas_key, float, layout=layout)
                if alphas_text
                else [default_alpha] * len(dims)
            )
            return list(zip(dims, alphas, strict=True))

        block_sizes = sizes("block_dims", "block_alphas", alpha)
        conv_block_sizes = sizes("conv_block_dims", "conv_block_alphas", conv_alpha or DEFAULT_ALPHA)
        weights = blocks.block_lr_weights(
            extra.pop("down_lr_weight", None),
            extra.pop("mid_lr_weight", None),
            extra.pop("up_lr_weight", None),
            layout,
            extra.pop("block_lr_weight", None),
        )
        threshold = float(extra.pop("block_lr_zero_threshold", None) or 0.0)
        return cls(dim, alpha, conv_dim, conv_alpha, block_sizes, conv_block_sizes, weights, threshold, layout)

    @property
    def uses_conv(self) -> bool:
        return bool(self.sizes[keys.KIND_CONV][0]) or self.block_sizes[keys.KIND_CONV] is not None

    def size_and_weight(self, target: keys.Target, unet_side: bool) -> tuple[tuple, float]:
        """((rank, alpha), lr weight) of one target; rank 0/None means no module."""
        size = self.sizes[target.kind]
        index_of = blocks.block_index if self.layout is None else self.layout.index_of
        idx = index_of(target.lora_name) if unet_side else None
        if idx is None:
            return size, 1.0
        per_block = self.block_sizes[target.kind]
        if per_block is not None:
            size = per_block[idx]
        weight = self.lr_weights[idx] if self.lr_weights else 1.0
        if self.lr_weights and weight <= self.zero_threshold:
            return (0, None), weight
        return size, weight


def _check_probability(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if not 0.0 <= float(value) < 1.0:
        raise ConfigError(f"{name} must be in [0, 1), got {value!r}. Use e.g. 0.1, or leave it unset.")
    return float(value) or None


def create_network(
    unet: nn.Module | None,
    text_encoder: nn.Module | None,
    *,
    dim: int | None = None,
    alpha: float | None = None,
    conv_dim: int | None = None,
    conv_alpha: float | None = None,
    dropout: float | None = None,
    rank_dropout: float | None = None,
    module_dropout: float | None = None,
    train_unet: bool = True,
    train_text_encoder: bool = True,
    multiplier: float = 1.0,
    generator: torch.Generator | None = None,
    parts: list[keys.NetworkPart] | None = None,
    block_layout=None,
    **extra,
) -> LoRANetwork:
    """Build a fresh LoRA (LoCon with ``conv_dim``) for the parts being trained; not yet applied.

    Defaults as sd-scripts: dim 4, alpha 1, conv_alpha 1 when conv_dim is set. ``extra`` takes the
    remaining parsed network_args (LoRA+ ratios), kept in ``network.info``. ``parts`` (from
    :func:`keys.model_parts`) names the model's parts as its family's files do; without it ``unet`` and
    ``text_encoder`` (a module or a list of modules) are named SD1/SD2's way. ``block_layout`` is the
    family's block numbering for block_dims / lr weights (None: SD1/SD2's 25 blocks).
    """
    dim = check_positive_int("network_dim", DEFAULT_DIM if dim is None else dim)
    alpha = DEFAULT_ALPHA if alpha is None else float(alpha)
    if conv_dim:
        conv_dim = check_positive_int("conv_dim", conv_dim)
        conv_alpha = DEFAULT_ALPHA if conv_alpha is None else float(conv_alpha)
    else:
        conv_dim, conv_alpha = None, None
    options = {
        "dropout": _check_probability("network_dropout", dropout),
        "rank_dropout": _check_probability("rank_dropout", rank_dropout),
        "module_dropout": _check_probability("module_dropout", module_dropout),
        "multiplier": multiplier,
        "generator": generator,
    }
    if parts is None:
        parts = keys.default_parts(unet, text_encoder)
    parts = [p for p in parts if (train_unet if p.is_unet else train_text_encoder)]
    if not parts:
        raise ConfigError("The network would train nothing: enable the UNet or the text encoder.")
    plan = BlockPlan.from_args(extra, dim, alpha, conv_dim, conv_alpha, block_layout)

    def build(part: keys.NetworkPart, targets: list[keys.Target], unet_side: bool) -> list[NetworkModule]:
        modules = []
        for t in targets:
            size, weight = plan.size_and_weight(t, unet_side)
            if part.plan is not None:
                size = part.plan.size(t.lora_name, size, unet_side)
            if not size[0]:
                continue
            split = part.plan.split_dims(t.lora_name, t.module) if part.plan is not None else None
            if split:
                module = SplitLoRAModule(t.lora_name, t.module, size[0], split, size[1], **options)
            else:
                module = LoRAModule(t.lora_name, t.module, size[0], size[1], **options)
            module.lr_weight = weight
            _set_plan_lr(module, part)
            modules.append(module)
        return modules

    te_modules = {p.name: build(p, p.targets(), False) for p in parts if not p.is_unet}
    unet_modules = [m for p in parts if p.is_unet for m in build(p, p.targets(plan.uses_conv), True)]
    info = {
        "dim": dim,
        "alpha": alpha,
        "conv_dim": conv_dim,
        "conv_alpha": conv_alpha,
        **extra,
        "block_lr_weights": plan.lr_weights,
    }
    info.update({k: v for k, v in options.items() if k != "generator"})
    logger.info("LoRA: %d text-encoder modules, %d UNet modules", sum(map(len, te_modules.values())),
                len(unet_modules))
    if any(getattr(p.plan, "verbose", False) for p in parts):
        for module in [*(m for ms in te_modules.values() for m in ms), *unet_modules]:
            logger.info("  %-60s rank %d, alpha %g", module.lora_name, module.lora_dim, float(module.alpha))
    return LoRANetwork(te_modules, unet_modules, multiplier=multiplier, info=info)


def network_from_weights(
    source,
    unet: nn.Module | None,
    text_encoder: nn.Module | None,
    *,
    multiplier: float = 1.0,
    dropout: float | None = None,
    rank_dropout: float | None = None,
    module_dropout: float | None = None,
    train_unet: bool = True,
    train_text_encoder: bool = True,
    parts: list[keys.NetworkPart] | None = None,
    **_ignored,
) -> tuple[LoRANetwork, LoadReport]:
    """Build a network sized from a LoRA file (ours or sd-scripts') and load its weights.

    Each module's rank comes from its ``lora_down`` and its alpha from the file (alpha = rank when
    absent). File modules that match no layer of the model are listed in the report's ``unexpected``.
    """
    from library.networks.foreign import to_contract

    if parts is None:
        parts = keys.default_parts(unet, text_encoder)
    parts = [p for p in parts if (train_unet if p.is_unet else train_text_encoder)]
    state_dict, description = read_state_dict(source)
    widths = {t.lora_name: t.module.out_features for p in parts for t in p.targets(include_conv_blocks=True)
              if isinstance(t.module, nn.Linear)}
    state_dict = to_contract(state_dict, description, widths, source=source)
    grouped = group_by_module(state_dict)
    options = {"dropout": dropout, "rank_dropout": rank_dropout, "module_dropout": module_dropout}
    modules: dict[str, list[LoRAModule]] = {p.name: [] for p in parts}
    for part in parts:
        for target in part.targets(include_conv_blocks=True):
            entries = grouped.get(target.lora_name)
            if entries is None or keys.DOWN_SUFFIX not in entries:
                continue
            rank = entries[keys.DOWN_SUFFIX].shape[0]
            alpha = entries.get(keys.ALPHA_SUFFIX)
            module = LoRAModule(target.lora_name, target.module, rank, float(alpha) if alpha is not None else rank,
                                multiplier, **options)
            _set_plan_lr(module, part)
            modules[part.name].append(module)
    if not any(modules.values()):
        raise ModelLoadError(
            f"No module of {description} matches this model (e.g. {next(iter(grouped), 'no keys')}). "
            "Is it a LoRA for another model family (SD1/SD2 vs SDXL, SD3, Flux) or a LyCORIS file (LoHa/LoKr)?"
        )
    info = {"dim": _most_common_rank(modules, False), "conv_dim": _most_common_rank(modules, True), **options}
    unet_modules = modules.pop("unet", [])
    network = LoRANetwork(modules, unet_modules, multiplier=multiplier, info=info)
    report = network.load_weights(state_dict)
    report.source = description
    return network, report


def _set_plan_lr(module: NetworkModule, part: keys.NetworkPart) -> None:
    """The learning rate the family's plan gives this module (FLUX's ``network_reg_lrs``), if any."""
    lr = part.plan.learning_rate(module.lora_name) if part.plan is not None else None
    if lr is not None:
        module.plan_lr = lr


def _most_common_rank(modules: dict, conv: bool) -> int | None:
    ranks = [
        m.lora_dim
        for m in (m for ms in modules.values() for m in ms)
        if (m.is_conv and m.lora_down.kernel_size != (1, 1)) == conv
    ]
    return collections.Counter(ranks).most_common(1)[0][0] if ranks else None
