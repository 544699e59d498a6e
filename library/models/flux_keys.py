"""FLUX.1 transformer key layouts: BFL's single file <-> diffusers' ``FluxTransformer2DModel``, and detection.

BFL keys (``double_blocks.0.img_attn.qkv.weight``; some single files carry ``model.diffusion_model.`` in
front) are what :class:`library.models.flux_model.FluxTransformer` loads by name. Diffusers splits fused
projections: a double block's ``img_attn.qkv`` is ``attn.to_q/to_k/to_v``, ``txt_attn.qkv`` is
``attn.add_q_proj/add_k_proj/add_v_proj``; a single block's ``linear1`` is ``attn.to_q/to_k/to_v`` + ``proj_mlp``
(split at hidden, hidden, hidden, the rest). Diffusers' final ``norm_out.linear`` holds (scale, shift) where BFL's
``final_layer.adaLN_modulation.1`` holds (shift, scale) (diffusers' ``convert_flux_to_diffusers.py``,
``swap_scale_shift``). The tables are sd-scripts' ``BFL_TO_DIFFUSERS_MAP`` (library/flux_utils.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from library.errors import ModelLoadError
from library.models.flux_model import FluxParams, FluxTransformer, default_axes_dim

BFL_PREFIX = "model.diffusion_model."
#: a key every BFL-layout FLUX transformer has (diffusers' own detector uses the key_norm of block 0)
BFL_MARKER = "double_blocks.0.img_attn.qkv.weight"
DIFFUSERS_MARKER = "transformer_blocks.0.attn.add_k_proj.weight"
#: Chroma (a FLUX.1-schnell derivative) replaces the modulation layers by one approximator
CHROMA_MARKER = "distilled_guidance_layer.in_proj.weight"

#: BFL module -> diffusers modules fused into it (in order), outside the blocks
GLOBAL_MODULES = {
    "time_in.in_layer": ("time_text_embed.timestep_embedder.linear_1",),
    "time_in.out_layer": ("time_text_embed.timestep_embedder.linear_2",),
    "vector_in.in_layer": ("time_text_embed.text_embedder.linear_1",),
    "vector_in.out_layer": ("time_text_embed.text_embedder.linear_2",),
    "guidance_in.in_layer": ("time_text_embed.guidance_embedder.linear_1",),
    "guidance_in.out_layer": ("time_text_embed.guidance_embedder.linear_2",),
    "txt_in": ("context_embedder",),
    "img_in": ("x_embedder",),
    "final_layer.linear": ("proj_out",),
    "final_layer.adaLN_modulation.1": ("norm_out.linear",),
}
DOUBLE_MODULES = {
    "img_mod.lin": ("norm1.linear",),
    "txt_mod.lin": ("norm1_context.linear",),
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "img_attn.proj": ("attn.to_out.0",),
    "txt_attn.proj": ("attn.to_add_out",),
    "img_mlp.0": ("ff.net.0.proj",),
    "img_mlp.2": ("ff.net.2",),
    "txt_mlp.0": ("ff_context.net.0.proj",),
    "txt_mlp.2": ("ff_context.net.2",),
}
DOUBLE_NORMS = {
    "img_attn.norm.query_norm.scale": "attn.norm_q.weight",
    "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
    "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
    "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight",
}
SINGLE_MODULES = {
    "modulation.lin": ("norm.linear",),
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
}
SINGLE_NORMS = {
    "norm.query_norm.scale": "attn.norm_q.weight",
    "norm.key_norm.scale": "attn.norm_k.weight",
}
FINAL_MODULATION = "final_layer.adaLN_modulation.1"
_BLOCK_KEY = re.compile(
    r"^(double_blocks|single_blocks|transformer_blocks|single_transformer_blocks)\.(\d+)\."
)


class FluxKeyError(ModelLoadError):
    """A state dict does not have the FLUX layout a conversion expects (names the keys)."""


def strip_bfl_prefix(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The transformer's tensors without ``model.diffusion_model.``.

    When any key has the prefix, only those keys are kept: an all-in-one checkpoint (ComfyUI's
    ``model.diffusion_model.*`` + ``vae.*`` + ``text_encoders.*``) gives its transformer alone.
    """
    if any(k.startswith(BFL_PREFIX) for k in state):
        return {k[len(BFL_PREFIX) :]: v for k, v in state.items() if k.startswith(BFL_PREFIX)}
    return dict(state)


