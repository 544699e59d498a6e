"""The FLUX presets (12, 16, 24 GB) validate, are listed for train_network.py, and one trains end to end on
the tiny FLUX (fp8_base, blocks_to_swap, cached latents and text-encoder outputs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from library.gui import configs

REPO = Path(__file__).resolve().parents[2]
PRESETS = {"flux_lora_24gb": None, "flux_lora_16gb": 8, "flux_lora_12gb": 16}


def _fields(name, files):
    fields = configs.load_config("network", configs.preset_path(name))
    fields.update(pretrained_model_name_or_path=str(files["transformer"]), clip_l=str(files["clip_l"]),
                  t5xxl=str(files["t5xxl"]), ae=str(files["ae"]),
                  train_data_dir=str(REPO / "dataset_examples" / "train"))
    return fields


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_flux_presets_validate_and_are_listed(name, tiny_flux_files):
    assert name in configs.list_presets("network")
    config = configs.validate("network", _fields(name, tiny_flux_files["files"]))
    assert config.fp8_base and config.gradient_checkpointing and config.cache_text_encoder_outputs
    assert config.blocks_to_swap == PRESETS[name]
    assert config.network_module == "networks.lora_flux" and config.network_train_unet_only
    assert (config.timestep_sampling, config.model_prediction_type) == ("shift", "raw")


@pytest.mark.slow
def test_the_12gb_preset_trains_on_the_tiny_flux(tmp_path, tiny_flux_files, tiny_dataset):
    import toml

    from tests.training.helpers import read_lora, train

    fields = _fields("flux_lora_12gb", tiny_flux_files["files"])
    values = {k: v for k, v in fields.items() if v not in (None, "", [])}
    values.update(train_data_dir=str(tiny_dataset / "train"), output_dir=str(tmp_path / "out"),
                  logging_dir=None, resolution="64", min_bucket_reso=64, max_bucket_reso=128, max_train_steps=2,
                  max_train_epochs=None, blocks_to_swap=3, t5xxl_max_token_length=32, optimizer_type="AdamW",
                  save_every_n_epochs=None)
    values = {k: v for k, v in values.items() if v is not None}
    assert train(tmp_path, toml.loads(toml.dumps(values))) == 0
    tensors, meta = read_lora(tmp_path / "out" / "flux_lora.safetensors")
    assert meta["ss_base_model_version"] == "flux1" and len(tensors) == 48 * 3
