"""network_module = "lycoris.kohya": LyCORIS networks through the bridge, their keys, files and training."""

from __future__ import annotations

import copy

import pytest
import torch

from library.errors import ConfigError, ModelLoadError
from library.networks import get_network_type, network_module_names
from library.networks.lycoris_bridge import LycorisNetwork, _deduplicated
from tests.training.helpers import base_options, read_lora, train

#: the keys each algorithm writes for one Linear (LyCORIS' names, which the webui and ComfyUI read).
ALGO_SUFFIXES = {
    "loha": {"alpha", "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"},
    "lokr": {"alpha", "lokr_w1", "lokr_w2_a", "lokr_w2_b"},  # lokr_w2 (unfactored) when the layer is small
    "locon": {"alpha", "lora_down.weight", "lora_up.weight"},
    "ia3": {"weight", "on_input"},
    "full": {"diff", "diff_b"},  # diff_b: the bias delta (the text encoder's q_proj has a bias, to_q not)
    "dylora": {"alpha", "lora_down.weight", "lora_up.weight"},
}


def _suffixes(tensors, name: str) -> set[str]:
    found = {k.split(".", 1)[1] for k in tensors if k.startswith(name + ".")}
    if {"lokr_w2"} <= found:  # a small LoKr factor is stored whole instead of as w2_a @ w2_b
        found = (found - {"lokr_w2"}) | {"lokr_w2_a", "lokr_w2_b"}
    return found


TE_Q = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
UNET_Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"


@pytest.fixture(scope="module")
def tiny():
    from library.models.tiny import tiny_components

    return tiny_components(family="sd1", seed=0)


@pytest.fixture
def models(tiny):
    return copy.deepcopy(tiny["unet"]), copy.deepcopy(tiny["text_encoder"])


def _create(models, args: list[str], **overrides) -> LycorisNetwork:
    network_type = get_network_type("lycoris.kohya")
    options = dict(
        dim=4,
        alpha=2.0,
        dropout=None,
        train_unet=True,
        train_text_encoder=True,
        generator=torch.Generator().manual_seed(3),
    )
    options.update(overrides)
    return network_type.create(*models, **options, **network_type.parse_args(args))


def test_registered_as_a_network_module():
    assert "lycoris.kohya" in network_module_names()
    assert get_network_type("LyCORIS.kohya").name == "lycoris.kohya"


@pytest.mark.parametrize("algo", sorted(ALGO_SUFFIXES))
def test_each_algo_writes_lycoris_keys_rooted_at_text_model(models, algo):
    network = _create(models, [f"algo={algo}"])
    state = network.state_dict()
    for name, has_bias in ((TE_Q, True), (UNET_Q, False)):
        expected = ALGO_SUFFIXES[algo] - (set() if has_bias else {"diff_b"})
        assert _suffixes(state, name) == expected, name
    assert not any(
        k.startswith("lora_te_encoder_") for k in state
    )  # transformers 5 paths never leak into keys
    # the default preset ("full") also covers the ResNet convs, conv_in/out and the time embedding, once each
    assert any(k.startswith("lora_unet_conv_in.") for k in state)
    assert any(k.startswith("lora_unet_time_embedding_linear_1.") for k in state)
    assert any(k.startswith("lora_unet_down_blocks_0_resnets_0_conv1.") for k in state)


def test_fresh_network_leaves_the_model_unchanged_and_is_seeded(models, tiny):
    unet, te = models
    ids = torch.tensor([[49406, 320, 1125, 49407]])
    before = te(ids).last_hidden_state
    network = _create(models, ["algo=loha"], train_unet=False)
    network.apply_to()
    torch.testing.assert_close(te(ids).last_hidden_state, before)
    twin = _create((unet, copy.deepcopy(tiny["text_encoder"])), ["algo=loha"], train_unet=False)
    for key, value in network.state_dict().items():
        torch.testing.assert_close(twin.state_dict()[key], value)
    network.remove()


def test_train_flags_and_info(models):
    network = _create(models, ["algo=lokr", "conv_dim=2", "conv_alpha=1"], train_text_encoder=False)
    assert network.text_encoder_names == [] and network.unet_names
    assert network.info == {"dim": 4, "alpha": 2.0, "algo": "lokr", "conv_dim": 2, "conv_alpha": 1.0}


def test_network_args_are_checked():
    parse = get_network_type("lycoris.kohya").parse_args
    assert parse(["algo=LoHa", "conv_dim=4", "dropout=0.1", "use_cp=True", "constrain=0.5"]) == {
        "algo": "loha",
        "conv_dim": 4,
        "neuron_dropout": 0.1,
        "use_tucker": True,
        "constraint": 0.5,
    }
    with pytest.raises(ConfigError, match="algo.*must be one of"):
        parse(["algo=lohaa"])
    with pytest.raises(ConfigError, match="Unknown network_args key 'conv_dims'.*Did you mean 'conv_dim'"):
        parse(["conv_dims=4"])
    with pytest.raises(ConfigError, match="use_tucker.*true or false"):
        parse(["use_tucker=maybe"])


def test_bad_preset_and_rejected_args_are_config_errors(models):
    with pytest.raises(ConfigError, match="preset='nope' is neither a LyCORIS preset"):
        _create(models, ["preset=nope"])
    with pytest.raises(
        ConfigError, match="dylora needs network_dim and conv_dim to be multiples of block_size"
    ):
        _create(models, ["algo=dylora", "conv_dim=2"])


