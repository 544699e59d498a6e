"""The SDXL presets validate with the CLI's validation, are listed for their trainer and load into the form
with the SDXL settings people use (1024 px, bf16, cached latents, no_half_vae)."""

from __future__ import annotations

from pathlib import Path

import pytest

from library.config.load import read_toml
from library.gui import configs
from library.gui.family_hint import family_hint

REPO = Path(__file__).resolve().parents[2]
SDXL_PRESETS = {
    "sdxl_character_lora_illustrious": "network",
    "sdxl_style_lora_prodigy": "network",
    "sdxl_finetune": "db",
    "sdxl_quickstart": "network",
}


@pytest.mark.parametrize("name,trainer", sorted(SDXL_PRESETS.items()))
def test_sdxl_presets_validate_and_are_listed(name, trainer):
    assert name in configs.list_presets(trainer)
    fields = configs.load_config(trainer, configs.preset_path(name))
    fields.update(train_data_dir=str(REPO / "dataset_examples" / "train"), reg_data_dir="")
    config = configs.validate(trainer, fields)
    assert config.output_name and config.output_dir and config.no_half_vae
    if name != "sdxl_quickstart":
        assert config.resolution == (1024, 1024) and config.mixed_precision == "bf16"
        assert config.cache_latents and config.gradient_checkpointing
        assert (config.min_bucket_reso, config.max_bucket_reso) == (512, 2048)


def test_the_sdxl_quickstart_runs_on_the_builtin_tiny_sdxl_model():
    values = read_toml(configs.preset_path("sdxl_quickstart"), "network")
    assert values["pretrained_model_name_or_path"] == "builtin:tiny-sdxl"
    assert family_hint(values["pretrained_model_name_or_path"]).multi_text_encoder
    for key in ("train_data_dir", "reg_data_dir"):
        assert (REPO / values[key]).is_dir()
    assert values["resolution"] in ("128", (128, 128))


def test_the_unet_only_presets_cache_the_text_encoder_outputs():
    for name in ("sdxl_style_lora_prodigy", "sdxl_finetune"):
        values = read_toml(configs.preset_path(name), SDXL_PRESETS[name])
        assert values["cache_text_encoder_outputs"] is True
        assert not values.get("shuffle_caption")
        assert values.get("network_train_unet_only") or values.get("train_text_encoder") is False
