"""Module-prefix tables between diffusers and the original LDM (CompVis) key layout.

Each table maps a diffusers module path (e.g. ``down_blocks.0.resnets.0.norm1``) to the LDM module
path it corresponds to (``input_blocks.1.0.in_layers.0``), derived from the diffusers config so
that any UNet / VAE shape converts, not only SD1.5's. Keys are renamed by their longest mapped
prefix (at ``.`` boundaries); the part after the prefix is kept as is.
"""

from __future__ import annotations

import re

UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}
# LDM VAE attention uses 1x1 convs where diffusers uses Linear layers.
VAE_ATTN_CONV_KEY = re.compile(r"\.mid\.attn_1\.(q|k|v|proj_out)\.weight$")


def _layers_per_block(config: dict) -> int:
    layers = config["layers_per_block"]
    if isinstance(layers, (list, tuple)):
        if len(set(layers)) != 1:
            raise ValueError(f"per-block layers_per_block {layers} is not supported by the LDM converter")
        layers = layers[0]
    return int(layers)


def _add_unet_resnet(table: dict[str, str], diffusers: str, ldm: str) -> None:
    for d_name, l_name in UNET_RESNET.items():
        table[f"{diffusers}.{d_name}"] = f"{ldm}.{l_name}"


def unet_prefix_table(config: dict) -> dict[str, str]:
    """diffusers -> LDM module prefixes of a UNet2DConditionModel config (without ``model.diffusion_model.``)."""
    down_types = list(config["down_block_types"])
    up_types = list(config["up_block_types"])
    n_levels = len(down_types)
    layers = _layers_per_block(config)
    table = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
        "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2",
    }
    for i, block_type in enumerate(down_types):
        for j in range(layers):
            index = 1 + i * (layers + 1) + j
            _add_unet_resnet(table, f"down_blocks.{i}.resnets.{j}", f"input_blocks.{index}.0")
            if "CrossAttn" in block_type:
                table[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{index}.1"
        if i < n_levels - 1:
            index = 1 + i * (layers + 1) + layers
            table[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{index}.0.op"
    mid_type = config.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    if mid_type:
        _add_unet_resnet(table, "mid_block.resnets.0", "middle_block.0")
        if "CrossAttn" in mid_type:
            table["mid_block.attentions.0"] = "middle_block.1"
            _add_unet_resnet(table, "mid_block.resnets.1", "middle_block.2")
        else:
            _add_unet_resnet(table, "mid_block.resnets.1", "middle_block.1")
    for i, block_type in enumerate(up_types):
        has_attention = "CrossAttn" in block_type
        for j in range(layers + 1):
            index = i * (layers + 1) + j
            _add_unet_resnet(table, f"up_blocks.{i}.resnets.{j}", f"output_blocks.{index}.0")
            if has_attention:
                table[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{index}.1"
        if i < n_levels - 1:
            index = i * (layers + 1) + layers
            slot = 2 if has_attention else 1
            table[f"up_blocks.{i}.upsamplers.0.conv"] = f"output_blocks.{index}.{slot}.conv"
    return table


def _add_vae_resnet(table: dict[str, str], diffusers: str, ldm: str) -> None:
    table[diffusers] = ldm
    table[f"{diffusers}.conv_shortcut"] = f"{ldm}.nin_shortcut"


def _add_vae_mid(table: dict[str, str], side: str) -> None:
    _add_vae_resnet(table, f"{side}.mid_block.resnets.0", f"{side}.mid.block_1")
    _add_vae_resnet(table, f"{side}.mid_block.resnets.1", f"{side}.mid.block_2")
    for d_name, l_name in VAE_ATTENTION.items():
        table[f"{side}.mid_block.attentions.0.{d_name}"] = f"{side}.mid.attn_1.{l_name}"


def vae_prefix_table(config: dict) -> dict[str, str]:
    """diffusers -> LDM module prefixes of an AutoencoderKL config (without ``first_stage_model.``).

    The LDM decoder numbers its ``up`` levels from the lowest resolution upwards in reverse:
    diffusers ``decoder.up_blocks.i`` is LDM ``decoder.up.{n-1-i}``.
    """
    n_levels = len(config["block_out_channels"])
    layers = _layers_per_block(config)
    table = {
        "encoder.conv_in": "encoder.conv_in",
        "encoder.conv_norm_out": "encoder.norm_out",
        "encoder.conv_out": "encoder.conv_out",
        "decoder.conv_in": "decoder.conv_in",
        "decoder.conv_norm_out": "decoder.norm_out",
        "decoder.conv_out": "decoder.conv_out",
        "quant_conv": "quant_conv",
        "post_quant_conv": "post_quant_conv",
    }
    for i in range(n_levels):
        for j in range(layers):
            _add_vae_resnet(table, f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}")
        if i < n_levels - 1:
            table[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = f"encoder.down.{i}.downsample.conv"
    for i in range(n_levels):
        level = n_levels - 1 - i
        for j in range(layers + 1):
            _add_vae_resnet(table, f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{level}.block.{j}")
        if i < n_levels - 1:
            table[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = f"decoder.up.{level}.upsample.conv"
    _add_vae_mid(table, "encoder")
    _add_vae_mid(table, "decoder")
    return table


def rename_key(key: str, table: dict[str, str]) -> str | None:
    """Rename ``key`` by the longest prefix of ``table`` it starts with; None when no prefix matches."""
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in table:
            return table[prefix] + "." + ".".join(parts[cut:])
    return None


def invert(table: dict[str, str]) -> dict[str, str]:
    """LDM -> diffusers table (the tables are one-to-one)."""
    inverse = {v: k for k, v in table.items()}
    if len(inverse) != len(table):
        raise ValueError("prefix table is not one-to-one")
    return inverse
