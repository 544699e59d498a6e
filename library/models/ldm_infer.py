"""Infer diffusers configs from the tensor shapes and key counts of a foreign LDM / SGM single file.

Input state dicts here have their ``model.diffusion_model.`` / ``first_stage_model.`` prefix
already removed. What shapes cannot tell (norm groups, sample size) takes SD's values.
"""

from __future__ import annotations

import re

import torch

from library.errors import ModelLoadError
from library.models.families import heads_dim64


def _indices(state: dict[str, torch.Tensor], pattern: str) -> list[int]:
    regex = re.compile(pattern)
    found = {int(m.group(1)) for k in state if (m := regex.match(k))}
    return sorted(found)


def infer_unet_config(state: dict[str, torch.Tensor], heads_rule, sample_size: int = 64) -> dict:
    """UNet2DConditionModel config from LDM ``model.diffusion_model.*`` keys (prefix stripped).

    Levels and layers per block come from the ``input_blocks`` numbering and the first
    downsampler (``.op``); channels from resnet output convs; attention per level from
    ``proj_in``; context dim from ``attn2.to_k``; linear vs conv projection from ``proj_in``'s
    rank; heads per level from ``heads_rule(channels)``.
    """
    inputs = _indices(state, r"^input_blocks\.(\d+)\.")
    if not inputs or "input_blocks.0.0.weight" not in state:
        raise ModelLoadError("the UNet has no input_blocks.0.0 (conv_in) weight: not an SD UNet")
    ops = _indices(state, r"^input_blocks\.(\d+)\.0\.op\.weight$")
    layers = (ops[0] - 1) if ops else (len(inputs) - 1)
    n_levels = len(inputs) // (layers + 1)
    channels, down_types, heads = [], [], []
    proj_in = None
    for level in range(n_levels):
        first = 1 + level * (layers + 1)
        channels.append(int(state[f"input_blocks.{first}.0.out_layers.3.weight"].shape[0]))
        has_attention = f"input_blocks.{first}.1.proj_in.weight" in state
        down_types.append("CrossAttnDownBlock2D" if has_attention else "DownBlock2D")
        if has_attention:
            proj_in = proj_in if proj_in is not None else state[f"input_blocks.{first}.1.proj_in.weight"]
        heads.append(heads_rule(channels[-1]))
    up_types = []
    for i in range(n_levels):
        has_attention = f"output_blocks.{i * (layers + 1)}.1.proj_in.weight" in state
        up_types.append("CrossAttnUpBlock2D" if has_attention else "UpBlock2D")
    context_keys = [k for k in state if k.endswith("attn2.to_k.weight")]
    if proj_in is None or not context_keys:
        raise ModelLoadError("the UNet has no cross-attention layers: not a text-conditioned SD UNet")
    blocks = _indices(state, r"^input_blocks\.1\.1\.transformer_blocks\.(\d+)\.")
    return {
        "sample_size": sample_size,
        "in_channels": int(state["input_blocks.0.0.weight"].shape[1]),
        "out_channels": int(state["out.2.weight"].shape[0]),
        "down_block_types": down_types,
        "up_block_types": up_types,
        "block_out_channels": channels,
        "layers_per_block": layers,
        "cross_attention_dim": int(state[context_keys[0]].shape[1]),
        "attention_head_dim": heads,
        "use_linear_projection": proj_in.ndim == 2,
        "transformer_layers_per_block": max(1, len(blocks)),
    }


def infer_vae_config(state: dict[str, torch.Tensor], sample_size: int = 512) -> dict:
    """AutoencoderKL config from LDM ``first_stage_model.*`` keys (prefix stripped)."""
    levels = _indices(state, r"^encoder\.down\.(\d+)\.")
    if not levels or "decoder.conv_in.weight" not in state:
        raise ModelLoadError("the VAE has no encoder.down.* / decoder.conv_in weights: not an SD VAE")
    layers = len(_indices(state, r"^encoder\.down\.0\.block\.(\d+)\."))
    channels = [int(state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0]) for i in levels]
    return {
        "in_channels": int(state["encoder.conv_in.weight"].shape[1]),
        "out_channels": int(state["decoder.conv_out.weight"].shape[0]),
        "down_block_types": ["DownEncoderBlock2D"] * len(levels),
        "up_block_types": ["UpDecoderBlock2D"] * len(levels),
        "block_out_channels": channels,
        "layers_per_block": layers,
        "latent_channels": int(state["decoder.conv_in.weight"].shape[1]),
        "sample_size": sample_size,
        "scaling_factor": 0.18215,
        "use_quant_conv": "quant_conv.weight" in state,
        "use_post_quant_conv": "post_quant_conv.weight" in state,
    }


#: SDXL's size-conditioning embedding: 6 numbers (original size, crop top-left, target size), each
#: embedded with ``addition_time_embed_dim`` sinusoids; SDXL base uses 256.
SDXL_TIME_IDS = 6
SDXL_TIME_EMBED_DIM = 256


def infer_sdxl_unet_config(
    state: dict[str, torch.Tensor], pooled_dim: int | None = None, sample_size: int = 128
) -> dict:
    """UNet2DConditionModel config of an SDXL UNet from SGM ``model.diffusion_model.*`` keys (prefix stripped).

    On top of :func:`infer_unet_config` (64 channels per head, at least 1): the transformer depth of
    each level from the ``input_blocks.{i}.1.transformer_blocks.N`` numbering of its first block (1
    for levels without attention, as diffusers' SDXL config writes), and the ``text_time`` addition
    embedding. ``label_emb.0.0.weight`` is (time_embed_dim, 6 * addition_time_embed_dim + pooled_dim);
    ``pooled_dim`` is the second text encoder's projection_dim. Without it SDXL's 256 is assumed.
    """
    if "label_emb.0.0.weight" not in state:
        raise ModelLoadError(
            "the UNet has no label_emb.0.0 (size/pooled-text embedding) weight: not an SDXL UNet"
        )
    config = infer_unet_config(state, heads_dim64, sample_size)
    layers = config["layers_per_block"]
    depths = []
    for level, block_type in enumerate(config["down_block_types"]):
        first = 1 + level * (layers + 1)
        blocks = _indices(state, rf"^input_blocks\.{first}\.1\.transformer_blocks\.(\d+)\.")
        depths.append(len(blocks) if "CrossAttn" in block_type else 1)
    add_in = int(state["label_emb.0.0.weight"].shape[1])
    if pooled_dim is None:
        time_dim = SDXL_TIME_EMBED_DIM
    else:
        time_dim, rest = divmod(add_in - pooled_dim, SDXL_TIME_IDS)
        if rest or time_dim <= 0:
            raise ModelLoadError(
                f"the UNet's label_emb.0.0 takes {add_in} inputs, which is not 6 * n + {pooled_dim} "
                "(the second text encoder's projection): the UNet and text encoder do not belong together"
            )
    config.update(
        transformer_layers_per_block=depths,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=add_in,
    )
    return config
