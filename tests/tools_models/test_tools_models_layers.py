"""UNet block numbering (IN00–IN11, M00, OUT00–OUT11) and the layer index by contract name."""

from __future__ import annotations

import pytest

from library.errors import ConfigError
from library.tools.models.layers import BLOCK_NAMES, UnetBlocks, block_of_ldm_key, parse_block_weights

#: SD 1.5's real UNet layout (layers_per_block 2): the keys the webui block-merge tools number.
SD_CONFIG = {
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "layers_per_block": 2,
}


@pytest.mark.parametrize(
    "key,block",
    [
        ("conv_in.weight", "IN00"),
        ("down_blocks.0.resnets.0.conv1.weight", "IN01"),
        ("down_blocks.0.attentions.1.proj_in.weight", "IN02"),
        ("down_blocks.0.downsamplers.0.conv.weight", "IN03"),
        ("down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight", "IN04"),
        ("down_blocks.2.downsamplers.0.conv.bias", "IN09"),
        ("down_blocks.3.resnets.1.conv2.weight", "IN11"),
        ("mid_block.attentions.0.proj_out.weight", "M00"),
        ("mid_block.resnets.1.norm1.weight", "M00"),
        ("up_blocks.0.resnets.0.conv1.weight", "OUT00"),
        ("up_blocks.0.upsamplers.0.conv.weight", "OUT02"),
        ("up_blocks.1.attentions.2.proj_out.weight", "OUT05"),
        ("up_blocks.3.attentions.2.transformer_blocks.0.ff.net.2.weight", "OUT11"),
        ("time_embedding.linear_1.weight", None),
        ("conv_out.weight", None),
        ("conv_norm_out.bias", None),
    ],
)
def test_block_of_diffusers_key_matches_the_webui_numbering(key, block):
    assert UnetBlocks(SD_CONFIG).block_of_key(key) == block


def test_block_of_ldm_key():
    assert block_of_ldm_key("input_blocks.10.0.in_layers.2.weight") == "IN10"
    assert block_of_ldm_key("middle_block.1.proj_in.weight") == "M00"
    assert block_of_ldm_key("output_blocks.7.1.norm.weight") == "OUT07"
    assert block_of_ldm_key("time_embed.0.weight") is None


def test_parse_block_weights():
    weights = parse_block_weights(",".join(str(i / 10) for i in range(25)))
    assert list(weights) == list(BLOCK_NAMES)
    assert weights["IN00"] == 0.0 and weights["M00"] == 1.2 and weights["OUT11"] == 2.4
    with pytest.raises(ConfigError, match="25 values"):
        parse_block_weights([1.0] * 24)
    with pytest.raises(ConfigError, match="numbers"):
        parse_block_weights("a,b")
