"""Imported kohya_ss configs train: each LoRA type we can train runs 2 steps on the tiny SD1 model, giving the
network its fields describe; sample_prompts text becomes a prompt file whose samples render; Flux1 trains on
the tiny FLUX."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from library.gui.kohya_convert import convert_file
from library.gui.kohya_import import import_kohya, read_kohya_json
from library.gui.kohya_network import LORA_TYPES
from tests.training.helpers import read_lora, train

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kohya_ss"

#: LoRA type -> (extra kohya_ss fields, a key suffix its file must hold, the ss_network_args it records)
TYPES = {  # Standard trains in test_sample_prompt_text_becomes_a_file_and_samples_render (one run fewer)
    "Kohya LoCon": (
        {"conv_dim": 4, "conv_alpha": 2},
        "lora_down.weight",
        {"conv_dim": "4", "conv_alpha": "2"},
    ),
    "LyCORIS/LoCon": (
        {"conv_dim": 4, "conv_alpha": 1},
        "lora_down.weight",
        {"algo": "locon", "conv_dim": "4"},
    ),
    "LyCORIS/LoHa": ({"conv_dim": 4, "conv_alpha": 1}, "hada_w1_a", {"algo": "loha"}),
    "LyCORIS/LoKr": ({"factor": 4, "use_cp": False}, "lokr_w1", {"algo": "lokr", "factor": "4"}),
    "LyCORIS/iA3": ({"train_on_input": True}, "on_input", {"algo": "ia3"}),
    "LyCORIS/DyLoRA": ({"unit": 2}, "lora_down.weight", {"algo": "dylora", "block_size": "2"}),
    "LyCORIS/GLoRA": ({}, "a1.weight", {"algo": "glora"}),
    "LyCORIS/Diag-OFT": (
        {"constrain": 0, "rescaled": True},
        "oft_blocks",
        {"algo": "diag-oft", "rescaled": "True"},
    ),
    "LyCORIS/BOFT": ({}, "oft_blocks", {"algo": "boft"}),
    "LyCORIS/Native Fine-Tuning": ({}, "diff", {"algo": "full"}),
}


def kohya_lora(tiny_dataset, out: Path, lora_type: str, **fields) -> dict:
    """The hand-written LyCORIS/LoCon fixture, switched to ``lora_type``, on the tiny model and dataset."""
    data = read_kohya_json(FIXTURES / "lora_lycoris_locon_sd15.json")
    data.update(
        LoRA_type=lora_type,
        train_data_dir=str(tiny_dataset / "train"),
        output_dir=str(out),
        output_name="lora",
        max_resolution="64,64",
        max_train_steps=2,
        sample_every_n_steps=0,
        network_dim=4,
        network_alpha=2,
        additional_parameters="",
        learning_rate=1e-3,
        unet_lr=1e-3,
        text_encoder_lr=0,
        train_batch_size=1,
        cache_latents=False,
        bucket_reso_steps=64,
        min_bucket_reso=64,
    )  # text_encoder_lr 0: the UNet only (kohya_ss' rule), a shorter run
    data.update(fields)
    return data


def test_every_trainable_lora_type_is_listed_here():
    trainable = {name for name, kind in LORA_TYPES.items() if kind.refused is None}
    assert trainable - {"LoCon", "Flux1", "Standard"} == set(TYPES)


@pytest.mark.parametrize("lora_type", sorted(TYPES))
def test_lora_type_trains_two_steps_with_its_fields(lora_type, tmp_path, tiny_dataset):
    extra, suffix, expected_args = TYPES[lora_type]
    out = tmp_path / "out"
    result = import_kohya(kohya_lora(tiny_dataset, out, lora_type, **extra))
    assert not result.refused and not result.unmapped, result.message()
    assert train(tmp_path, result.values) == 0
    tensors, meta = read_lora(out / "lora.safetensors")
    assert any(k.endswith("." + suffix) for k in tensors), sorted(tensors)[:5]
    assert meta["ss_network_module"] == LORA_TYPES[lora_type].module
    recorded = json.loads(meta["ss_network_args"])
    assert {k: recorded.get(k) for k in expected_args} == expected_args
    if lora_type.startswith("LyCORIS/"):
        assert recorded["preset"] == "full"
        assert recorded.get("module_dropout") == (
            "0.1" if "module_dropout" in LORA_TYPES[lora_type].always else None
        )
    assert meta["ss_steps"] == "2"
    assert not any(k.startswith("lora_te") for k in tensors)  # text_encoder_lr = 0: UNet only


def test_sample_prompt_text_becomes_a_file_and_samples_render(tmp_path, tiny_dataset):
    """The Standard LoRA type through the CLI: the TOML and the prompt file it writes train and sample."""
    out = tmp_path / "out"
    data = kohya_lora(tiny_dataset, out, "Standard", sample_every_n_steps=2, rank_dropout=0.1)
    source = tmp_path / "kohya.json"
    source.write_text(json.dumps(data), encoding="utf-8")
    report = convert_file(source, tmp_path / "run.toml")
    prompt_file = tmp_path / "run_prompts.txt"
    assert prompt_file.read_text(encoding="utf-8").splitlines() == data["sample_prompts"].splitlines()
    assert "note:" not in report, report
    from library.cli import run_trainer
    from library.training.lora_target import LoRATarget

    assert run_trainer("network", LoRATarget, ["--config_file", str(tmp_path / "run.toml")]) == 0
    samples = sorted((out / "sample").glob("*.png"))
    assert len(samples) == 2 and all(s.name.startswith("lora_000002_0") for s in samples), samples
    from PIL import Image

    first = Image.open(samples[0])
    assert first.size == (64, 64) and first.text["prompt"] == "sks disc, red"
    tensors, meta = read_lora(out / "lora.safetensors")
    assert meta["ss_network_module"] == "networks.lora" and json.loads(meta["ss_network_args"]) == {
        "rank_dropout": "0.1",
        "module_dropout": "0.1",
    }
    assert any(k.endswith(".lora_down.weight") for k in tensors) and meta["ss_steps"] == "2"


def test_flux1_lora_type_trains_on_the_tiny_flux(tmp_path, tiny_dataset):
    from library.models.tiny_flux import save_tiny_flux

    files = save_tiny_flux(tmp_path / "flux", "dev")["files"]
    out = tmp_path / "out"
    data = {
        "LoRA_type": "Flux1",
        "flux1_checkbox": True,
        "split_mode": True,
        "train_blocks": "all",
        "pretrained_model_name_or_path": str(files["transformer"]),
        "clip_l": str(files["clip_l"]),
        "t5xxl": str(files["t5xxl"]),
        "ae": str(files["ae"]),
        "timestep_sampling": "shift",
        "discrete_flow_shift": 3.1582,
        "model_prediction_type": "raw",
        "guidance_scale": 1.0,
        "t5xxl_max_token_length": 32,
        "text_encoder_lr": 0,
        "unet_lr": 1e-2,
        "learning_rate": 1e-2,
        "network_dim": 4,
        "network_alpha": 2,
        "max_resolution": "64,64",
        "max_train_steps": 2,
        "train_batch_size": 2,
        "train_data_dir": str(tiny_dataset / "train"),
        "output_dir": str(out),
        "output_name": "lora",
        "seed": 1,
        "max_data_loader_n_workers": 0,
    }
    result = import_kohya(data)
    assert result.values["network_module"] == "networks.lora_flux"
    assert result.values["network_args"] == ["train_blocks=single"]
    assert result.values["network_train_unet_only"] is True
    assert train(tmp_path, result.values) == 0
    tensors, meta = read_lora(out / "lora.safetensors")
    assert meta["ss_network_module"] == "networks.lora_flux"
    assert all(k.startswith("lora_unet_single_blocks_") for k in tensors)
