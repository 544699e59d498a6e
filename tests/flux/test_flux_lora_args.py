"""FLUX LoRA network_args as sd-scripts' networks/lora_flux.py has them: split_qkv (trained per part, saved in the
fused form), the per-layer ranks, in_dims, the block indices, pattern ranks / lrs; bad values refused by name."""

from __future__ import annotations

import pytest
import torch

from library.errors import ConfigError, ModelLoadError
from library.models.flux import FLUX
from library.networks import keys, lora
from library.networks.args import parse_network_args
from library.networks.functional import lora_delta_weight


@pytest.fixture(scope="module")
def transformer():
    from library.models.flux_model import TINY_FLUX_PARAMS, FluxTransformer

    torch.manual_seed(0)
    return FluxTransformer(TINY_FLUX_PARAMS).eval()  # 3 double blocks, 6 single, hidden 64, MLP 256


def build(transformer, argv, dim=4, alpha=2.0):
    """The LoRA the trainer builds for these network_args (the family's parts, then networks.lora)."""
    args = parse_network_args(argv)
    part = keys.NetworkPart("unet", "lora_unet", transformer, True, lambda path: path, blocks=FLUX.unet_target_blocks)
    parts = FLUX.network_parts([part], args)
    rest = {k: v for k, v in args.items() if k not in FLUX.network_args}
    return lora.create_network(transformer, None, dim=dim, alpha=alpha, parts=parts, block_layout=FLUX.block_layout,
                               generator=torch.Generator().manual_seed(0), **rest)


def ranks(network) -> dict[str, int]:
    """Module name -> rank, as the saved file has them (lora_down's first dimension)."""
    state = network.file_state_dict()
    return {k.removesuffix(".lora_down.weight"): v.shape[0] for k, v in state.items() if k.endswith(".lora_down.weight")}


def randomise_ups(network, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in network.named_parameters():
            if "lora_up" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)


DOUBLE = ("img_mod_lin", "img_attn_qkv", "img_attn_proj", "img_mlp_0", "img_mlp_2",
          "txt_mod_lin", "txt_attn_qkv", "txt_attn_proj", "txt_mlp_0", "txt_mlp_2")
SINGLE = ("linear1", "linear2", "modulation_lin")
ALL = {f"lora_unet_double_blocks_{i}_{m}" for i in range(3) for m in DOUBLE} | {
    f"lora_unet_single_blocks_{i}_{m}" for i in range(6) for m in SINGLE}


def test_default_is_every_block_layer_at_network_dim(transformer):
    assert ranks(build(transformer, [])) == dict.fromkeys(ALL, 4)


# --- split_qkv ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_split_qkv_saves_sd_scripts_fused_form_with_the_trained_delta(transformer):
    network = build(transformer, ["split_qkv=True"])
    randomise_ups(network)
    state = network.file_state_dict()
    assert {k.split(".")[0] for k in state} == ALL  # the same key set as without split_qkv
    qkv, linear1 = "lora_unet_double_blocks_0_img_attn_qkv", "lora_unet_single_blocks_0_linear1"
    module = network._modules[qkv]
    assert [tuple(d.weight.shape) for d in module.lora_down] == [(4, 64)] * 3
    assert tuple(state[f"{qkv}.lora_down.weight"].shape) == (12, 64)
    assert tuple(state[f"{qkv}.lora_up.weight"].shape) == (192, 12)
    assert tuple(state[f"{linear1}.lora_down.weight"].shape) == (16, 64)  # q, k, v + MLP
    assert tuple(state[f"{linear1}.lora_up.weight"].shape) == (3 * 64 + 256, 16)
    assert float(state[f"{qkv}.alpha"]) == 2.0 * 3 and float(state[f"{linear1}.alpha"]) == 2.0 * 4
    up = state[f"{qkv}.lora_up.weight"]
    for part in range(3):  # block-diagonal: part i's rows only read part i's ranks
        rows = up[64 * part : 64 * (part + 1)]
        assert torch.equal(rows[:, 4 * part : 4 * (part + 1)], module.lora_up[part].weight.detach())
        assert not rows[:, : 4 * part].any() and not rows[:, 4 * (part + 1) :].any()
    for name in (qkv, linear1):
        module = network._modules[name]
        down, up = state[f"{name}.lora_down.weight"], state[f"{name}.lora_up.weight"]
        from_file = lora_delta_weight(down, up, float(state[f"{name}.alpha"]) / down.shape[0])
        parts = torch.cat([lora_delta_weight(d.weight, u.weight, 2.0 / 4)
                           for d, u in zip(module.lora_down, module.lora_up, strict=True)])
        torch.testing.assert_close(from_file, parts, rtol=0, atol=1e-7)
        torch.testing.assert_close(module.delta_weight(), parts, rtol=0, atol=0)
        x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(module.delta_forward(x), x @ parts.T, rtol=1e-5, atol=1e-6)
    assert isinstance(network._modules["lora_unet_double_blocks_0_img_attn_proj"], lora.LoRAModule)