def _bare(keys: Iterable[str]) -> set[str]:
    return {k[len(BFL_PREFIX) :] if k.startswith(BFL_PREFIX) else k for k in keys}


def is_bfl_flux(keys: Iterable[str]) -> bool:
    """True for a FLUX.1 transformer in BFL's layout (with or without ``model.diffusion_model.``), Chroma too."""
    return BFL_MARKER in _bare(keys)


def is_diffusers_flux(keys: Iterable[str]) -> bool:
    """True for a diffusers ``FluxTransformer2DModel`` state dict."""
    keys = set(keys)
    return DIFFUSERS_MARKER in keys and "x_embedder.weight" in keys


def flux_variant(keys: Iterable[str]) -> str:
    """``"dev"`` (has the guidance embedder), ``"schnell"`` (has none) or ``"chroma"``, for BFL or diffusers keys."""
    keys = _bare(keys)
    if CHROMA_MARKER in keys:
        return "chroma"
    has_guidance = (
        "guidance_in.in_layer.weight" in keys or "time_text_embed.guidance_embedder.linear_1.weight" in keys
    )
    return "dev" if has_guidance else "schnell"


def count_blocks(keys: Iterable[str]) -> tuple[int, int]:
    """(double, single) block counts from BFL or diffusers keys (highest index + 1)."""
    double, single = -1, -1
    for key in _bare(keys):
        match = _BLOCK_KEY.match(key)
        if match:
            index = int(match.group(2))
            if match.group(1) in ("double_blocks", "transformer_blocks"):
                double = max(double, index)
            else:
                single = max(single, index)
    return double + 1, single + 1


def _require(state: Mapping[str, Tensor], key: str, what: str) -> Tensor:
    if key not in state:
        raise FluxKeyError(f"{what}: no {key!r} in the state dict; it is not a complete FLUX.1 transformer")
    return state[key]


def params_from_bfl_state(state: Mapping[str, Tensor], axes_dim: tuple[int, ...] | None = None) -> FluxParams:
    """The :class:`FluxParams` of a BFL-layout state dict, from its tensor shapes.

    ``axes_dim`` is not in the weights; by default :func:`default_axes_dim` of the head width (FLUX: 16, 56, 56).
    """
    state = strip_bfl_prefix(state)
    what = "FLUX transformer"
    img_in = _require(state, "img_in.weight", what)
    hidden = img_in.shape[0]
    head_dim = _require(state, "double_blocks.0.img_attn.norm.query_norm.scale", what).shape[0]
    double, single = count_blocks(state)
    return FluxParams(
        in_channels=img_in.shape[1],
        vec_in_dim=_require(state, "vector_in.in_layer.weight", what).shape[1],
        context_in_dim=_require(state, "txt_in.weight", what).shape[1],
        hidden_size=hidden,
        mlp_ratio=_require(state, "double_blocks.0.img_mlp.0.weight", what).shape[0] / hidden,
        num_heads=hidden // head_dim,
        depth=double,
        depth_single_blocks=single,
        axes_dim=tuple(axes_dim) if axes_dim is not None else default_axes_dim(head_dim),
        qkv_bias="double_blocks.0.img_attn.qkv.bias" in state,
        guidance_embed="guidance_in.in_layer.weight" in state,
    )


