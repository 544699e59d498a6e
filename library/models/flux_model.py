"""The FLUX.1 transformer in Black Forest Labs' module layout, and the latent packing it works on.

Module names are BFL's (``black-forest-labs/flux`` ``src/flux/model.py`` / ``modules/layers.py``, the same
as sd-scripts' ``library/flux_models.py``): ``img_in``, ``txt_in``, ``time_in.in_layer``, ``vector_in``,
``guidance_in``, ``double_blocks.N.{img_mod.lin, img_attn.qkv, img_attn.norm.query_norm.scale, img_attn.proj,
img_mlp.0, img_mlp.2, txt_…}``, ``single_blocks.N.{linear1, linear2, norm.*, modulation.lin}``,
``final_layer.{adaLN_modulation.1, linear}``. So a BFL single file loads by name, and sd-scripts' FLUX LoRA
names (``lora_unet_double_blocks_0_img_attn_qkv``) are the dotted paths of our ``nn.Linear`` modules.

The math follows BFL's reference code: RoPE over 3 id axes, QK RMS norm, modulation (shift, scale, gate),
double-stream blocks (joint attention over text + image), single-stream blocks (parallel attention + MLP),
timesteps in [0, 1] scaled by 1000 inside :func:`timestep_embedding` (the guidance value as given, e.g. 3.5,
is scaled the same way). An optional text attention mask (sd-scripts' ``apply_t5_attn_mask``) masks padded
T5 tokens as keys.

Per-block hooks: :class:`FluxTransformer` calls ``block_hook(kind, index)`` (``kind`` is ``"double"`` or
``"single"``) before it runs each block, in forward order, outside any gradient checkpointing (so it is not
called again when a checkpointed block is recomputed in the backward pass). A block swapper uses it to wait
for block ``index`` to be on the device and to send block ``index - 1`` back; backward-pass moves belong on the
blocks' own module hooks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

#: FLUX's AutoencoderKL (``ae.safetensors``): latents for the transformer are (z - shift) * scale.
FLUX_VAE_SCALING_FACTOR = 0.3611
FLUX_VAE_SHIFT_FACTOR = 0.1159
FLUX_LATENT_CHANNELS = 16
#: width of the sinusoidal timestep / guidance embedding fed to ``time_in`` and ``guidance_in``
TIME_EMBED_DIM = 256

BlockHook = Callable[[str, int], None]


@dataclass(frozen=True)
class FluxParams:
    """Shape of a FLUX.1 transformer (BFL's ``FluxParams``); ``out_channels`` equals ``in_channels``.

    ``in_channels``: packed latent channels (16 VAE channels x 2 x 2 patch = 64); ``vec_in_dim``: CLIP-L pooled
    width; ``context_in_dim``: T5 hidden width; ``axes_dim``: RoPE widths of the 3 id axes, summing to the head
    width ``hidden_size // num_heads``; ``guidance_embed``: True for the guidance-distilled dev model.
    """

    in_channels: int = 64
    vec_in_dim: int = 768
    context_in_dim: int = 4096
    hidden_size: int = 3072
    mlp_ratio: float = 4.0
    num_heads: int = 24
    depth: int = 19
    depth_single_blocks: int = 38
    axes_dim: tuple[int, ...] = field(default=(16, 56, 56))
    theta: int = 10_000
    qkv_bias: bool = True
    guidance_embed: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden_dim(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)


FLUX_DEV_PARAMS = FluxParams(guidance_embed=True)
FLUX_SCHNELL_PARAMS = FluxParams(guidance_embed=False)
#: the suite's tiny FLUX (library.models.tiny_flux): 64 wide, 2 heads of 32, 3 double + 6 single blocks
TINY_FLUX_PARAMS = FluxParams(
    in_channels=64,
    vec_in_dim=32,
    context_in_dim=32,
    hidden_size=64,
    mlp_ratio=4.0,
    num_heads=2,
    depth=3,
    depth_single_blocks=6,
    axes_dim=(4, 14, 14),
    guidance_embed=True,
)
FLUX_PRESETS = {"dev": FLUX_DEV_PARAMS, "schnell": FLUX_SCHNELL_PARAMS, "tiny": TINY_FLUX_PARAMS}


def default_axes_dim(head_dim: int) -> tuple[int, int, int]:
    """RoPE axis widths for a head width, in FLUX's proportions 1:7:7 of 16 (128 -> (16, 56, 56)).

    The weights do not record ``axes_dim``; this rule gives FLUX's value and the tiny model's (32 -> 4, 14, 14).
    """
    if head_dim % 16:
        raise ValueError(f"head width {head_dim} is not a multiple of 16; give axes_dim explicitly")
    unit = head_dim // 16
    return (2 * unit, 7 * unit, 7 * unit)


# -- math (BFL src/flux/math.py) ---------------------------------------------------------------------------


def rope(pos: Tensor, dim: int, theta: int) -> Tensor:
    """Rotation matrices for positions ``pos`` (B, L): (B, L, dim/2, 2, 2), float32."""
    if dim % 2:
        raise ValueError(f"RoPE axis width {dim} must be even")
    scale = torch.arange(0, dim, 2, dtype=torch.float64, device=pos.device) / dim
    omega = 1.0 / (theta**scale)
    angles = pos.to(torch.float64)[..., None] * omega
    cos, sin = torch.cos(angles), torch.sin(angles)
    out = torch.stack([cos, -sin, sin, cos], dim=-1)
    return out.reshape(*out.shape[:-1], 2, 2).float()


def apply_rope(xq: Tensor, xk: Tensor, freqs: Tensor) -> tuple[Tensor, Tensor]:
    """Rotate consecutive channel pairs of q and k (B, H, L, D) by ``freqs`` (B, 1, L, D/2, 2, 2)."""
    xq_ = xq.float().reshape(*xq.shape[:-1], -1, 1, 2)
    xk_ = xk.float().reshape(*xk.shape[:-1], -1, 1, 2)
    xq_out = freqs[..., 0] * xq_[..., 0] + freqs[..., 1] * xq_[..., 1]
    xk_out = freqs[..., 0] * xk_[..., 0] + freqs[..., 1] * xk_[..., 1]
    return xq_out.reshape(*xq.shape).type_as(xq), xk_out.reshape(*xk.shape).type_as(xk)


def attention(q: Tensor, k: Tensor, v: Tensor, pe: Tensor, attn_mask: Tensor | None = None) -> Tensor:
    """RoPE then scaled dot-product attention: q, k, v (B, H, L, D) -> (B, L, H*D)."""
    q, k = apply_rope(q, k, pe)
    x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    b, h, length, d = x.shape
    return x.transpose(1, 2).reshape(b, length, h * d)


def timestep_embedding(t: Tensor, dim: int, max_period: int = 10_000, time_factor: float = 1000.0) -> Tensor:
    """Sinusoidal embedding (N, dim), cos then sin, of ``time_factor * t`` for t (N,) (BFL's layers.py)."""
    t = time_factor * t
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    if torch.is_floating_point(t):
        embedding = embedding.to(t)
    return embedding


def _split_heads(qkv: Tensor, num_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """(B, L, 3*H*D) -> q, k, v each (B, H, L, D) (BFL's ``B L (K H D) -> K B H L D``)."""
    b, length, _ = qkv.shape
    qkv = qkv.reshape(b, length, 3, num_heads, -1).permute(2, 0, 3, 1, 4)
    return qkv[0], qkv[1], qkv[2]


def _key_mask(txt_attention_mask: Tensor | None, total_length: int) -> Tensor | None:
    """Boolean key mask (B, 1, 1, L_txt + L_img) from the text mask (B, L_txt); image tokens always attend."""
    if txt_attention_mask is None:
        return None
    mask = txt_attention_mask.to(torch.bool)
    pad = torch.ones(mask.shape[0], total_length - mask.shape[1], dtype=torch.bool, device=mask.device)
    return torch.cat([mask, pad], dim=1)[:, None, None, :]


# -- layers (BFL src/flux/modules/layers.py) ---------------------------------------------------------------


class EmbedND(nn.Module):
    """RoPE for ids (B, L, n_axes): (B, 1, L, head_dim/2, 2, 2)."""

    def __init__(self, dim: int, theta: int, axes_dim: tuple[int, ...]):
        super().__init__()
        self.dim = dim
        self.theta = theta
        self.axes_dim = tuple(axes_dim)

    def forward(self, ids: Tensor) -> Tensor:
        parts = [rope(ids[..., i], self.axes_dim[i], self.theta) for i in range(ids.shape[-1])]
        return torch.cat(parts, dim=-3).unsqueeze(1)


class MLPEmbedder(nn.Module):
    def __init__(self, in_dim: int, hidden_dim: int):
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden_dim, bias=True)
        self.silu = nn.SiLU()
        self.out_layer = nn.Linear(hidden_dim, hidden_dim, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_layer(self.silu(self.in_layer(x)))


class RMSNorm(nn.Module):
    """RMS norm over the last axis, computed in float32, with a learned ``scale`` (eps 1e-6)."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x_dtype = x.dtype
        x = x.float()
        rrms = torch.rsqrt(torch.mean(x**2, dim=-1, keepdim=True) + 1e-6)
        return (x * rrms).to(dtype=x_dtype) * self.scale


class QKNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.query_norm = RMSNorm(dim)
        self.key_norm = RMSNorm(dim)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        return self.query_norm(q).to(v), self.key_norm(k).to(v)


class SelfAttention(nn.Module):
    """Holds a stream's ``qkv``, ``norm`` and ``proj``; the double block runs the joint attention itself."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.norm = QKNorm(dim // num_heads)
        self.proj = nn.Linear(dim, dim)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, L, dim) -> normed q, k and v, each (B, H, L, D)."""
        q, k, v = _split_heads(self.qkv(x), self.num_heads)
        q, k = self.norm(q, k, v)
        return q, k, v


@dataclass
class ModulationOut:
    shift: Tensor
    scale: Tensor
    gate: Tensor

    def modulate(self, x: Tensor) -> Tensor:
        return (1 + self.scale) * x + self.shift


class Modulation(nn.Module):
    """``lin(silu(vec))`` split into (shift, scale, gate) once (single block) or twice (double block)."""

    def __init__(self, dim: int, double: bool):
        super().__init__()
        self.is_double = double
        self.multiplier = 6 if double else 3
        self.lin = nn.Linear(dim, self.multiplier * dim, bias=True)

    def forward(self, vec: Tensor) -> tuple[ModulationOut, ModulationOut | None]:
        out = self.lin(F.silu(vec))[:, None, :].chunk(self.multiplier, dim=-1)
        return ModulationOut(*out[:3]), (ModulationOut(*out[3:]) if self.is_double else None)


def _mlp(hidden_size: int, mlp_hidden_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(hidden_size, mlp_hidden_dim, bias=True),
        nn.GELU(approximate="tanh"),
        nn.Linear(mlp_hidden_dim, hidden_size, bias=True),
    )


class DoubleStreamBlock(nn.Module):
    """Separate weights for the image and text streams, one joint attention over [text, image]."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, qkv_bias: bool):
        super().__init__()
        mlp_hidden_dim = int(hidden_size * mlp_ratio)
        self.num_heads = num_heads
        self.hidden_size = hidden_size
        self.img_mod = Modulation(hidden_size, double=True)
        self.img_norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.img_attn = SelfAttention(hidden_size, num_heads, qkv_bias)
        self.img_norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.img_mlp = _mlp(hidden_size, mlp_hidden_dim)
        self.txt_mod = Modulation(hidden_size, double=True)
        self.txt_norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.txt_attn = SelfAttention(hidden_size, num_heads, qkv_bias)
        self.txt_norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.txt_mlp = _mlp(hidden_size, mlp_hidden_dim)

    def forward(
        self, img: Tensor, txt: Tensor, vec: Tensor, pe: Tensor, txt_attention_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        img_mod1, img_mod2 = self.img_mod(vec)
        txt_mod1, txt_mod2 = self.txt_mod(vec)
        img_q, img_k, img_v = self.img_attn.project(img_mod1.modulate(self.img_norm1(img)))
        txt_q, txt_k, txt_v = self.txt_attn.project(txt_mod1.modulate(self.txt_norm1(txt)))
        q = torch.cat((txt_q, img_q), dim=2)
        k = torch.cat((txt_k, img_k), dim=2)
        v = torch.cat((txt_v, img_v), dim=2)
        attn = attention(q, k, v, pe, _key_mask(txt_attention_mask, q.shape[2]))
        txt_attn, img_attn = attn[:, : txt.shape[1]], attn[:, txt.shape[1] :]

        img = img + img_mod1.gate * self.img_attn.proj(img_attn)
        img = img + img_mod2.gate * self.img_mlp(img_mod2.modulate(self.img_norm2(img)))
        txt = txt + txt_mod1.gate * self.txt_attn.proj(txt_attn)
        txt = txt + txt_mod2.gate * self.txt_mlp(txt_mod2.modulate(self.txt_norm2(txt)))
        return img, txt


class SingleStreamBlock(nn.Module):
    """Parallel attention and MLP over the joined sequence (https://arxiv.org/abs/2302.05442): ``linear1``
    gives qkv and the MLP input, ``linear2`` takes [attention, gelu(mlp)]."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.mlp_hidden_dim = int(hidden_size * mlp_ratio)
        self.linear1 = nn.Linear(hidden_size, hidden_size * 3 + self.mlp_hidden_dim)
        self.linear2 = nn.Linear(hidden_size + self.mlp_hidden_dim, hidden_size)
        self.norm = QKNorm(hidden_size // num_heads)
        self.pre_norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp_act = nn.GELU(approximate="tanh")
        self.modulation = Modulation(hidden_size, double=False)

    def forward(self, x: Tensor, vec: Tensor, pe: Tensor, txt_attention_mask: Tensor | None = None) -> Tensor:
        mod, _ = self.modulation(vec)
        qkv, mlp = torch.split(
            self.linear1(mod.modulate(self.pre_norm(x))), [3 * self.hidden_size, self.mlp_hidden_dim], dim=-1
        )
        q, k, v = _split_heads(qkv, self.num_heads)
        q, k = self.norm(q, k, v)
        attn = attention(q, k, v, pe, _key_mask(txt_attention_mask, x.shape[1]))
        output = self.linear2(torch.cat((attn, self.mlp_act(mlp)), 2))
        return x + mod.gate * output


class LastLayer(nn.Module):
    """Final norm modulated by (shift, scale) = ``adaLN_modulation(vec)``, then the patch projection."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: Tensor, vec: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(vec).chunk(2, dim=1)
        x = (1 + scale[:, None, :]) * self.norm_final(x) + shift[:, None, :]
        return self.linear(x)


# -- the model (BFL src/flux/model.py) ---------------------------------------------------------------------


class FluxTransformer(nn.Module):
    """FLUX.1 flow-matching transformer on packed latents (BFL's ``Flux``).

    Attributes the trainer sets: ``gradient_checkpointing`` (bool; each block is checkpointed while grad is
    enabled), ``cpu_offload_checkpointing`` (bool; with checkpointing, the activations kept between blocks live
    on the host: each block gets its inputs moved to its own device and hands its outputs back on the CPU, as
    sd-scripts' ``cpu_offload_checkpointing``), ``block_hook`` (``(kind, index) -> None`` or None; see the
    module docstring).
    """

    def __init__(self, params: FluxParams):
        super().__init__()
        if params.hidden_size % params.num_heads:
            raise ValueError(
                f"hidden_size {params.hidden_size} is not divisible by num_heads {params.num_heads}"
            )
        if sum(params.axes_dim) != params.head_dim:
            raise ValueError(f"axes_dim {list(params.axes_dim)} must sum to the head width {params.head_dim}")
        self.params = params
        self.in_channels = params.in_channels
        self.out_channels = params.in_channels
        self.hidden_size = params.hidden_size
        self.num_heads = params.num_heads
        self.pe_embedder = EmbedND(params.head_dim, params.theta, params.axes_dim)
        self.img_in = nn.Linear(self.in_channels, self.hidden_size, bias=True)
        self.time_in = MLPEmbedder(TIME_EMBED_DIM, self.hidden_size)
        self.vector_in = MLPEmbedder(params.vec_in_dim, self.hidden_size)
        self.guidance_in = (
            MLPEmbedder(TIME_EMBED_DIM, self.hidden_size) if params.guidance_embed else nn.Identity()
        )
        self.txt_in = nn.Linear(params.context_in_dim, self.hidden_size)
        self.double_blocks = nn.ModuleList(
            DoubleStreamBlock(self.hidden_size, self.num_heads, params.mlp_ratio, params.qkv_bias)
            for _ in range(params.depth)
        )
        self.single_blocks = nn.ModuleList(
            SingleStreamBlock(self.hidden_size, self.num_heads, params.mlp_ratio)
            for _ in range(params.depth_single_blocks)
        )
        self.final_layer = LastLayer(self.hidden_size, 1, self.out_channels)
        self.gradient_checkpointing = False
        self.cpu_offload_checkpointing = False
        self.block_hook: BlockHook | None = None

    @property
    def device(self) -> torch.device:
        """Where the transformer computes (its final layer's device; swapped blocks may sit on the host)."""
        return self.final_layer.linear.bias.device

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype (the final layer's bias: fp8 storage keeps biases in it)."""
        return self.final_layer.linear.bias.dtype

    @property
    def guidance_embed(self) -> bool:
        return self.params.guidance_embed

    def enable_gradient_checkpointing(self, enabled: bool = True, cpu_offload: bool = False) -> None:
        self.gradient_checkpointing = enabled
        self.cpu_offload_checkpointing = enabled and cpu_offload

    def _run_block(self, kind: str, index: int, block: nn.Module, *args: Tensor | None):
        if self.block_hook is not None:
            self.block_hook(kind, index)
        if not (self.gradient_checkpointing and torch.is_grad_enabled()):
            return block(*args)
        if self.cpu_offload_checkpointing:
            return checkpoint(_offloaded(block), *args, use_reentrant=False)
        return checkpoint(block, *args, use_reentrant=False)

    def forward(
        self,
        img: Tensor,
        img_ids: Tensor,
        txt: Tensor,
        txt_ids: Tensor,
        timesteps: Tensor,
        y: Tensor,
        guidance: Tensor | None = None,
        txt_attention_mask: Tensor | None = None,
    ) -> Tensor:
        """Predict the packed velocity.

        img (B, L_img, in_channels) packed latents; img_ids (B, L_img, 3); txt (B, L_txt, context_in_dim) T5
        states; txt_ids (B, L_txt, 3) zeros; timesteps (B,) in [0, 1] (sigma); y (B, vec_in_dim) CLIP pooled;
        guidance (B,) the distilled guidance scale (dev only, e.g. 3.5); txt_attention_mask (B, L_txt) 1 for
        real tokens. Returns (B, L_img, in_channels).
        """
        if img.ndim != 3 or txt.ndim != 3:
            raise ValueError(f"img and txt must be (B, L, C); got {tuple(img.shape)} and {tuple(txt.shape)}")
        img = self.img_in(img)
        vec = self.time_in(timestep_embedding(timesteps, TIME_EMBED_DIM).to(img.dtype))
        if self.params.guidance_embed:
            if guidance is None:
                raise ValueError("this FLUX model is guidance-distilled (dev): pass a guidance value")
            vec = vec + self.guidance_in(timestep_embedding(guidance, TIME_EMBED_DIM).to(img.dtype))
        vec = vec + self.vector_in(y)
        txt = self.txt_in(txt)
        pe = self.pe_embedder(torch.cat((txt_ids, img_ids), dim=1))

        for index, block in enumerate(self.double_blocks):
            img, txt = self._run_block("double", index, block, img, txt, vec, pe, txt_attention_mask)
        x = torch.cat((txt, img), 1)
        for index, block in enumerate(self.single_blocks):
            x = self._run_block("single", index, block, x, vec, pe, txt_attention_mask)
        x = x[:, txt.shape[1] :, ...]
        if self.cpu_offload_checkpointing:
            x = x.to(vec.device)
        return self.final_layer(x, vec)


def _to_device(values, device):
    """Tensors of a tuple (or one tensor) moved to ``device``; other values as they are."""
    if isinstance(values, Tensor):
        return values.to(device)
    return tuple(v.to(device) if isinstance(v, Tensor) else v for v in values)


def _offloaded(block: nn.Module):
    """``block`` as a function that runs on the block's device and returns its outputs on the CPU."""

    def run(*args):
        device = next(block.parameters()).device
        return _to_device(block(*_to_device(args, device)), "cpu")

    return run


# -- latents -----------------------------------------------------------------------------------------------


def pack_latents(latents: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, C*4): 2x2 patches, row-major, channels then patch row then column
    (BFL's ``b c (h ph) (w pw) -> b (h w) (c ph pw)``, diffusers' ``FluxPipeline._pack_latents``)."""
    b, c, h, w = latents.shape
    if h % 2 or w % 2:
        raise ValueError(f"latent height and width must be even to pack 2x2 patches; got {h}x{w}")
    x = latents.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(packed: Tensor, height: int, width: int) -> Tensor:
    """Inverse of :func:`pack_latents`: (B, H/2 * W/2, C*4) -> (B, C, H, W), H and W in latent pixels."""
    b, length, d = packed.shape
    if height % 2 or width % 2 or length != (height // 2) * (width // 2):
        raise ValueError(f"cannot unpack {length} tokens into a {height}x{width} latent")
    x = packed.reshape(b, height // 2, width // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, height, width)


def image_ids(batch_size: int, height: int, width: int, device=None, dtype=torch.float32) -> Tensor:
    """Position ids (B, H/2 * W/2, 3) of packed tokens for an H x W latent: (0, patch row, patch column)."""
    rows, cols = height // 2, width // 2
    ids = torch.zeros(rows, cols, 3, device=device, dtype=dtype)
    ids[..., 1] = torch.arange(rows, device=device, dtype=dtype)[:, None]
    ids[..., 2] = torch.arange(cols, device=device, dtype=dtype)[None, :]
    return ids.reshape(1, rows * cols, 3).expand(batch_size, -1, -1).contiguous()


def text_ids(batch_size: int, length: int, device=None, dtype=torch.float32) -> Tensor:
    """Position ids (B, L, 3) of the T5 tokens: all zeros (FLUX.1 puts no position on text in RoPE)."""
    return torch.zeros(batch_size, length, 3, device=device, dtype=dtype)


def latents_to_model(
    latents: Tensor,
    scaling_factor: float = FLUX_VAE_SCALING_FACTOR,
    shift_factor: float = FLUX_VAE_SHIFT_FACTOR,
) -> Tensor:
    """VAE latents -> the transformer's space: (z - shift_factor) * scaling_factor (BFL ``AutoEncoder.encode``)."""
    return (latents - shift_factor) * scaling_factor


def latents_from_model(
    x: Tensor, scaling_factor: float = FLUX_VAE_SCALING_FACTOR, shift_factor: float = FLUX_VAE_SHIFT_FACTOR
) -> Tensor:
    """Inverse of :func:`latents_to_model`: x / scaling_factor + shift_factor, ready for the VAE decoder."""
    return x / scaling_factor + shift_factor
