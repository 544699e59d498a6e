"""kohya_ss GUI JSONs of SDXL runs: the sdxl_* fields map to our options, the ``sdxl`` checkbox is checked
against the family detected from the model (ours has no flag: the model says what it is)."""

from __future__ import annotations

import json
from pathlib import Path

from library.config.load import config_from_values
from library.gui.kohya_import import import_kohya, import_kohya_file

REPO = Path(__file__).resolve().parents[2]

#: the SDXL fields of a kohya_ss LoRA preset (presets/lora/"SDXL - LoRA AI_Now prodigy v1.0.json" style)
SDXL_LORA = {
    "LoRA_type": "Standard",
    "bucket_no_upscale": True,
    "bucket_reso_steps": 32,
    "cache_latents": True,
    "cache_latents_to_disk": True,
    "enable_bucket": True,
    "epoch": 10,
    "gradient_checkpointing": True,
    "learning_rate": 1.0,
    "lr_scheduler": "constant",
    "lr_warmup": 0,
    "max_bucket_reso": 2048,
    "max_resolution": "1024,1024",
    "min_bucket_reso": 256,
    "mixed_precision": "bf16",
    "network_alpha": 16,
    "network_dim": 32,
    "optimizer": "Prodigy",
    "optimizer_args": "weight_decay=0.01 decouple=True d0=0.0001 use_bias_correction=True",
    "save_precision": "bf16",
    "sdxl": True,
    "sdxl_cache_text_encoder_outputs": True,
    "sdxl_no_half_vae": True,
    "network_train_unet_only": True,
    "shuffle_caption": False,
    "text_encoder_lr": 0,
    "unet_lr": 1.0,
    "v2": False,
    "xformers": "xformers",
    "pretrained_model_name_or_path": "builtin:tiny-sdxl",
    "output_dir": "out",
    "output_name": "xl",
    "train_data_dir": str(REPO / "dataset_examples" / "train"),
}


def test_sdxl_lora_json_imports_to_an_sdxl_run():
    result = import_kohya(SDXL_LORA)
    v = result.values
    assert v["cache_text_encoder_outputs"] is True and v["no_half_vae"] is True
    assert "sdxl" not in v and "sdxl" not in result.unmapped and not result.notes
    assert not result.unmapped, result.unmapped
    config = config_from_values(v, "network")
    assert config.resolution == (1024, 1024) and config.cache_text_encoder_outputs and config.no_half_vae
    assert config.pretrained_model_name_or_path == "builtin:tiny-sdxl"


def test_sdxl_true_with_an_sd1_model_warns_naming_both(tiny_model_files):
    single = str(tiny_model_files["sd1"]["single"])
    result = import_kohya({**SDXL_LORA, "pretrained_model_name_or_path": single})
    assert len(result.notes) == 1
    note = result.notes[0]
    assert "sdxl = true" in note and "SD1" in note and single in note
    assert note in result.message()
    flipped = import_kohya({**SDXL_LORA, "sdxl": False})
    assert "sdxl = false" in flipped.notes[0] and "SDXL" in flipped.notes[0]
    sd1 = import_kohya({**SDXL_LORA, "sdxl": False, "pretrained_model_name_or_path": "builtin:tiny"})
    assert not sd1.notes


def test_sdxl_false_with_a_flux_model_is_no_mismatch(tmp_path):
    """FLUX has two text encoders too, but it is not SDXL: kohya_ss' sdxl = false is right for it."""
    import safetensors.torch
    import torch

    from library.models.flux_keys import BFL_MARKER

    flux = tmp_path / "flux1-dev.safetensors"
    safetensors.torch.save_file({BFL_MARKER: torch.zeros(1), "guidance_in.in_layer.weight": torch.zeros(1)}, str(flux))
    assert not import_kohya({**SDXL_LORA, "sdxl": False, "pretrained_model_name_or_path": str(flux)}).notes
    said = import_kohya({**SDXL_LORA, "sdxl": True, "pretrained_model_name_or_path": str(flux)}).notes
    assert len(said) == 1 and "sdxl = true" in said[0] and "FLUX" in said[0]


def test_sdxl_true_with_an_undetectable_model_notes_it():
    result = import_kohya({**SDXL_LORA, "pretrained_model_name_or_path": "stabilityai/not-cached-xl-base"})
    assert "sdxl = true" in result.notes[0] and "unknown:" in result.notes[0]


def test_sdxl_finetune_json_passes_the_text_encoder_rates(tmp_path):
    data = {
        "sdxl": True,
        "pretrained_model_name_or_path": "builtin:tiny-sdxl",
        "learning_rate": 1e-5,
        "learning_rate_te": 0,
        "learning_rate_te1": 5e-7,
        "learning_rate_te2": 2e-7,
        "train_text_encoder": True,
        "sdxl_no_half_vae": True,
        "sdxl_cache_text_encoder_outputs": False,
        "mixed_precision": "bf16",
        "full_bf16": True,
        "max_resolution": "1024,1024",
        "output_dir": "out",
        "output_name": "ft",
        "train_data_dir": str(REPO / "dataset_examples" / "train"),
    }
    path = tmp_path / "ft.json"
    path.write_text(json.dumps(data))
    result = import_kohya_file(path, "db")
    v = result.values
    assert v["learning_rate_te1"] == 5e-7 and v["learning_rate_te2"] == 2e-7 and v["no_half_vae"] is True
    assert not result.unmapped and not result.notes
    config = config_from_values(v, "db")
    assert config.learning_rate_te1 == 5e-7 and config.learning_rate_te2 == 2e-7 and config.full_bf16
