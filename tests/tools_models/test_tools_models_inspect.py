"""inspect_lora on an sd-scripts-layout file built here: rank, alpha, metadata, hashes, --check (issue 6)."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest
import torch

from library.errors import ModelLoadError
from library.models.tiny import tiny_components
from library.tools.models.inspect_lora import inspect_lora, report_lines
from tests.tools_models.helpers import load_tool, module_layers, sd_scripts_lora, sd_scripts_metadata

inspect_cli = load_tool("inspect_lora")

LINEAR = [
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
    "lora_te_text_model_encoder_layers_3_mlp_fc2",
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k",
    "lora_unet_up_blocks_3_attentions_1_transformer_blocks_0_ff_net_2",
    "lora_unet_down_blocks_0_attentions_0_proj_in",  # 1x1 conv in SD1
]
CONV = ["lora_unet_down_blocks_0_resnets_0_conv1"]


def build_modules(rank=8, conv_rank=4, seed=0) -> dict:
    parts = tiny_components("sd1")
    layers = module_layers(parts["unet"], parts["text_encoder"])
    gen = torch.Generator().manual_seed(seed)
    modules = {}
    for name in LINEAR + CONV:
        weight = layers[name].weight
        r = conv_rank if name in CONV else rank
        if weight.dim() == 4:
            down = torch.randn(r, weight.shape[1], *weight.shape[2:], generator=gen)
            up = torch.randn(weight.shape[0], r, 1, 1, generator=gen)
        else:
            down = torch.randn(r, weight.shape[1], generator=gen)
            up = torch.randn(weight.shape[0], r, generator=gen)
        modules[name] = (down * 0.1, up * 0.1, 4.0 if name not in CONV else 1.0)
    return modules


@pytest.fixture
def sd_scripts_file(tmp_path):
    return sd_scripts_lora(
        tmp_path / "sks.safetensors",
        build_modules(),
        metadata=sd_scripts_metadata(),
        no_alpha=("lora_unet_down_blocks_0_attentions_0_proj_in",),
    )


def test_report_of_an_sd_scripts_file(sd_scripts_file):
    insp = inspect_lora(sd_scripts_file)
    assert insp.network_type == "LoCon"
    assert (insp.n_unet, insp.n_text_encoder) == (4, 2)
    assert insp.ranks == {8: 5} and insp.conv_ranks == {4: 1}
    assert insp.alphas == {1.0: 1, 4.0: 4, 8.0: 1}  # the module without alpha gets alpha = rank
    assert insp.alpha_defaulted == 1
    assert insp.dtype == "float16"
    assert insp.architecture == "SD1"  # tiny widths are unknown: from ss_base_model_version
    assert insp.metadata["ss_output_name"] == "sks_disc"
    assert insp.metadata["ss_training_started_at"].startswith("2023-11-1")
    assert insp.metadata["ss_tag_frequency"] == "2_sks disc: sks disc (4), red (3), picture (1)"
    data = Path(sd_scripts_file).read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    assert insp.hashes["sha256"] == hashlib.sha256(data).hexdigest()
    assert insp.hashes["autov2"] == hashlib.sha256(data).hexdigest()[:10].upper()
    assert insp.hashes["model_hash"] == hashlib.sha256(data[8 + n :]).hexdigest()
    assert insp.hashes["autov3"] == insp.hashes["model_hash"][:12].upper()
    assert insp.hash_problems == []  # no stored sshs hashes in this file
    text = "\n".join(report_lines(insp))
    assert "rank (Linear / 1x1): 8 x5" in text and "rank (3x3 conv): 4 x1" in text
    assert "1 modules without alpha" in text


def test_architecture_from_widths(tmp_path):
    gen = torch.Generator().manual_seed(0)
    sd2 = {
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (
            torch.randn(4, 1024, generator=gen),
            torch.randn(1024, 4, generator=gen),
            4,
        )
    }
    assert inspect_lora(sd_scripts_lora(tmp_path / "sd2.safetensors", sd2)).architecture == "SD2"
    xl = {
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (torch.zeros(4, 768), torch.zeros(768, 4), 4)
    }
    assert inspect_lora(sd_scripts_lora(tmp_path / "xl.safetensors", xl)).architecture == "SDXL"


def test_stored_hash_mismatch_is_reported(tmp_path):
    from library.tools.models.lora_file import read_lora, save_lora

    path = sd_scripts_lora(tmp_path / "a.safetensors", build_modules())
    lora = read_lora(path)
    saved = save_lora(tmp_path / "ours.safetensors", lora.modules, {"ss_network_dim": "8"})
    assert inspect_lora(saved).hash_problems == []
    import safetensors.torch

    tensors = safetensors.torch.load_file(str(saved))
    meta = inspect_lora(saved).metadata
    first = next(iter(tensors))
    tensors[first] = tensors[first] + 1
    from safetensors import safe_open

    with safe_open(str(saved), "pt") as f:
        stored = f.metadata()
    safetensors.torch.save_file(tensors, str(tmp_path / "edited.safetensors"), metadata=stored)
    assert meta["ss_network_dim"] == "8"
    problems = inspect_lora(tmp_path / "edited.safetensors").hash_problems
    assert len(problems) == 1 and "sshs_model_hash" in problems[0]


def test_not_a_lora(tiny_model_files, tmp_path):
    with pytest.raises(ModelLoadError, match="full Stable Diffusion checkpoint"):
        inspect_lora(tiny_model_files["sd1"]["single"])
    loha = tmp_path / "loha.safetensors"
    import safetensors.torch

    safetensors.torch.save_file(
        {"lora_unet_x.hada_w1_a": torch.zeros(2, 2), "lora_unet_x.alpha": torch.tensor(1.0)}, str(loha)
    )
    assert inspect_lora(loha).network_type == "LoHa"


def wrong_base(path: Path) -> Path:
    """A tiny SD1-like model 48 wide in its text encoder and cross-attention: the test LoRA does not fit."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from library.models.tiny import save_diffusers_folder, tiny_text_encoder_config, tiny_unet_config

    parts = tiny_components("sd1")
    parts["unet"] = UNet2DConditionModel(**{**tiny_unet_config("sd1"), "cross_attention_dim": 48})
    te = {
        **tiny_text_encoder_config("sd1"),
        "hidden_size": 48,
        "intermediate_size": 192,
        "projection_dim": 48,
    }
    parts["text_encoder"] = CLIPTextModel(CLIPTextConfig(**te))
    return save_diffusers_folder(path, parts)


