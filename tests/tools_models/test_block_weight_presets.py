"""The webui LoRA Block Weight extension's 17/12-value strings and presets as --block_weights (issue 16, part 7)."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch

from library.errors import ConfigError
from library.models.sdxl import SDXL_BLOCK_NAMES
from library.networks import block_weight_presets as lbw
from library.tools.models.layers import BLOCK_NAMES, parse_block_weights, precheck_block_weights
from library.tools.models.merge_lora import merge_lora_files
from tests.tools_models.helpers import load_tool
from tests.tools_models.test_tools_models_block_merge import PLANTED, delta, planted_file

SD26 = ["BASE", *BLOCK_NAMES]

#: the blocks each preset sets to 1 (the extension's DEF_WEIGHT_PRESET read through its BLOCKID17), all else 0
ONES = {
    "NONE": set(),
    "ALL": {"BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00", *(f"OUT{i:02d}" for i in range(3, 12))},
    "INS": {"BASE", "IN01", "IN02", "IN04"},
    "IND": {"BASE", "IN05", "IN07", "IN08"},
    "INALL": {"BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08"},
    "MIDD": {"BASE", "IN05", "IN07", "IN08", "M00", "OUT03", "OUT04", "OUT05", "OUT06"},
    "OUTD": {"BASE", "OUT03", "OUT04", "OUT05", "OUT06"},
    "OUTS": {"BASE", "OUT07", "OUT08", "OUT09", "OUT10", "OUT11"},
    "OUTALL": {"BASE", *(f"OUT{i:02d}" for i in range(3, 12))},
}


@pytest.mark.parametrize("name", sorted(ONES))
def test_presets_expand_to_the_documented_26_values(name):
    want = [1.0 if b in ONES[name] else 0.0 for b in SD26]
    assert lbw.expand_to_26(name) == want
    assert lbw.expand_to_26(name.lower()) == want
    weights = parse_block_weights(name)  # SD1/SD2: the 25 UNet blocks, BASE on the text encoders
    assert [weights[b] for b in BLOCK_NAMES] == want[1:]
    assert weights[lbw.TEXT_ENCODER_KEY] == want[0]


def test_half_preset_and_a_17_value_string():
    assert lbw.expand_to_26("ALL0.5") == [0.5 if b in ONES["ALL"] else 0.0 for b in SD26]
    text = "0.3,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16"
    weights = parse_block_weights(text)
    assert weights[lbw.TEXT_ENCODER_KEY] == 0.3
    assert [weights[b] for b in ("IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00")] == [1, 2, 3, 4, 5, 6, 7]
    assert [weights[f"OUT{i:02d}"] for i in range(3, 12)] == list(range(8, 17))
    assert all(weights[b] == 0 for b in ("IN00", "IN03", "IN06", "IN09", "IN10", "IN11", "OUT00", "OUT01", "OUT02"))
    assert parse_block_weights("INALL:" + lbw.PRESETS["INALL"]) == parse_block_weights("INALL")
    assert parse_block_weights("MINE:" + text) == weights  # a line of the extension's lbwpresets.txt


def test_sdxl_12_value_form_maps_to_the_23_blocks():
    from library.models.sdxl import SDXLFamily

    layout = SDXLFamily().block_layout
    text = "0.5,1,2,3,4,5,6,7,8,9,10,11"  # BASE, IN04, IN05, IN07, IN08, M00, OUT00-OUT05
    weights = parse_block_weights(text, layout, "sdxl")
    want = {"BASE": 1.0, "OUT": 1.0, "IN04": 1, "IN05": 2, "IN07": 3, "IN08": 4, "M00": 5, "M01": 5, "M02": 5,
            "OUT00": 6, "OUT01": 7, "OUT02": 8, "OUT03": 9, "OUT04": 10, "OUT05": 11}
    assert [weights[b] for b in SDXL_BLOCK_NAMES] == [want.get(b, 0.0) for b in SDXL_BLOCK_NAMES]
    assert weights[lbw.TEXT_ENCODER_KEY] == 0.5
    # a 17-value preset on SDXL: the extension applies its 26 values by block id
    mid = parse_block_weights("MIDD", layout, "sdxl")
    assert [mid[b] for b in ("IN04", "IN05", "IN07", "M01", "OUT03", "OUT07", "BASE")] == [0, 1, 1, 1, 1, 0, 1]
    # our own 23-value form still reads as before
    assert parse_block_weights([0.25] * 23, layout)["BASE"] == 0.25


def test_bad_forms_are_config_errors():
    with pytest.raises(ConfigError, match="LoRA Block Weight"):
        precheck_block_weights("1,2,3")
    with pytest.raises(ConfigError, match="numbers or a preset"):
        precheck_block_weights("1,x," + ",".join(["1"] * 15))
    from library.models.flux import FluxFamily

    with pytest.raises(ConfigError, match="57 values"):
        parse_block_weights("INALL", FluxFamily().block_layout, "flux")


@pytest.mark.slow
def test_merge_with_a_17_value_string_equals_the_merge_with_its_expansion(tmp_path):
    a, mods_a = planted_file(tmp_path / "a.safetensors", 0, 2, 1.0)
    b, _ = planted_file(tmp_path / "b.safetensors", 1, 3, 3.0)
    text = "1,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.1,1.2,1.3,1.4,1.5,1.6,1.7"
    expansion = lbw.expand_to_26(text)[1:]  # BASE = 1: the 25-value form leaves the text encoder at 1 too
    short, full = tmp_path / "short.safetensors", tmp_path / "full.safetensors"
    merge_lora_files([str(a), str(b)], [0.5, -1.5], short, block_weights=text)
    merge_lora_files([str(a), str(b)], [0.5, -1.5], full, block_weights=expansion)
    got, want = safetensors.torch.load_file(str(short)), safetensors.torch.load_file(str(full))
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=0, rtol=0)
    # BASE scales the text encoder modules
    based = tmp_path / "based.safetensors"
    merge_lora_files([str(a)], [1.0], based, block_weights="0.25" + text[1:])
    merged = safetensors.torch.load_file(str(based))
    te = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    got_te = delta(merged[f"{te}.lora_down.weight"], merged[f"{te}.lora_up.weight"], float(merged[f"{te}.alpha"]))
    torch.testing.assert_close(got_te, 0.25 * delta(*mods_a[te]), atol=1e-5, rtol=1e-5)
    assert PLANTED[te] is None


@pytest.mark.slow
def test_cli_takes_a_preset_name_and_refuses_a_bad_one(tmp_path, capsys):
    a, mods = planted_file(tmp_path / "a.safetensors", 0, 2, 2.0)
    cli = load_tool("merge_lora")
    out = tmp_path / "m.safetensors"
    assert cli.main(["--models", str(a), "--save_to", str(out), "--block_weights", "OUTALL"]) == 0
    merged = safetensors.torch.load_file(str(out))
    for name, block in PLANTED.items():
        if block is None:
            continue
        w = 1.0 if block in ONES["OUTALL"] else 0.0
        got = delta(merged[f"{name}.lora_down.weight"], merged[f"{name}.lora_up.weight"],
                    float(merged[f"{name}.alpha"]))
        torch.testing.assert_close(got, w * delta(*mods[name]), atol=1e-5, rtol=1e-5)
    assert cli.main(["--models", str(a), "--save_to", str(out), "--block_weights", "OUTSIDE"]) == 2
    assert "LoRA Block Weight" in capsys.readouterr().err


def test_block_lr_weight_takes_the_lbw_forms():
    from library.networks.blocks import block_lr_weights, check_block_lr_weight

    assert block_lr_weights(None, None, None, all_blocks="MIDD") == lbw.expand_to_26("MIDD")[1:]
    text = "1,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.1,1.2,1.3,1.4,1.5,1.6,1.7"
    assert block_lr_weights(None, None, None, all_blocks=text) == lbw.expand_to_26(text)[1:]
    ours = ",".join(str(i / 10) for i in range(25))
    assert block_lr_weights(None, None, None, all_blocks=ours) == [i / 10 for i in range(25)]
    with pytest.raises(ConfigError, match="block_lr_weight"):
        block_lr_weights("sine", None, None, all_blocks="ALL")
    with pytest.raises(ConfigError, match="17 values"):
        block_lr_weights(None, None, None, all_blocks="1,2,3")
    with pytest.raises(ValueError):
        check_block_lr_weight("MIDDLE")


@pytest.mark.slow
def test_network_with_a_preset_block_lr_weight_trains_only_its_blocks():
    from library.models.tiny import tiny_components
    from library.networks.lora import create_network

    parts = tiny_components("sd1")
    network = create_network(parts["unet"], parts["text_encoder"], dim=4, block_lr_weight="OUTALL")
    names = network.unet_names
    assert names and all("up_blocks" in n for n in names)  # weight 0 (IN, M00): no module, sd-scripts' rule


@pytest.mark.slow
def test_checkpoint_merge_takes_a_preset_and_its_base_weights_the_text_encoder(tmp_path):
    import re

    from library.tools.models.merge_models import merge_checkpoints
    from tests.tools_models.test_tools_models_merge_models import constant_model, tensors

    zeros, ones = constant_model(tmp_path / "z.safetensors", 0.0), constant_model(tmp_path / "o.safetensors", 1.0)
    merge_checkpoints([str(zeros), str(ones)], tmp_path / "m.safetensors", ratio=0.9, block_weights="ALL0.5")
    want = dict(zip(SD26, lbw.expand_to_26("ALL0.5"), strict=True))
    for key, value in tensors(tmp_path / "m.safetensors").items():
        if not value.is_floating_point():
            continue
        ldm = key.removeprefix("model.diffusion_model.")
        if m := re.match(r"(input|output)_blocks\.(\d+)\.", ldm):
            expected = want[f"{'IN' if m.group(1) == 'input' else 'OUT'}{int(m.group(2)):02d}"]
        elif ldm.startswith("middle_block."):
            expected = want["M00"]
        elif key.startswith("cond_stage_model."):
            expected = want["BASE"]
        else:
            expected = 0.9  # time embedding, out, VAE: outside the blocks
        assert torch.allclose(value, torch.full_like(value, expected)), key