@pytest.mark.slow
def test_split_qkv_file_loads_back_into_split_and_fused_networks(transformer, tmp_path):
    network = build(transformer, ["split_qkv=True"])
    randomise_ups(network)
    path = network.save(tmp_path / "split.safetensors")
    again = build(transformer, ["split_qkv=True"])
    report = again.load_weights(path)
    assert not report.missing and not report.unexpected
    for key, value in network.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    fused, _ = lora.network_from_weights(path, transformer, None, parts=FLUX.network_parts(
        [keys.NetworkPart("unet", "lora_unet", transformer, True, lambda p: p, blocks=FLUX.unet_target_blocks)], {}))
    name = "lora_unet_single_blocks_2_linear1"
    assert fused._modules[name].lora_dim == 16
    torch.testing.assert_close(fused._modules[name].delta_weight(), network._modules[name].delta_weight(),
                               rtol=0, atol=1e-7)


@pytest.mark.slow
def test_split_qkv_refuses_a_fused_file_it_cannot_split_exactly(transformer, tmp_path):
    plain = build(transformer, [], dim=12)  # rank 12 = 3 x 4, but a dense lora_up mixes q, k and v
    randomise_ups(plain)
    path = plain.save(tmp_path / "dense.safetensors")
    with pytest.raises(ModelLoadError, match=r"double_blocks_0_img_attn_qkv.*not block-diagonal.*Remove split_qkv"):
        build(transformer, ["split_qkv=True"]).load_weights(path)
    with pytest.raises(ModelLoadError, match=r"rank 12 .*network_dim = 2.*Set network_dim to 4"):
        build(transformer, ["split_qkv=True"], dim=2).load_weights(path)


# --- per-layer ranks, in_dims, block indices, patterns -----------------------------------------------------------

TYPE_CASES = [
    ("img_attn_dim", ("img_attn_qkv", "img_attn_proj")),
    ("txt_attn_dim", ("txt_attn_qkv", "txt_attn_proj")),
    ("img_mlp_dim", ("img_mlp_0", "img_mlp_2")),
    ("txt_mlp_dim", ("txt_mlp_0", "txt_mlp_2")),
    ("img_mod_dim", ("img_mod_lin",)),
    ("txt_mod_dim", ("txt_mod_lin",)),
    ("single_dim", ("single_blocks_{i}_linear1", "single_blocks_{i}_linear2")),
    ("single_mod_dim", ("single_blocks_{i}_modulation_lin",)),
]


def _names(parts) -> set[str]:
    out = set()
    for part in parts:
        if part.startswith("single_blocks"):
            out |= {"lora_unet_" + part.format(i=i) for i in range(6)}
        else:
            out |= {f"lora_unet_double_blocks_{i}_{part}" for i in range(3)}
    return out


