"""LoHa / LoKr files in the LoRA tools: ΔW equals lycoris-lora's own, merge into a checkpoint, inspect."""

from __future__ import annotations

import collections
import copy

import pytest
import safetensors.torch
import torch

from library.errors import ModelLoadError
from library.networks import get_network_type
from library.networks import lycoris_math as lm
from library.tools.models.lora_file import read_lora
from library.tools.models.merge_lora import merge_into_model, merge_lora_files
from tests.tools_models.helpers import module_layers

#: (id, network_args): Linear + 1x1 and 3x3 convs, factorised and whole LoKr sides, Tucker cores.
VARIANTS = [
    ("loha", ["algo=loha", "conv_dim=2", "conv_alpha=1"]),
    ("loha_tucker", ["algo=loha", "conv_dim=2", "conv_alpha=1", "use_tucker=True"]),
    ("lokr", ["algo=lokr", "conv_dim=2", "conv_alpha=1"]),
    ("lokr_both", ["algo=lokr", "conv_dim=2", "conv_alpha=1", "decompose_both=True", "factor=4"]),
    ("lokr_tucker", ["algo=lokr", "conv_dim=2", "conv_alpha=1", "use_tucker=True", "factor=2"]),
    ("lokr_full", ["algo=lokr", "full_matrix=True"]),
]


@pytest.fixture(scope="module")
def tiny():
    from library.models.tiny import tiny_components

    return tiny_components(family="sd1", seed=0)


def lycoris_network(tiny, args: list[str], seed: int = 3):
    """A LyCORIS network on copies of the tiny model, every factor random (fresh ones give ΔW = 0)."""
    unet, te = copy.deepcopy(tiny["unet"]), copy.deepcopy(tiny["text_encoder"])
    network_type = get_network_type("lycoris.kohya")
    network = network_type.create(
        unet,
        te,
        dim=4,
        alpha=2.0,
        dropout=None,
        train_unet=True,
        train_text_encoder=True,
        generator=torch.Generator().manual_seed(seed),
        **network_type.parse_args(args),
    )
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in network.named_parameters():
            if "scalar" not in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    return network


def lycoris_delta(module) -> torch.Tensor:
    """ΔW as LyCORIS' module applies it in forward: get_weight(shape) · scalar (multiplier 1)."""
    with torch.no_grad():
        return (module.get_weight(module.shape) * module.scalar).float()


def save_network(network, path) -> str:
    tensors = {k: v.detach().contiguous() for k, v in network.state_dict().items()}
    safetensors.torch.save_file(tensors, str(path))
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("variant,args", VARIANTS, ids=[v for v, _ in VARIANTS])
def test_merged_weights_equal_lycoris_delta(tiny, tmp_path, variant, args):
    network = lycoris_network(tiny, args)
    lora = read_lora(save_network(network, tmp_path / f"{variant}.safetensors"), allow_lycoris=True)
    assert set(lora.lycoris) == set(network.text_encoder_names + network.unet_names)
    assert lora.network_type == ("LoHa" if variant.startswith("loha") else "LoKr")
    unet, te = copy.deepcopy(tiny["unet"]), copy.deepcopy(tiny["text_encoder"])
    before = {n: m.weight.detach().clone() for n, m in module_layers(unet, te).items()}
    report = merge_into_model(unet, te, [(lora, 0.7)])
    assert report.entries[0]["merged"] == len(lora.lycoris) and report.entries[0]["unmatched"] == []
    after = module_layers(unet, te)
    kinds = set()
    for module in network.network_modules():
        name = module.lora_name
        want = before[name].double() + 0.7 * lycoris_delta(module).double().reshape(before[name].shape)
        torch.testing.assert_close(after[name].weight.double(), want, atol=1e-5, rtol=1e-5)
        kinds.add(
            (
                before[name].dim(),
                "hada_t1" in lora.lycoris[name].parts or "lokr_t2" in lora.lycoris[name].parts,
            )
        )
    assert (4, False) in kinds or (4, True) in kinds  # convs are covered, not only Linear layers
    if "tucker" in variant:
        assert (4, True) in kinds


