"""The on-disk contract: exact key sets on the tiny model, SPEC examples, name normalisation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from library.networks import keys
from library.networks.lora import create_network

EXPECTED = Path(__file__).parent / "expected"
SPEC_EXAMPLES = {
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight",
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha",
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight",
}


def expected_modules(*files: str) -> set[str]:
    names: set[str] = set()
    for file in files:
        names |= set((EXPECTED / file).read_text().split())
    return names


def keys_of(names: set[str]) -> set[str]:
    return {n + s for n in names for s in (".lora_down.weight", ".lora_up.weight", ".alpha")}


def test_lora_key_set_is_pinned(fresh_models):
    unet, te = fresh_models
    sd = create_network(unet, te, dim=4, alpha=1).state_dict()
    modules = expected_modules("tiny_sd1_lora_modules.txt")
    assert len(modules) == 144
    assert set(sd) == keys_of(modules)
    assert SPEC_EXAMPLES <= set(sd)


def test_locon_key_set_is_pinned(fresh_models):
    unet, te = fresh_models
    sd = create_network(unet, te, dim=4, alpha=1, conv_dim=2).state_dict()
    modules = expected_modules("tiny_sd1_lora_modules.txt", "tiny_sd1_locon_extra_modules.txt")
    assert len(modules) == 201
    assert set(sd) == keys_of(modules)
    # 3x3 convs use conv_dim; Linear and 1x1 convs of the same blocks use network_dim (sd-scripts).
    assert sd["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"].shape == (2, 32, 3, 3)
    assert sd["lora_unet_up_blocks_0_upsamplers_0_conv.lora_up.weight"].shape == (64, 2, 1, 1)
    assert sd["lora_unet_down_blocks_2_resnets_0_conv_shortcut.lora_down.weight"].shape == (4, 32, 1, 1)
    assert sd["lora_unet_mid_block_resnets_0_time_emb_proj.lora_down.weight"].shape == (4, 128)
    assert sd["lora_unet_mid_block_attentions_0_proj_in.lora_down.weight"].shape == (4, 64, 1, 1)


def test_alpha_is_a_0d_tensor(fresh_models):
    unet, te = fresh_models
    sd = create_network(unet, te, dim=8, alpha=4, conv_dim=2, conv_alpha=0.5).state_dict()
    alpha = sd["lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha"]
    assert alpha.dim() == 0 and alpha.item() == 4.0
    assert sd["lora_unet_down_blocks_0_resnets_0_conv1.alpha"].item() == 0.5


def test_unet_only_and_te_only(fresh_models):
    unet, te = fresh_models
    unet_only = create_network(unet, te, dim=4, train_text_encoder=False).state_dict()
    te_only = create_network(unet, te, dim=4, train_unet=False).state_dict()
    assert all(k.startswith("lora_unet_") for k in unet_only) and len(unet_only) == 120 * 3
    assert all(k.startswith("lora_te_") for k in te_only) and len(te_only) == 24 * 3


@pytest.mark.parametrize(
    ("prefix", "path", "name"),
    [
        ("lora_unet", "mid_block.attentions.0.proj_in", "lora_unet_mid_block_attentions_0_proj_in"),
        ("lora_te", "text_model.encoder.layers.11.mlp.fc2", "lora_te_text_model_encoder_layers_11_mlp_fc2"),
    ],
)
def test_lora_name(prefix, path, name):
    assert keys.lora_name(prefix, path) == name


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("lora_unet_a_b.lora_down.weight", ("lora_unet_a_b", ".lora_down.weight")),
        ("lora_te_x.alpha", ("lora_te_x", ".alpha")),
        ("lora_te_x.lora_up.weight", ("lora_te_x", ".lora_up.weight")),
        ("lora_te_x.hada_w1_a", ("lora_te_x.hada_w1_a", "")),
    ],
)
def test_split_key(key, expected):
    assert keys.split_key(key) == expected


def _tiny_clip_config() -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=1000,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        projection_dim=16,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


def test_text_model_root_with_and_without_the_level():
    """Flattened CLIPTextModel (transformers 5) and a model with a text_model level give the same names."""
    flat = CLIPTextModel(_tiny_clip_config())
    wrapped = CLIPTextModelWithProjection(_tiny_clip_config())
    assert not hasattr(flat, "text_model")
    flat_names = [t.lora_name for t in keys.find_text_encoder_targets(flat)]
    assert hasattr(wrapped, "text_model")
    wrapped_names = [t.lora_name for t in keys.find_text_encoder_targets(wrapped)]
    assert sorted(wrapped_names) == sorted(flat_names)
    assert sorted(flat_names) == sorted(
        f"lora_te_text_model_encoder_layers_0_{p}"
        for p in (
            "self_attn_q_proj",
            "self_attn_k_proj",
            "self_attn_v_proj",
            "self_attn_out_proj",
            "mlp_fc1",
            "mlp_fc2",
        )
    )


def test_subclass_of_a_target_block_is_targeted():
    class MyAttention(torch.nn.Module):
        pass

    class CLIPSdpaAttention(MyAttention):  # named like the transformers 4 class
        def __init__(self):
            super().__init__()
            self.q_proj = torch.nn.Linear(4, 4)

    class Sub(CLIPSdpaAttention):
        pass

    root = torch.nn.Module()
    root.attn = Sub()
    root.other = torch.nn.Linear(4, 4)
    assert [t.lora_name for t in keys.find_text_encoder_targets(root)] == ["lora_te_text_model_attn_q_proj"]
