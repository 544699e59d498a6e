"""The hand-written kohya_ss configs of tests/fixtures/kohya_ss (DreamBooth, Finetune, an SDXL LoRA), imported as
a user would, their paths pointed at the tiny models and dataset, train 2 steps with the trainer they name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from library.gui.kohya_import import guess_trainer, import_kohya, read_kohya_json
from tests.db.db_helpers import train_db
from tests.training.helpers import read_lora, train

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kohya_ss"
SHORT = {"max_resolution": "64,64", "max_train_steps": 2, "epoch": 1, "sample_every_n_steps": 0,
         "sample_every_n_epochs": 0, "save_every_n_epochs": 0, "cache_latents_to_disk": False,
         "bucket_reso_steps": 64, "min_bucket_reso": 64, "max_bucket_reso": 128}


def imported(name: str, **paths) -> tuple[str, dict]:
    data = {**read_kohya_json(FIXTURES / name), **SHORT, **paths}
    trainer = guess_trainer(data)
    result = import_kohya(data, trainer)
    assert not result.refused, result.message()
    return trainer, result.values


def test_dreambooth_fixture_trains(tmp_path, tiny_dataset):
    trainer, values = imported("dreambooth_sd15.json", train_data_dir=str(tiny_dataset / "train"),
                               output_dir=str(tmp_path / "out"))
    assert trainer == "db"
    code, _ = train_db(tmp_path, values)
    assert code == 0 and (tmp_path / "out" / "db_sd15.safetensors").stat().st_size > 0


def test_finetune_fixture_trains_from_its_metadata(tmp_path, tiny_dataset):
    pictures = tiny_dataset / "train" / "2_sks disc"
    meta_dir = tmp_path / "finetune"
    meta_dir.mkdir()
    entries = {str(p): {"caption": "sks disc", "tags": "red, picture"} for p in sorted(pictures.glob("*.png"))}
    (meta_dir / "meta_lat.json").write_text(json.dumps(entries), encoding="utf-8")
    trainer, values = imported("finetune_sd15.json", train_dir=str(meta_dir), image_folder=str(pictures),
                               output_dir=str(tmp_path / "out"))
    assert trainer == "db" and Path(values["in_json"]).parent == meta_dir
    assert values["output_dir"] == str(tmp_path / "out")  # train_dir does not replace it
    code, _ = train_db(tmp_path, values)
    assert code == 0 and (tmp_path / "out" / "ft_sd15.safetensors").stat().st_size > 0


def test_sdxl_lora_fixture_trains_on_the_tiny_sdxl(tmp_path, tiny_dataset):
    trainer, values = imported("lora_standard_sdxl_multi_gpu.json", train_data_dir=str(tiny_dataset / "train"),
                               output_dir=str(tmp_path / "out"), lr_warmup_steps=0)
    assert trainer == "network" and values["pretrained_model_name_or_path"] == "builtin:tiny-sdxl"
    assert train(tmp_path, values) == 0
    tensors, metadata = read_lora(tmp_path / "out" / "sdxl_lora.safetensors")
    assert metadata["ss_steps"] == "2" and metadata["ss_base_model_version"].startswith("sdxl")
    assert any(k.startswith("lora_unet_") for k in tensors)


def test_textual_inversion_fixture_trains(tmp_path, tiny_dataset):
    import toml
    from accelerate.state import AcceleratorState

    from library.cli import run_trainer
    from library.training.ti_target import TextualInversionTarget

    trainer, values = imported("ti_sd15.json", train_data_dir=str(tiny_dataset / "train"),
                               output_dir=str(tmp_path / "out"), init_word="disc")
    assert trainer == "ti" and values["use_object_template"] is True
    config = tmp_path / "ti.toml"
    config.write_text(toml.dumps(values), encoding="utf-8")
    AcceleratorState._reset_state(True)
    assert run_trainer("ti", TextualInversionTarget, ["--config_file", str(config)]) == 0
    tensors, _ = read_lora(tmp_path / "out" / "ti.safetensors")
    assert tensors["emb_params"].shape[0] == 4  # num_vectors_per_token