def diffusers_config(params: FluxParams) -> dict:
    """``FluxTransformer2DModel`` config kwargs for ``params`` (diffusers has a fixed mlp ratio 4 and qkv bias)."""
    if params.mlp_ratio != 4.0 or not params.qkv_bias:
        raise FluxKeyError(
            f"diffusers' FluxTransformer2DModel has mlp_ratio 4 and qkv bias; got {params.mlp_ratio}, {params.qkv_bias}"
        )
    return {
        "patch_size": 1,
        "in_channels": params.in_channels,
        "out_channels": None,
        "num_layers": params.depth,
        "num_single_layers": params.depth_single_blocks,
        "attention_head_dim": params.head_dim,
        "num_attention_heads": params.num_heads,
        "joint_attention_dim": params.context_in_dim,
        "pooled_projection_dim": params.vec_in_dim,
        "guidance_embeds": params.guidance_embed,
        "axes_dims_rope": list(params.axes_dim),
    }


def params_from_diffusers_config(config: Mapping) -> FluxParams:
    """:class:`FluxParams` of a ``FluxTransformer2DModel`` config (dict or FrozenDict)."""
    heads, head_dim = int(config["num_attention_heads"]), int(config["attention_head_dim"])
    return FluxParams(
        in_channels=int(config["in_channels"]),
        vec_in_dim=int(config["pooled_projection_dim"]),
        context_in_dim=int(config["joint_attention_dim"]),
        hidden_size=heads * head_dim,
        mlp_ratio=4.0,
        num_heads=heads,
        depth=int(config["num_layers"]),
        depth_single_blocks=int(config["num_single_layers"]),
        axes_dim=tuple(int(a) for a in config["axes_dims_rope"]),
        qkv_bias=True,
        guidance_embed=bool(config["guidance_embeds"]),
    )


def _param_table(double: int, single: int) -> dict[str, tuple[str, ...]]:
    """BFL parameter key -> the diffusers parameter keys concatenated (dim 0) into it, for a model size."""
    table: dict[str, tuple[str, ...]] = {}

    def add_modules(bfl_prefix: str, diff_prefix: str, modules: dict[str, tuple[str, ...]]) -> None:
        for bfl, parts in modules.items():
            for leaf in ("weight", "bias"):
                table[f"{bfl_prefix}{bfl}.{leaf}"] = tuple(f"{diff_prefix}{p}.{leaf}" for p in parts)

    def add_norms(bfl_prefix: str, diff_prefix: str, norms: dict[str, str]) -> None:
        for bfl, diff in norms.items():
            table[f"{bfl_prefix}{bfl}"] = (f"{diff_prefix}{diff}",)

    add_modules("", "", GLOBAL_MODULES)
    for i in range(double):
        add_modules(f"double_blocks.{i}.", f"transformer_blocks.{i}.", DOUBLE_MODULES)
        add_norms(f"double_blocks.{i}.", f"transformer_blocks.{i}.", DOUBLE_NORMS)
    for i in range(single):
        add_modules(f"single_blocks.{i}.", f"single_transformer_blocks.{i}.", SINGLE_MODULES)
        add_norms(f"single_blocks.{i}.", f"single_transformer_blocks.{i}.", SINGLE_NORMS)
    return table