@pytest.mark.slow
def test_check_against_right_and_wrong_base(sd_scripts_file, tiny_model_files, tmp_path, capsys):
    good = inspect_lora(sd_scripts_file, str(tiny_model_files["sd1"]["folder"]))
    assert good.check.ok and good.check.matched == 6
    bad = inspect_lora(sd_scripts_file, str(wrong_base(tmp_path / "wide")))
    assert not bad.check.ok
    wrong = sorted(text.split(":")[0] for text in bad.check.mismatched)
    assert wrong == sorted(LINEAR[:3])  # q_proj, fc2 (TE width) and attn2.to_k (cross-attention width)
    assert inspect_cli.main([str(sd_scripts_file), "--check", str(tmp_path / "wide")]) == 1
    out = capsys.readouterr().out
    assert "wrong shape: lora_te_text_model_encoder_layers_0_self_attn_q_proj" in out
    assert "3 wrong shape" in out
    assert inspect_cli.main([str(sd_scripts_file), "--no_metadata"]) == 0


def test_check_reports_keys_of_another_architecture(sd_scripts_file, tmp_path):
    modules = build_modules()
    modules["lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"] = modules[LINEAR[2]]
    path = sd_scripts_lora(tmp_path / "mixed.safetensors", modules)
    insp = inspect_lora(path, "builtin:tiny")
    assert insp.check.unknown == ["lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"]
    assert insp.architecture == "SDXL"