def test_preset_deduplication_only_drops_classes_fully_named(models):
    unet, _ = models
    preset = {
        "unet_target_module": ["Transformer2DModel", "TimestepEmbedding"],
        "unet_target_name": ["time_embedding.linear_1", "time_embedding.linear_2"],
    }
    assert _deduplicated(preset, unet)["unet_target_module"] == ["Transformer2DModel"]
    partial = {**preset, "unet_target_name": ["time_embedding.linear_1"]}
    assert _deduplicated(partial, unet) is partial


def test_save_and_load_back(models, tiny, tmp_path):
    network = _create(models, ["algo=loha"])
    with torch.no_grad():
        for p in network.parameters():
            p.add_(0.01)
    path = network.save(tmp_path / "loha.safetensors", torch.float16, {"ss_network_module": "lycoris.kohya"})
    tensors, meta = read_lora(path)
    assert meta["ss_network_module"] == "lycoris.kohya" and "sshs_model_hash" in meta
    assert tensors[f"{UNET_Q}.hada_w1_a"].dtype == torch.float16
    other = _create((copy.deepcopy(tiny["unet"]), copy.deepcopy(tiny["text_encoder"])), ["algo=loha"])
    report = other.load_weights(path)
    assert not report.missing and not report.unexpected
    torch.testing.assert_close(
        other.state_dict()[f"{UNET_Q}.hada_w2_b"], tensors[f"{UNET_Q}.hada_w2_b"].float()
    )
    wrong = _create((copy.deepcopy(tiny["unet"]), copy.deepcopy(tiny["text_encoder"])), ["algo=loha"], dim=8)
    with pytest.raises(ModelLoadError, match="do not fit.*hada_w1_a"):
        wrong.load_weights(path)


def test_from_weights_rebuilds_the_algorithm(models, tiny, tmp_path):
    network = _create(models, ["algo=lokr"])
    path = network.save(tmp_path / "lokr.safetensors")
    fresh = (copy.deepcopy(tiny["unet"]), copy.deepcopy(tiny["text_encoder"]))
    rebuilt, report = get_network_type("lycoris.kohya").from_weights(path, *fresh)
    assert sorted(rebuilt.state_dict()) == sorted(network.state_dict())
    assert not report.missing and not report.unexpected


def test_loraplus_groups_for_locon(models):
    network = _create(models, ["algo=locon"])
    groups = network.param_groups(1e-4, 5e-5, 1e-3, loraplus_unet_ratio=16, loraplus_text_encoder_ratio=4)
    by_name = {g["name"]: g for g in groups}
    assert by_name["unet_plus"]["lr"] == pytest.approx(1.6e-3)
    assert by_name["text_encoder_plus"]["lr"] == pytest.approx(2e-4)
    up_ids = {id(m.lora_up.weight) for m in network.unet_modules if hasattr(m, "lora_up")}
    assert {id(p) for p in by_name["unet_plus"]["params"]} == up_ids


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["loha", "lokr"])
def test_trained_lycoris_file_saves_and_loads_back(tmp_path, tiny_dataset, algo, tiny):
    out = tmp_path / "out"
    opts = base_options(
        tiny_dataset,
        out,
        network_module="lycoris.kohya",
        network_args=[f"algo={algo}", "conv_dim=4", "conv_alpha=1"],
        max_train_steps=3,
    )
    assert train(tmp_path, opts) == 0
    tensors, meta = read_lora(out / "lora.safetensors")
    assert meta["ss_network_module"] == "lycoris.kohya"
    assert f'"algo": "{algo}"' in meta["ss_network_args"]
    suffixes = ALGO_SUFFIXES[algo]
    assert _suffixes(tensors, UNET_Q) == suffixes and _suffixes(tensors, TE_Q) == suffixes
    # training moved the weights away from LyCORIS' initialisation
    init = _create(
        (copy.deepcopy(tiny["unet"]), copy.deepcopy(tiny["text_encoder"])),
        [f"algo={algo}", "conv_dim=4", "conv_alpha=1"],
        generator=torch.Generator().manual_seed(1),
    ).state_dict()
    assert any(not torch.equal(init[k], v) for k, v in tensors.items() if k in init)
    # load back: into a fresh network of the same shape, and from the file alone
    again = _create(
        (copy.deepcopy(tiny["unet"]), copy.deepcopy(tiny["text_encoder"])),
        [f"algo={algo}", "conv_dim=4", "conv_alpha=1"],
    )
    report = again.load_weights(out / "lora.safetensors")
    assert not report.missing and not report.unexpected
    for key, value in tensors.items():
        torch.testing.assert_close(again.state_dict()[key], value)
    rebuilt, _ = get_network_type("lycoris.kohya").from_weights(
        out / "lora.safetensors", copy.deepcopy(tiny["unet"]), copy.deepcopy(tiny["text_encoder"])
    )
    assert sorted(rebuilt.state_dict()) == sorted(tensors)
    # continue training from the file (network_weights)
    out2 = tmp_path / "again"
    opts2 = {
        **opts,
        "output_dir": str(out2),
        "network_weights": str(out / "lora.safetensors"),
        "max_train_steps": 1,
    }
    assert train(tmp_path, opts2) == 0
    assert sorted(read_lora(out2 / "lora.safetensors")[0]) == sorted(tensors)