def swap_halves(tensor: Tensor) -> Tensor:
    """(a, b) -> (b, a) along dim 0: BFL's (shift, scale) <-> diffusers' (scale, shift)."""
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def diffusers_to_bfl(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A diffusers ``FluxTransformer2DModel`` state dict -> BFL keys (no prefix); every key must map."""
    double, single = count_blocks(state)
    table = _param_table(double, single)
    used: set[str] = set()
    out: dict[str, Tensor] = {}
    for bfl_key, parts in table.items():
        present = [p for p in parts if p in state]
        if not present:
            continue
        if len(present) != len(parts):
            missing = sorted(set(parts) - set(present))
            raise FluxKeyError(f"diffusers FLUX state dict: {bfl_key} needs {missing} too")
        out[bfl_key] = torch.cat([state[p] for p in parts], dim=0) if len(parts) > 1 else state[parts[0]]
        used.update(parts)
    unknown = sorted(set(state) - used)
    if unknown:
        raise FluxKeyError(
            f"diffusers FLUX state dict: {len(unknown)} keys have no BFL counterpart, e.g. {unknown[:3]}"
        )
    for leaf in ("weight", "bias"):
        key = f"{FINAL_MODULATION}.{leaf}"
        if key in out:
            out[key] = swap_halves(out[key])
    return out


def _split_sizes(bfl_key: str, tensor: Tensor, parts: tuple[str, ...], hidden: int) -> list[int]:
    """Row counts of the diffusers pieces of a fused BFL tensor: ``hidden`` each, the last takes the rest
    (q, k, v: hidden each; a single block's ``linear1``: q, k, v, then the MLP input)."""
    rest = tensor.shape[0] - hidden * (len(parts) - 1)
    if rest <= 0:
        raise FluxKeyError(
            f"BFL FLUX state dict: {bfl_key} of shape {tuple(tensor.shape)} does not split into {len(parts)} parts "
            f"of width {hidden}"
        )
    return [hidden] * (len(parts) - 1) + [rest]


def bfl_to_diffusers(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A BFL-layout FLUX transformer state dict (prefix optional) -> ``FluxTransformer2DModel`` keys.

    Fused tensors are split into views of the input (``.clone()`` them before changing them in place).
    """
    state = strip_bfl_prefix(state)
    hidden = _require(state, "img_in.weight", "BFL FLUX state dict").shape[0]
    double, single = count_blocks(state)
    table = _param_table(double, single)
    unknown = sorted(set(state) - set(table))
    if unknown:
        raise FluxKeyError(
            f"BFL FLUX state dict: {len(unknown)} keys have no diffusers counterpart, e.g. {unknown[:3]}"
        )
    out: dict[str, Tensor] = {}
    for bfl_key, tensor in state.items():
        parts = table[bfl_key]
        if bfl_key.startswith(FINAL_MODULATION):
            tensor = swap_halves(tensor)
        pieces = torch.split(tensor, _split_sizes(bfl_key, tensor, parts, hidden), dim=0)
        out.update(zip(parts, pieces, strict=True))
    return out


def to_diffusers_transformer(model):
    """A diffusers ``FluxTransformer2DModel`` with the weights of our :class:`FluxTransformer` (same dtype)."""
    from diffusers import FluxTransformer2DModel

    reference = next(model.parameters())
    with torch.device("meta"):
        out = FluxTransformer2DModel(**diffusers_config(model.params))
    state = {k: v.detach().clone() for k, v in bfl_to_diffusers(model.state_dict()).items()}
    out.load_state_dict(state, strict=True, assign=True)
    return out.to(reference.dtype)


def from_diffusers_transformer(diffusers_model):
    """Our :class:`FluxTransformer` with the weights of a diffusers ``FluxTransformer2DModel`` (unfused
    tensors are shared with it, fused ones are new)."""
    with torch.device("meta"):
        out = FluxTransformer(params_from_diffusers_config(diffusers_model.config))
    out.load_state_dict(diffusers_to_bfl(diffusers_model.state_dict()), strict=True, assign=True)
    return out


# -- sd-scripts' separate files: clip_l, t5xxl, ae ----------------------------------------------------------

#: diffusers AutoencoderKL config of FLUX.1's ae.safetensors (black-forest-labs/FLUX.1-dev vae/config.json)
FLUX_AE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 16,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "force_upcast": True,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "mid_block_add_attention": True,
}
#: CLIPTextConfig kwargs of clip_l.safetensors (OpenAI CLIP ViT-L/14 text tower, as sd-scripts' load_clip_l)
CLIP_L_CONFIG = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 768,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}
#: T5Config kwargs of t5xxl.safetensors (google/t5-v1_1-xxl encoder, as sd-scripts' load_t5xxl)
T5XXL_CONFIG = {
    "vocab_size": 32128,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "dropout_rate": 0.1,
    "layer_norm_epsilon": 1e-6,
    "feed_forward_proj": "gated-gelu",
    "dense_act_fn": "gelu_new",
    "is_gated_act": True,
    "tie_word_embeddings": False,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}
#: clip_l.safetensors keeps transformers 4's ``text_model.`` level (transformers 5's CLIPTextModel has none)
CLIP_L_FILE_PREFIX = "text_model."
T5_TIED_EMBEDDING = "encoder.embed_tokens.weight"
AE_MARKER = "encoder.down.0.block.0.norm1.weight"


def clip_l_to_file(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """CLIPTextModel state dict -> clip_l.safetensors keys (``text_model.embeddings…``)."""
    return {k if k.startswith(CLIP_L_FILE_PREFIX) else CLIP_L_FILE_PREFIX + k: v for k, v in state.items()}


def clip_l_from_file(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """clip_l.safetensors keys -> transformers 5 CLIPTextModel keys (drops ``text_model.``; a
    ``text_projection.weight`` some files carry is dropped: CLIPTextModel has no projection)."""
    out = {}
    for key, value in state.items():
        if key.startswith(CLIP_L_FILE_PREFIX):
            out[key[len(CLIP_L_FILE_PREFIX) :]] = value
        elif key != "text_projection.weight":
            out[key] = value
    return out


def t5_to_file(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """T5EncoderModel state dict -> t5xxl.safetensors keys: ``shared.weight`` once, no tied copy."""
    return {k: v for k, v in state.items() if k != T5_TIED_EMBEDDING}


def t5_from_file(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """t5xxl.safetensors keys -> T5EncoderModel keys (the embedding under ``shared.weight``)."""
    out = dict(state)
    if "shared.weight" not in out and T5_TIED_EMBEDDING in out:
        out["shared.weight"] = out[T5_TIED_EMBEDDING]
    out.pop(T5_TIED_EMBEDDING, None)
    return out


def is_bfl_ae(keys: Iterable[str]) -> bool:
    """True for BFL's ``ae.safetensors`` layout (LDM VAE keys with no ``first_stage_model.`` prefix)."""
    return AE_MARKER in set(keys)


def ae_to_file(state: Mapping[str, Tensor], vae_config: Mapping) -> dict[str, Tensor]:
    """diffusers AutoencoderKL state dict -> ae.safetensors keys (BFL's autoencoder = LDM VAE layout)."""
    from library.models.ldm_convert import vae_to_ldm

    return vae_to_ldm(dict(state), dict(vae_config))


def ae_from_file(state: Mapping[str, Tensor], vae_config: Mapping) -> dict[str, Tensor]:
    """ae.safetensors keys -> diffusers AutoencoderKL keys (attention 1x1 convs -> Linear weights)."""
    from library.models.ldm_convert import vae_from_ldm

    return vae_from_ldm(dict(state), dict(vae_config))


def load_bfl_transformer(state: Mapping[str, Tensor], params: FluxParams | None = None) -> FluxTransformer:
    """Our :class:`FluxTransformer` from a BFL-layout state dict (prefix optional; diffusers keys are converted).

    ``params`` defaults to :func:`params_from_bfl_state`. Tensors are assigned, not copied (their dtype stays);
    a missing or unexpected key is a :class:`FluxKeyError` naming them.
    """
    if is_diffusers_flux(state):
        state = diffusers_to_bfl(state)
    state = strip_bfl_prefix(state)
    params = params or params_from_bfl_state(state)
    with torch.device("meta"):
        model = FluxTransformer(params)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise FluxKeyError(
            f"FLUX transformer: {len(missing)} missing keys (e.g. {missing[:3]}) and {len(unexpected)} unexpected "
            f"keys (e.g. {unexpected[:3]}) for a {params.depth}+{params.depth_single_blocks}-block model"
        )
    model.load_state_dict(state, strict=True, assign=True)
    return model