@pytest.mark.parametrize(("arg", "layers"), TYPE_CASES, ids=[c[0] for c in TYPE_CASES])
def test_each_layer_rank_arg_sets_its_layers_and_zero_drops_them(transformer, arg, layers):
    chosen = _names(layers)
    got = ranks(build(transformer, [f"{arg}=7"]))
    assert got == {name: 7 if name in chosen else 4 for name in ALL}
    assert set(ranks(build(transformer, [f"{arg}=0"]))) == ALL - chosen


def test_in_dims_adds_the_input_layers(transformer):
    got = ranks(build(transformer, ["in_dims=[2,3,0,1,5]"]))
    assert {k: v for k, v in got.items() if k not in ALL} == {
        "lora_unet_img_in": 2, "lora_unet_time_in_in_layer": 3, "lora_unet_time_in_out_layer": 3,
        "lora_unet_guidance_in_in_layer": 1, "lora_unet_guidance_in_out_layer": 1, "lora_unet_txt_in": 5}
    assert set(ranks(build(transformer, ["in_dims=0,0,0,0,0"]))) == ALL


def test_block_indices_choose_the_blocks(transformer):
    got = ranks(build(transformer, ["train_double_block_indices=0,2", "train_single_block_indices=1-2,5"]))
    assert {int(n.split("_")[4]) for n in got if "double" in n} == {0, 2}
    assert {int(n.split("_")[4]) for n in got if "single" in n} == {1, 2, 5}
    got = ranks(build(transformer, ["train_double_block_indices=none", "train_single_block_indices=all"]))
    assert got == {n: 4 for n in ALL if "single" in n}


def test_pattern_ranks_win_and_pattern_lrs_make_groups(transformer):
    network = build(transformer, ["network_reg_dims=double_blocks_1_img=8,modulation=0",
                                  "train_double_block_indices=0", "img_attn_dim=2",
                                  "network_reg_lrs=single_blocks_[01]_=0.5"])
    got = ranks(network)
    assert got["lora_unet_double_blocks_1_img_attn_qkv"] == 8  # the pattern beats the indices, as sd-scripts' code
    assert got["lora_unet_double_blocks_0_img_attn_qkv"] == 2 and "lora_unet_double_blocks_1_txt_attn_qkv" not in got
    assert not any("modulation" in n for n in got)
    groups = {g["name"]: (g["lr"], len(g["params"])) for g in network.param_groups(None, None, 1e-3)}
    assert groups == {"unet": (1e-3, 2 * (len(got) - 4)), "unet_lr0.5": (0.5, 2 * 4)}


def test_verbose_logs_every_module(transformer, caplog):
    with caplog.at_level("INFO", logger="library.networks.lora"):
        build(transformer, ["verbose=True", "txt_mod_dim=3"])
    assert "lora_unet_double_blocks_2_txt_mod_lin" in caplog.text and "rank 3, alpha 2" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="library.networks.lora"):
        build(transformer, [])
    assert "rank 4, alpha 2" not in caplog.text


@pytest.mark.slow  # loads every family's module
def test_flux_args_are_refused_on_other_families():
    from library.models.family import check_family_network_args, get_model_family

    with pytest.raises(ConfigError, match=r"network_args split_qkv: for flux models, but the base model is sd1"):
        check_family_network_args({"split_qkv": True}, get_model_family("sd1"))


BAD = [
    ("in_dims=[4,2,2,4]", "in_dims", "5 comma-separated ranks"),
    ("in_dims=4,2,x,2,4", "in_dims", "'x'"),
    ("in_dims=4,2,-1,2,4", "in_dims", "must not be negative"),
    ("img_attn_dim=-2", "img_attn_dim", "must not be negative"),
    ("single_dim=two", "single_dim", "whole number"),
    ("train_double_block_indices=0,a", "train_double_block_indices", "not a block index or range"),
    ("train_single_block_indices=4-2", "train_single_block_indices", "not a valid range"),
    ("train_single_block_indices=-1", "train_single_block_indices", "not a block index or range"),
    ("network_reg_dims=img_attn", "network_reg_dims", "not pattern=value"),
    ("network_reg_dims=img_attn(=4", "network_reg_dims", "not a regular expression"),
    ("network_reg_lrs=img=-1e-3", "network_reg_lrs", "must not be negative"),
    ("split_qkv=maybe", "split_qkv", "true or false"),
    ("ggpo_sigma=0.03", "ggpo_sigma", "LoRA-GGPO"),
]


