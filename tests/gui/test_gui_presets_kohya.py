"""Presets validate with the CLI's validation and load into the forms; kohya_ss GUI JSON import."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from library.config.load import config_from_values
from library.errors import ConfigError
from library.gui import configs
from library.gui.kohya_import import import_kohya, import_kohya_file

REPO = Path(__file__).resolve().parents[2]
SHIPPED = {
    "quickstart": "network",
    "sd15_character_lora_adamw8bit": "network",
    "sd15_style_lora_lion": "network",
    "sd15_lora_prodigy": "network",
    "sd15_dreambooth": "db",
    "sd2_vpred_lora": "network",
}


@pytest.mark.parametrize("name,trainer", sorted(SHIPPED.items()))
def test_presets_validate_and_are_listed(name, trainer, tmp_path):
    assert name in configs.list_presets(trainer)
    fields = configs.load_config(trainer, configs.preset_path(name))
    fields.update(train_data_dir=str(REPO / "dataset_examples" / "train"), reg_data_dir="")
    config = configs.validate(trainer, fields)
    assert config.output_name and config.output_dir


def test_print_command_is_an_argument_list():
    argv = configs.trainer_command("network", "out/x.toml")
    assert argv[1].endswith("train_network.py") and argv[-2:] == ["--config_file", "out/x.toml"]
    assert configs.trainer_command("db", "a b.toml", "accelerate")[:2] == ["accelerate", "launch"]


KOHYA = {
    "LoRA_type": "Kohya LoCon",
    "conv_dim": 8,
    "conv_alpha": 4,
    "epoch": 6,
    "max_resolution": "512,768",
    "lr_warmup": 10,
    "optimizer": "AdamW8bit",
    "optimizer_args": "weight_decay=0.01 betas=0.9,0.99",
    "network_dim": 16,
    "network_alpha": 8,
    "learning_rate": 0.0001,
    "train_batch_size": 2,
    "pretrained_model_name_or_path": "builtin:tiny",
    "output_dir": "out",
    "output_name": "k",
    "train_data_dir": str(REPO / "dataset_examples" / "train"),
    "shuffle_caption": True,
    "keep_tokens": 1,
    "xformers": "xformers",
    "sdxl": False,
    "vae": "",
    "gpu_ids": "",
    "num_processes": 1,
    "some_future_field": "value",
    "use_wandb": True,
    "color_aug": False,
    "clip_skip": 2,
}


def test_kohya_json_maps_renamed_fields_and_reports_the_rest():
    result = import_kohya(KOHYA)
    v = result.values
    assert v["network_module"] == "networks.lora"
    assert v["network_args"] == ["conv_dim=8", "conv_alpha=4"]
    assert v["max_train_epochs"] == 6 and v["resolution"] == "512,768" and v["lr_warmup_steps"] == "10%"
    assert v["optimizer_type"] == "AdamW8bit" and v["optimizer_args"] == [
        "weight_decay=0.01",
        "betas=0.9,0.99",
    ]
    assert v["clip_skip"] == 2 and "vae" not in v
    assert set(result.unmapped) == {"some_future_field"}
    assert v["log_with"] == "wandb"  # kohya_ss' legacy use_wandb, converted as its update_my_data does
    assert v["xformers"] is True
    assert "some_future_field" in result.message()
    unsupported = {k: v for k, v in v.items() if k != "log_with"}  # wandb is not installed for the tests
    config = config_from_values(unsupported, "network")
    assert config.resolution == (512, 768) and config.network_dim == 16


def test_kohya_lycoris_and_bad_files(tmp_path):
    loha = import_kohya({"LoRA_type": "LyCORIS/LoHa"}).values["network_args"]
    assert "algo=loha" in loha and "conv_dim=1" in loha  # a missing field keeps kohya_ss' form default
    assert "LoRA_type" in import_kohya({"LoRA_type": "Kohya DyLoRA"}).unmapped
    assert "LoRA_type" in import_kohya({"LoRA_type": "Made-up type"}).unmapped
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json"):
        import_kohya_file(bad)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"epoch": 2}))
    assert import_kohya_file(good).values == {"max_train_epochs": 2}


def test_listen_everywhere_without_login_warns():
    from library.gui.app import exposure_warning

    assert exposure_warning("127.0.0.1", False, False) is None
    assert "--username" in exposure_warning("0.0.0.0", False, False)
    assert exposure_warning("0.0.0.0", False, True) is None
    assert "share" in exposure_warning("127.0.0.1", True, False)


@pytest.mark.slow  # a subprocess that loads the model: about 15 s
def test_estimate_button_reports_the_trainers_estimate(tmp_path):
    from library.gui.jobs import JobRunner
    from library.gui.run_queue import TrainingQueue
    from library.gui.training_tab import TrainingForm

    form = TrainingForm("network", JobRunner(tmp_path / "job"), TrainingQueue(tmp_path / "q", None, None))
    fields = configs.load_config("network", configs.preset_path("quickstart"))
    fields.update(train_data_dir=str(REPO / "dataset_examples" / "train"),
                  reg_data_dir=str(REPO / "dataset_examples" / "reg"), output_dir=str(tmp_path / "out"))
    report = form.estimate(*[fields[n] for n in form.names])
    assert report.startswith("Estimate for train_network.py"), report
    assert "peak" in report and "120 steps" in report  # 3 epochs x 40 steps, as the quick start trains
    assert not (tmp_path / "out").exists()  # an estimate writes nothing
    fields.update(pretrained_model_name_or_path=str(tmp_path / "missing.safetensors"))
    failed = form.estimate(*[fields[n] for n in form.names])
    assert failed.startswith("❌") and "missing.safetensors" in failed