@pytest.mark.slow
def test_matches_lycoris_functional_diff_weight(tiny, tmp_path):
    """Our pure functions against lycoris.functional.{loha,lokr}.diff_weight on the file's factors."""
    from lycoris.functional import loha, lokr

    for args in (VARIANTS[0][1], VARIANTS[3][1]):
        network = lycoris_network(tiny, args)
        lora = read_lora(save_network(network, tmp_path / "f.safetensors"), allow_lycoris=True)
        for module in lora.lycoris.values():
            p = module.get
            if module.kind == "LoHa":
                theirs = loha.diff_weight(
                    p("hada_w1_b"),
                    p("hada_w1_a"),
                    p("hada_w2_b"),
                    p("hada_w2_a"),
                    None,
                    None,
                    gamma=module.scale,
                    backend="torch",
                )
            else:
                gamma = module.alpha if module.rank is not None else 1.0
                theirs = lokr.diff_weight(
                    p("lokr_w1"),
                    p("lokr_w1_a"),
                    p("lokr_w1_b"),
                    p("lokr_w2"),
                    p("lokr_w2_a"),
                    p("lokr_w2_b"),
                    None,
                    gamma=gamma,
                    backend="torch",
                )
            ours = module.delta()
            torch.testing.assert_close(ours.reshape(theirs.shape), theirs.float(), atol=1e-5, rtol=1e-5)


def test_pure_math_by_hand():
    gen = torch.Generator().manual_seed(0)
    w1a, w1b, w2a, w2b = (torch.randn(s, generator=gen) for s in ((6, 2), (2, 5), (6, 2), (2, 5)))
    want = (w1a @ w1b) * (w2a @ w2b) * 0.5
    torch.testing.assert_close(lm.loha_delta_weight(w1a, w1b, w2a, w2b, 0.5), want)
    a, b = torch.randn(2, 3, generator=gen), torch.randn(4, 5, generator=gen)
    kron = lm.lokr_delta_weight(a, b, 2.0)
    assert kron.shape == (8, 15)
    torch.testing.assert_close(kron[4:8, 5:10], a[1, 1] * b * 2.0)
    assert (
        lm.factor_scale(2.0, 4) == 0.5
        and lm.factor_scale(2.0, None) == 1.0
        and lm.factor_scale(None, 4) == 1.0
    )
    assert lm.lokr_rank(None, torch.zeros(7, 3)) == 3 and lm.lokr_rank(None, None) is None


def test_incomplete_and_mixed_files_are_refused(tiny, tmp_path):
    network = lycoris_network(tiny, VARIANTS[0][1])
    state = {k: v.detach() for k, v in network.state_dict().items()}
    broken = {k: v for k, v in state.items() if not k.endswith(".hada_w2_b")}
    with pytest.raises(ModelLoadError, match="lacks hada_w2_b"):
        read_lora(broken, allow_lycoris=True)
    with pytest.raises(ModelLoadError, match="LoHa file"):
        read_lora(state)  # tools that only handle LoRA still say what the file is
    path = save_network(network, tmp_path / "loha.safetensors")
    with pytest.raises(ModelLoadError, match="(?i)merge it into a checkpoint with --sd_model"):
        merge_lora_files([path], None, tmp_path / "out.safetensors")