@pytest.mark.parametrize(("item", "arg", "words"), BAD, ids=[b[0] for b in BAD])
def test_bad_values_are_refused_naming_the_arg(item, arg, words):
    with pytest.raises(ConfigError) as info:
        parse_network_args([item])
    message = str(info.value)
    assert arg in message and words in message and "\n" not in message, message


@pytest.mark.parametrize(("item", "words"), [
    ("train_double_block_indices=0,3", "train_double_block_indices='0,3': block 3 does not exist; this model has 3"),
    ("train_single_block_indices=2-6", "train_single_block_indices='2-6': block 6 does not exist; this model has 6"),
])
def test_block_index_out_of_the_models_range_is_refused(transformer, item, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
        build(transformer, [item])


# --- training on the tiny FLUX (slow) ----------------------------------------------------------------------------


def _flux_run_options(tiny_dataset, out, folder, network_args):
    from tests.training.helpers import base_options

    return base_options(tiny_dataset, out, pretrained_model_name_or_path=str(folder),
                        network_module="networks.lora_flux", network_train_unet_only=True, guidance_scale=1.0,
                        timestep_sampling="shift", model_prediction_type="raw", max_train_steps=2,
                        learning_rate=1e-2, t5xxl_max_token_length=32, network_args=network_args)


@pytest.mark.slow
def test_split_qkv_and_block_wise_args_train(tmp_path, tiny_dataset, tiny_flux_files):
    from tests.training.helpers import read_lora, train

    out = tmp_path / "out"
    args = ["split_qkv=True", "in_dims=[2,0,0,0,3]", "img_mlp_dim=0", "train_single_block_indices=0-1",
            "single_mod_dim=2"]
    assert train(tmp_path, _flux_run_options(tiny_dataset, out, tiny_flux_files["folder"], args)) == 0
    tensors, meta = read_lora(out / "lora.safetensors")
    got = {k.removesuffix(".lora_down.weight"): v.shape[0] for k, v in tensors.items() if k.endswith("lora_down.weight")}
    expected = {n: 4 for n in ALL if "img_mlp" not in n and not ("single" in n and int(n.split("_")[4]) > 1)}
    expected.update({n: 2 for n in expected if "modulation" in n})
    expected.update({n: 12 for n in expected if n.endswith("attn_qkv")})  # 3 parts x rank 4, fused
    expected.update({n: 16 for n in expected if n.endswith("linear1")})  # q, k, v, MLP x rank 4
    expected.update({"lora_unet_img_in": 2, "lora_unet_txt_in": 3})
    assert got == expected
    assert float(tensors["lora_unet_double_blocks_0_img_attn_qkv.alpha"]) == 2.0 * 3  # network_alpha x parts
    up = tensors["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"]
    for part in range(3):
        rows = up[64 * part : 64 * (part + 1)]
        assert rows[:, 4 * part : 4 * (part + 1)].abs().sum() > 0  # trained
        assert not rows[:, : 4 * part].any() and not rows[:, 4 * (part + 1) :].any()  # still block-diagonal
    assert "split_qkv" in meta["ss_network_args"]


@pytest.mark.slow
def test_trainer_refuses_an_index_outside_the_model_with_exit_2(tmp_path, tiny_dataset, tiny_flux_files, capfd):
    from tests.training.helpers import train

    options = _flux_run_options(tiny_dataset, tmp_path / "out", tiny_flux_files["folder"],
                                ["train_double_block_indices=0,7"])
    assert train(tmp_path, options) == 2
    err = capfd.readouterr().err
    assert "train_double_block_indices='0,7': block 7 does not exist; this model has 3" in err
    assert "Traceback" not in err
