"""Block-wise LoRA network_args (block_dims/alphas, lr weights, zero threshold) and scale_weight_norms."""

from __future__ import annotations

import math

import pytest
import torch

from library.errors import ConfigError
from library.models.tiny import tiny_components
from library.networks.blocks import block_index, block_lr_weights, parse_lr_weights
from library.networks.lora import create_network


@pytest.fixture(scope="module")
def tiny():
    parts = tiny_components("sd1")
    return parts["unet"], parts["text_encoder"]


@pytest.mark.parametrize(("name", "index"), [
    ("lora_unet_down_blocks_0_attentions_0_proj_in", 1),
    ("lora_unet_down_blocks_0_attentions_1_proj_in", 2),
    ("lora_unet_down_blocks_0_downsamplers_0_conv", 3),
    ("lora_unet_down_blocks_3_resnets_1_conv1", 11),
    ("lora_unet_mid_block_attentions_0_proj_in", 12),
    ("lora_unet_up_blocks_0_resnets_0_conv1", 13),
    ("lora_unet_up_blocks_1_upsamplers_0_conv", 18),
    ("lora_unet_up_blocks_3_attentions_2_proj_out", 24),
    ("lora_unet_time_embedding_linear_1", None),
])
def test_block_numbering(name, index):
    assert block_index(name) == index


def test_lr_weight_presets_and_padding():
    sine = parse_lr_weights("sine", "down_lr_weight")
    assert sine[0] == 0.0 and sine[-1] == pytest.approx(1.0)
    assert sine[6] == pytest.approx(math.sin(math.pi * (6 / 11) / 2))
    assert parse_lr_weights("cosine+.5", "x")[0] == pytest.approx(1.5)
    assert parse_lr_weights("linear", "x")[3] == pytest.approx(3 / 11)
    assert parse_lr_weights("0.5,0.25", "x") == [0.5, 0.25] + [1.0] * 10
    weights = block_lr_weights("zeros", "0.5", None)
    assert weights[:12] == [0.0] * 12 and weights[12] == 0.5 and weights[13:] == [1.0] * 12
    with pytest.raises(ConfigError, match="comma-separated numbers"):
        parse_lr_weights("wavy", "up_lr_weight")


def test_block_dims_set_ranks_per_block(tiny):
    unet, te = tiny
    dims = ",".join(["2"] * 12 + ["6"] + ["3"] * 12)
    alphas = ",".join(["1"] * 12 + ["5"] + ["1"] * 12)
    network = create_network(unet, te, dim=4, alpha=1, block_dims=dims, block_alphas=alphas)
    sd = network.state_dict()
    assert sd["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"].shape[0] == 2
    assert sd["lora_unet_mid_block_attentions_0_proj_in.lora_down.weight"].shape[0] == 6
    assert sd["lora_unet_mid_block_attentions_0_proj_in.alpha"].item() == 5.0
    assert sd["lora_unet_up_blocks_1_attentions_0_proj_in.lora_down.weight"].shape[0] == 3
    assert sd["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"].shape[0] == 4
    with pytest.raises(ConfigError, match="needs 25"):
        create_network(unet, te, dim=4, block_dims="1,2,3")


def test_lr_weights_make_param_groups_and_threshold_drops_blocks(tiny):
    unet, te = tiny
    network = create_network(unet, te, dim=4, down_lr_weight="zeros", mid_lr_weight="0.5",
                             block_lr_zero_threshold=0.1)
    names = network.unet_names
    assert not any("down_blocks" in n for n in names)  # weight 0 <= threshold: no module at all
    groups = {g["name"]: g["lr"] for g in network.param_groups(1e-3, 1e-4, 1e-3)}
    assert groups == {"text_encoder": 1e-4, "unet": 1e-3, "unet_w0.5": 5e-4}


def test_scale_weight_norms_caps_each_module(tiny):
    unet, te = tiny
    network = create_network(unet, te, dim=4, alpha=4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for m in network.network_modules():
            m.lora_up.weight.normal_(0, 1.0)
    before = {m.lora_name: m.delta_weight().norm().item() for m in network.network_modules()}
    scaled, mean, largest = network.apply_max_norm(1.0)
    assert scaled == sum(v > 1.0 for v in before.values()) > 0
    assert largest == pytest.approx(max(before.values()), rel=1e-5)
    for m in network.network_modules():
        expected = min(before[m.lora_name], 1.0)
        assert m.delta_weight().norm().item() == pytest.approx(expected, rel=1e-4)
