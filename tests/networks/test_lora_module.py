"""LoRA behaviour on the tiny model: step 0 = base, equivalence with merged weights, dropouts, groups."""

from __future__ import annotations

import math

import pytest
import torch
from lora_helpers import merged_copy, randomize_up_weights, token_ids, unet_inputs

from library.errors import ConfigError
from library.networks import get_network_type, network_module_names
from library.networks.args import parse_network_args, split_network_args
from library.networks.functional import lora_delta_weight, merged_weight
from library.networks.lora import LoRAModule, create_network


def run_unet(unet) -> torch.Tensor:
    latents, t, states = unet_inputs()
    with torch.no_grad():
        return unet(latents, t, encoder_hidden_states=states).sample


def run_te(te) -> torch.Tensor:
    with torch.no_grad():
        return te(token_ids())[0]


def test_fresh_network_is_exactly_the_base_model(fresh_models):
    unet, te = fresh_models
    base_unet, base_te = run_unet(unet), run_te(te)
    network = create_network(unet, te, dim=4, alpha=1, conv_dim=4)
    network.apply_to()
    assert torch.equal(run_unet(unet), base_unet)
    assert torch.equal(run_te(te), base_te)
    down = network.state_dict()["lora_unet_mid_block_attentions_0_proj_in.lora_down.weight"]
    assert down.abs().sum() > 0  # down is random, only up is zero