def test_inspect_reports_loha_and_lokr_ranks_and_alphas(tiny, tmp_path):
    from library.tools.models.inspect_lora import inspect_lora, report_lines

    for variant, args in (VARIANTS[0], VARIANTS[2]):
        network = lycoris_network(tiny, args)
        insp = inspect_lora(save_network(network, tmp_path / f"{variant}.safetensors"))
        kind = "LoHa" if variant == "loha" else "LoKr"
        assert insp.network_type == kind
        assert insp.n_unet == len(network.unet_names) and insp.n_text_encoder == len(
            network.text_encoder_names
        )
        lines = "\n".join(report_lines(insp))
        conv = [m for m in network.network_modules() if len(m.shape) == 4 and tuple(m.shape[2:]) != (1, 1)]
        other = [m for m in network.network_modules() if m not in conv]
        if kind == "LoHa":  # LyCORIS' own per-module rank and alpha (conv_dim also applies to 1x1 convs)
            assert insp.ranks == dict(sorted(collections.Counter(m.lora_dim for m in other).items()))
            assert insp.conv_ranks == {2: len(conv)}
            assert insp.alphas == dict(
                sorted(collections.Counter(float(m.alpha) for m in network.network_modules()).items())
            )
            assert set(insp.ranks) == {4} and set(insp.alphas) == {1.0, 2.0}
            assert "rank (Linear / 1x1): 4 x" in lines and "rank (3x3 conv): 2 x" in lines
        else:  # small layers get whole Kronecker sides (rank "full"); factorised ones the network's dim
            assert 4 in insp.ranks and set(insp.ranks) <= {2, 4, "full"}
        assert "alpha: " in lines and insp.other_keys == [] and insp.architecture == "unknown"


@pytest.mark.slow
def test_lycoris_file_merges_into_a_checkpoint_via_cli(tiny_model_files, tmp_path):
    """tools/merge_lora.py --sd_model with a LoKr file: the saved checkpoint holds W + ratio · ΔW."""
    from library.models.loading import load_base_model
    from tests.tools_models.helpers import load_tool

    single = str(tiny_model_files["sd1"]["single"])
    base = load_base_model(single)
    network = lycoris_network({"unet": base.unet, "text_encoder": base.text_encoder}, VARIANTS[2][1])
    path = save_network(network, tmp_path / "lokr.safetensors")
    out = tmp_path / "merged.safetensors"
    cli = load_tool("merge_lora")
    argv = ["--sd_model", single, "--models", path, "--ratios", "0.5", "--save_to", str(out)]
    assert cli.main([*argv, "--save_precision", "float"]) == 0
    merged = load_base_model(str(out))
    before = module_layers(base.unet, base.text_encoder)
    after = module_layers(merged.unet, merged.text_encoder)
    for module in network.network_modules():
        want = before[module.lora_name].weight.double() + 0.5 * lycoris_delta(module).double().reshape(
            before[module.lora_name].weight.shape
        )
        torch.testing.assert_close(after[module.lora_name].weight.double(), want, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("args", [["algo=locon", "conv_dim=2", "conv_alpha=1", "dora_wd=True"],
                                  ["algo=loha", "dora_wd=True"]], ids=["dora", "doha"])
def test_dora_merges_as_lycoris_forward_and_the_webui_apply_it(tiny, tmp_path, args):
    network = lycoris_network(tiny, args)
    path = save_network(network, tmp_path / "dora.safetensors")
    with pytest.raises(ModelLoadError, match="DoRA"):
        read_lora(path, allow_lycoris=True)  # the tools that cannot handle it still refuse it
    lora = read_lora(path, allow_lycoris=True, allow_dora=True)
    assert set(lora.dora_scales) == set(network.text_encoder_names + network.unet_names)
    for ratio in (1.0, 0.6):
        unet, te = copy.deepcopy(tiny["unet"]), copy.deepcopy(tiny["text_encoder"])
        before = {n: m.weight.detach().clone() for n, m in module_layers(unet, te).items()}
        merge_into_model(unet, te, [(lora, ratio)])
        after = module_layers(unet, te)
        for module in network.network_modules():
            name = module.lora_name
            with torch.no_grad():  # as LyCORIS' forward computes it: decompose(W + ΔW) at strength 1
                delta = lycoris_delta(module) if hasattr(module, "get_weight") else module.get_diff_weight()[0]
                full = before[name].float() + delta.float().reshape(before[name].shape)
                decomposed = module.apply_weight_decompose(full, 1).double()
            want = before[name].double() + ratio * (decomposed - before[name].double())
            torch.testing.assert_close(after[name].weight.double(), want, atol=1e-5, rtol=1e-4)
