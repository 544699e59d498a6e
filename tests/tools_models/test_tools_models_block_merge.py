"""--block_weights when merging LoRAs into one LoRA: each module scaled by its block (blocks.block_index)."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch

from library.errors import ConfigError
from library.networks.blocks import block_index
from library.tools.models.layers import BLOCK_NAMES, UnetBlocks
from library.tools.models.merge_lora import merge_lora_files, module_block, module_block_weight
from tests.tools_models.helpers import load_tool, sd_scripts_lora

#: module name -> the block the webui numbering puts it in (None: outside the 25 blocks / text encoder).
PLANTED = {
    "lora_unet_down_blocks_0_attentions_0_proj_in": "IN01",
    "lora_unet_down_blocks_0_downsamplers_0_conv": "IN03",
    "lora_unet_down_blocks_1_resnets_1_conv1": "IN05",
    "lora_unet_down_blocks_3_resnets_1_conv2": "IN11",
    "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q": "M00",
    "lora_unet_up_blocks_0_resnets_0_conv1": "OUT00",
    "lora_unet_up_blocks_1_upsamplers_0_conv": "OUT05",
    "lora_unet_up_blocks_3_attentions_2_proj_out": "OUT11",
    "lora_unet_time_embedding_linear_1": None,
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj": None,
}


def planted_file(path, seed: int, rank: int, alpha: float):
    gen = torch.Generator().manual_seed(seed)
    modules = {
        name: (torch.randn(rank, 12, generator=gen), torch.randn(10, rank, generator=gen), alpha)
        for name in PLANTED
    }
    return sd_scripts_lora(path, modules, dtype=torch.float32), modules


def delta(down, up, alpha):
    down, up = down.double(), up.double()
    return up @ down * alpha / down.shape[0]


def test_block_index_names_the_planted_blocks():
    for name, block in PLANTED.items():
        index = block_index(name) if name.startswith("lora_unet_") else None
        assert (BLOCK_NAMES[index] if index is not None else None) == block, name


@pytest.mark.parametrize("svd", [False, True])
def test_each_module_is_scaled_by_its_block_weight(tmp_path, svd):
    a, mods_a = planted_file(tmp_path / "a.safetensors", 0, 2, 1.0)
    b, mods_b = planted_file(tmp_path / "b.safetensors", 1, 3, 3.0)
    weights = [round(0.05 * (i + 1), 2) for i in range(25)]  # a distinct weight per block
    out = tmp_path / "ab.safetensors"
    merge_lora_files([str(a), str(b)], [0.5, -1.5], out, block_weights=weights, new_rank=5 if svd else None)
    merged = safetensors.torch.load_file(str(out))
    for name, block in PLANTED.items():
        w = 1.0 if block is None else weights[BLOCK_NAMES.index(block)]
        want = w * (0.5 * delta(*mods_a[name]) - 1.5 * delta(*mods_b[name]))
        down, up = merged[f"{name}.lora_down.weight"], merged[f"{name}.lora_up.weight"]
        got = delta(down, up, float(merged[f"{name}.alpha"]))
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_cli_block_weights_without_sd_model(tmp_path, capsys):
    a, mods = planted_file(tmp_path / "a.safetensors", 0, 2, 2.0)
    cli = load_tool("merge_lora")
    weights = ["0"] * 25
    weights[BLOCK_NAMES.index("M00")] = "2"
    out = tmp_path / "m.safetensors"
    argv = ["--models", str(a), "--save_to", str(out), "--block_weights", ",".join(weights)]
    assert cli.main(argv) == 0
    merged = safetensors.torch.load_file(str(out))
    for name, block in PLANTED.items():
        got = delta(
            merged[f"{name}.lora_down.weight"],
            merged[f"{name}.lora_up.weight"],
            float(merged[f"{name}.alpha"]),
        )
        factor = {None: 1.0, "M00": 2.0}.get(block, 0.0)
        torch.testing.assert_close(got, factor * delta(*mods[name]), atol=1e-5, rtol=1e-5)
    assert cli.main([*argv[:-1], "1,2,3"]) == 2
    assert "25 values (sd1/sd2" in capsys.readouterr().err


def test_module_block_weight_defaults():
    assert module_block_weight("lora_unet_mid_block_resnets_0_conv1", None) == 1.0
    weights = dict.fromkeys(BLOCK_NAMES, 0.0)
    assert module_block_weight("lora_te_text_model_encoder_layers_0_mlp_fc1", weights) == 1.0
    assert module_block_weight("lora_unet_conv_out", weights) == 1.0
    assert module_block("lora_unet_conv_in") == "IN00" and module_block("lora_unet_conv_out") is None
    with pytest.raises(ConfigError):
        merge_lora_files(["x.safetensors"], None, "y.safetensors", block_weights=[1.0] * 24)


@pytest.mark.slow
def test_layers_numbering_agrees_with_blocks_on_the_sd_unet():
    """layers.UnetBlocks (config-aware, via LDM keys) and blocks.block_index (fixed SD numbering) name
    the same block for every layer of the real SD1 UNet (layers_per_block 2); they differ only for
    UNets with another layout, where only the config-aware mapping follows the LDM block numbers."""
    from diffusers import UNet2DConditionModel

    config = dict(
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        cross_attention_dim=768,
        attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    blocks = UnetBlocks(unet.config)
    checked = 0
    for path, module in unet.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            assert blocks.block_of_path(path) == module_block("lora_unet_" + path.replace(".", "_")), path
            checked += 1
    assert checked > 200