@pytest.mark.parametrize("conv_dim", [None, 3])
def test_applied_network_equals_hand_merged_weights(fresh_models, conv_dim):
    unet, te = fresh_models
    network = create_network(unet, te, dim=4, alpha=2, conv_dim=conv_dim, conv_alpha=1.5)
    randomize_up_weights(network)
    sd = network.state_dict()
    expected_unet = run_unet(merged_copy(unet, sd, "lora_unet"))
    expected_te = run_te(merged_copy(te, sd, "lora_te", te=True))
    network.apply_to()
    got_unet, got_te = run_unet(unet), run_te(te)
    assert not torch.allclose(got_unet, run_unet_removed(network, unet), atol=1e-4)
    network.apply_to()
    torch.testing.assert_close(got_unet, expected_unet, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(got_te, expected_te, atol=2e-5, rtol=1e-4)


def run_unet_removed(network, unet) -> torch.Tensor:
    network.remove()
    return run_unet(unet)


def test_remove_restores_the_original_forward(fresh_models):
    unet, te = fresh_models
    base = run_te(te)
    network = create_network(unet, te, dim=4, train_unet=False)
    randomize_up_weights(network)
    network.apply_to()
    network.apply_to()  # idempotent
    assert not torch.allclose(run_te(te), base)
    network.remove()
    assert torch.equal(run_te(te), base)
    layer = te.encoder.layers[0].self_attn.q_proj
    assert "forward" not in layer.__dict__


def test_multiplier_scales_the_change(fresh_models):
    unet, te = fresh_models
    base = run_te(te)
    network = create_network(unet, te, dim=4, train_unet=False)
    randomize_up_weights(network)
    network.apply_to()
    network.set_multiplier(0.0)
    assert torch.equal(run_te(te), base)
    layer = te.encoder.layers[0].mlp.fc1
    module = network.lora_te_text_model_encoder_layers_0_mlp_fc1
    assert module.org_module is layer
    x = torch.randn(3, layer.in_features)
    for multiplier in (0.5, -1.0):
        network.set_multiplier(multiplier)
        with torch.no_grad():
            expected = x @ (layer.weight + multiplier * module.delta_weight()).T + layer.bias
            torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_functional_delta_matches_module_forward():
    gen = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(6, 5, 3, stride=2, padding=1)
    module = LoRAModule("lora_unet_x", conv, dim=2, alpha=3.0, generator=gen)
    with torch.no_grad():
        module.lora_up.weight.normal_(generator=gen)
    module.apply_to()
    x = torch.randn(2, 6, 9, 9, generator=gen)
    with torch.no_grad():
        expected = torch.nn.functional.conv2d(
            x,
            merged_weight(conv.weight, module.lora_down.weight, module.lora_up.weight, 3.0),
            conv.bias,
            2,
            1,
        )
        torch.testing.assert_close(conv(x), expected, atol=1e-5, rtol=1e-5)
    delta = lora_delta_weight(module.lora_down.weight, module.lora_up.weight, 1.5)
    assert delta.shape == (5, 6, 3, 3)
    torch.testing.assert_close(module.delta_weight(), delta)


def test_linear_delta_and_init():
    linear = torch.nn.Linear(8, 6)
    module = LoRAModule("lora_te_x", linear, dim=4, alpha=None)
    assert module.alpha.item() == 4.0 and module.scale == 1.0  # alpha None -> dim
    assert torch.count_nonzero(module.lora_up.weight) == 0
    bound = 1 / math.sqrt(8)  # kaiming_uniform(a=sqrt(5)) on fan_in 8
    assert module.lora_down.weight.abs().max() <= bound
    down, up = torch.randn(4, 8), torch.randn(6, 4)
    torch.testing.assert_close(lora_delta_weight(down, up, 0.25), up @ down * 0.25)


def test_init_is_reproducible_with_a_generator(fresh_models):
    unet, te = fresh_models
    a = create_network(unet, te, dim=4, generator=torch.Generator().manual_seed(7)).state_dict()
    b = create_network(unet, te, dim=4, generator=torch.Generator().manual_seed(7)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("options", [{"dropout": 0.5}, {"rank_dropout": 0.5}, {"module_dropout": 0.5}])
def test_dropouts_only_in_train_mode(options):
    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 16)
    module = LoRAModule("lora_te_x", linear, dim=8, alpha=8, **options)
    with torch.no_grad():
        module.lora_up.weight.normal_()
    module.apply_to()
    x = torch.randn(4, 3, 16)
    with torch.no_grad():
        module.eval()
        first, second = linear(x), linear(x)
        assert torch.equal(first, second)
        torch.testing.assert_close(first, x @ (linear.weight + module.delta_weight()).T + linear.bias)
        module.train()
        outs = [linear(x) for _ in range(8)]
    assert any(not torch.allclose(o, first) for o in outs)
    assert any(not torch.allclose(outs[0], o) for o in outs[1:])


def test_module_dropout_skips_the_whole_path():
    torch.manual_seed(0)
    linear = torch.nn.Linear(4, 4)
    module = LoRAModule("lora_te_x", linear, dim=2, module_dropout=0.5)
    with torch.no_grad():
        module.lora_up.weight.normal_()
    module.apply_to()
    module.train()
    x = torch.randn(3, 4)
    base = torch.nn.functional.linear(x, linear.weight, linear.bias)
    with torch.no_grad():
        skipped = sum(torch.equal(linear(x), base) for _ in range(40))
    assert 5 < skipped < 35


def test_param_groups(fresh_models):
    unet, te = fresh_models
    network = create_network(unet, te, dim=4)
    groups = network.param_groups(unet_lr=None, text_encoder_lr=5e-5, default_lr=1e-4)
    assert [(g["name"], g["lr"]) for g in groups] == [("text_encoder", 5e-5), ("unet", 1e-4)]
    assert len(groups[0]["params"]) == 24 * 2 and len(groups[1]["params"]) == 120 * 2
    frozen = network.param_groups(unet_lr=1e-4, text_encoder_lr=0, default_lr=1e-4)
    assert [g["name"] for g in frozen] == ["unet"]
    assert not any(p.requires_grad for m in network.text_encoder_modules for p in m.parameters())
    plus = network.param_groups(1e-4, 1e-5, 1e-4, loraplus_unet_ratio=16)
    assert [(g["name"], g["lr"]) for g in plus] == [
        ("text_encoder", 1e-5),
        ("unet", 1e-4),
        ("unet_plus", 1.6e-3),
    ]
    assert len(plus[2]["params"]) == 120


def test_network_params_exclude_the_base_model(fresh_models):
    unet, te = fresh_models
    network = create_network(unet, te, dim=4)
    network.apply_to()
    base_ids = {id(p) for p in unet.parameters()} | {id(p) for p in te.parameters()}
    assert not base_ids & {id(p) for p in network.parameters()}
    assert all(".lora_" in k or k.endswith(".alpha") for k in network.state_dict())


def test_parse_network_args():
    parsed = parse_network_args(["conv_dim=8", "conv_alpha=4", "rank_dropout=0.1", "module_dropout = 0.2"])
    assert parsed == {"conv_dim": 8, "conv_alpha": 4.0, "rank_dropout": 0.1, "module_dropout": 0.2}
    assert split_network_args(["a=b=c"]) == {"a": "b=c"}
    with pytest.raises(ConfigError, match=r"Unknown network_args key 'conv_dimm'.*conv_dim"):
        parse_network_args(["conv_dimm=4"])
    with pytest.raises(ConfigError, match="key=value"):
        parse_network_args(["conv_dim"])
    with pytest.raises(ConfigError, match="conv_dim='x'"):
        parse_network_args(["conv_dim=x"])
    assert parse_network_args(["block_dims=2,2,2"]) == {"block_dims": "2,2,2"}  # lists parsed at creation
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        parse_network_args(["rank_dropout=1.5"])


def test_create_network_validates(fresh_models):
    unet, te = fresh_models
    with pytest.raises(ConfigError, match="network_dim"):
        create_network(unet, te, dim=0)
    with pytest.raises(ConfigError, match="network_dropout"):
        create_network(unet, te, dim=4, dropout=1.0)
    with pytest.raises(ConfigError, match="train nothing"):
        create_network(unet, te, dim=4, train_unet=False, train_text_encoder=False)


def test_defaults_follow_sd_scripts(fresh_models):
    unet, te = fresh_models
    network = create_network(unet, te, conv_dim=2)
    sd = network.state_dict()
    assert sd["lora_unet_mid_block_attentions_0_proj_in.lora_down.weight"].shape[0] == 4
    assert sd["lora_unet_mid_block_attentions_0_proj_in.alpha"].item() == 1.0
    assert sd["lora_unet_mid_block_resnets_0_conv1.alpha"].item() == 1.0


def test_registry(fresh_models):
    unet, te = fresh_models
    assert {"networks.lora", "lycoris.kohya"} <= set(network_module_names())
    lora_type = get_network_type("networks.lora")
    args = lora_type.parse_args(["conv_dim=2"])
    network = lora_type.create(unet, te, dim=4, alpha=1, **args)
    assert "lora_unet_mid_block_resnets_0_conv1.alpha" in network.state_dict()
    with pytest.raises(ConfigError, match=r"networks\.loha.*networks\.lora"):
        get_network_type("networks.loha")
