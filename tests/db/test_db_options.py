"""DreamBooth options, rules, the target's hooks and saving helpers (fast: no training)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import toml
import torch

from library.config.load import config_from_values
from library.config.options_db import check_db_rules, text_encoder_steps
from library.errors import ConfigError
from library.models.loading import load_base_model
from library.training.db_target import DreamBoothTarget, save_format_name
from library.util.atomic import atomic_folder
from tests.db.db_helpers import db_options

REPO = Path(__file__).resolve().parents[2]


def db_config(tiny_dataset, tmp_path, **overrides):
    return config_from_values(db_options(tiny_dataset, tmp_path / "out", **overrides), "db")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, None),
        ({"stop_text_encoder_training": 5}, 5),
        ({"stop_text_encoder_training": 0}, 0),
        ({"stop_text_encoder_training": -1}, 0),
        ({"train_text_encoder": False, "stop_text_encoder_training": 5}, 0),
        ({"learning_rate_te": 0.0}, 0),
        ({"learning_rate_te": 1e-5}, None),
    ],
)
def test_text_encoder_steps(tiny_dataset, tmp_path, overrides, expected):
    assert text_encoder_steps(db_config(tiny_dataset, tmp_path, **overrides)) == expected


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"full_fp16": True}, "'full_fp16' needs mixed_precision = \"fp16\""),
        ({"full_bf16": True, "mixed_precision": "fp16"}, "'full_bf16' needs mixed_precision = \"bf16\""),
        ({"full_fp16": True, "full_bf16": True, "mixed_precision": "fp16"}, "both set"),
        ({"no_token_padding": True, "max_token_length": 150}, "max_token_length = 150"),
    ],
)
def test_db_rules_reject_conflicts(tiny_dataset, tmp_path, overrides, message):
    # validation (CLI, TOML and GUI alike) refuses the config before any model is loaded
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        db_config(tiny_dataset, tmp_path, **overrides)


def test_db_rules_accept_matching_precision(tiny_dataset, tmp_path):
    check_db_rules(db_config(tiny_dataset, tmp_path, full_fp16=True, mixed_precision="fp16"))
    check_db_rules(db_config(tiny_dataset, tmp_path, full_bf16=True, mixed_precision="bf16"))


def test_db_options_are_db_only(tiny_dataset, tmp_path):
    opts = db_options(tiny_dataset, tmp_path / "out", stop_text_encoder_training=3)
    with pytest.raises(ConfigError, match="not used by this trainer"):
        config_from_values(opts, "network")
    with pytest.raises(ConfigError, match="stop_text_encoder_training"):
        db_config(tiny_dataset, tmp_path, stop_text_encoder_training=-2)


@pytest.mark.parametrize(
    ("save_model_as", "use_safetensors", "expected", "ext"),
    [
        ("safetensors", False, "safetensors", "safetensors"),
        ("ckpt", False, "ckpt", "ckpt"),
        ("ckpt", True, "safetensors", "safetensors"),
        ("diffusers", False, "diffusers", ""),
        ("diffusers", True, "diffusers_safetensors", ""),  # a folder: no extension
    ],
)
def test_save_formats(tiny_dataset, tmp_path, save_model_as, use_safetensors, expected, ext):
    assert save_format_name(save_model_as, use_safetensors) == expected
    config = db_config(tiny_dataset, tmp_path, save_model_as=save_model_as, use_safetensors=use_safetensors)
    assert DreamBoothTarget(config).file_ext == ext


def test_param_groups_and_stop_hook(tiny_dataset, tmp_path):
    config = db_config(
        tiny_dataset, tmp_path, learning_rate=1e-4, learning_rate_te=5e-5, stop_text_encoder_training=2
    )
    model = load_base_model("builtin:tiny")
    target = DreamBoothTarget(config)
    target.attach(model, config)
    groups = target.param_groups(config)
    assert [(g["name"], g["lr"]) for g in groups] == [("text_encoder", 5e-5), ("unet", 1e-4)]
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(
        p.numel() for m in (model.unet, model.text_encoder) for p in m.parameters()
    )
    assert target.modules() == [model.text_encoder, model.unet]
    assert target.ddp_find_unused_parameters
    target.on_step_end(1)
    assert target.trains_text_encoder and all(p.requires_grad for p in model.text_encoder.parameters())
    target.on_step_end(2)
    assert not target.trains_text_encoder
    assert not any(p.requires_grad for p in model.text_encoder.parameters())
    assert all(p.requires_grad for p in model.unet.parameters())


def test_unet_only_groups(tiny_dataset, tmp_path):
    config = db_config(tiny_dataset, tmp_path, stop_text_encoder_training=-1, learning_rate=2e-6)
    model = load_base_model("builtin:tiny")
    target = DreamBoothTarget(config)
    assert not target.trains_text_encoder and not target.ddp_find_unused_parameters
    target.attach(model, config)
    assert [(g["name"], g["lr"]) for g in target.param_groups(config)] == [("unet", 2e-6)]
    assert not any(p.requires_grad for p in model.text_encoder.parameters())


def test_no_token_padding_tokenizes_to_the_longest_caption():
    model = load_base_model("builtin:tiny")
    captions = ["sks disc", "a red disc on a shaded background"]
    padded = model.tokenize(captions)
    unpadded = model.tokenize(captions, pad=False)
    longest = len(model.tokenizer(captions[1]).input_ids)  # BOS + tokens + EOS
    assert padded.shape == (2, 77) and unpadded.shape == (2, longest)
    assert torch.equal(unpadded, padded[:, :longest])
    with torch.no_grad():
        states = model.encode_tokens(unpadded)
    assert states.shape == (2, longest, model.text_encoder.config.hidden_size)
    with pytest.raises(ConfigError, match="no_token_padding"):
        model.tokenize(captions, 150, pad=False)


def test_atomic_folder_replaces_and_cleans_up(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_folder(target) as tmp:
        (tmp / "new.txt").write_text("new")
        assert not (target / "new.txt").exists()
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    with pytest.raises(RuntimeError), atomic_folder(target) as tmp:
        (tmp / "broken.txt").write_text("x")
        raise RuntimeError("crash while saving")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_preset_validates(tiny_dataset, tmp_path):
    raw = toml.loads((REPO / "presets" / "sd15_dreambooth.toml").read_text(encoding="utf-8"))
    assert raw["model"]["pretrained_model_name_or_path"].endswith(".safetensors")
    flat = {k: v for section in raw.values() if isinstance(section, dict) for k, v in section.items()}
    flat.update({k: v for k, v in raw.items() if not isinstance(v, dict)})
    flat.update(train_data_dir=str(tiny_dataset / "train"), reg_data_dir=str(tiny_dataset / "reg"))
    config = config_from_values(flat, "db")
    assert config.save_model_as == "safetensors" and config.resolution == (512, 512)
    check_db_rules(config)


@pytest.mark.slow  # a few seconds (subprocesses / imports): fast tier budget
def test_train_db_cli_bad_config_exits_2(tmp_path, tiny_dataset):
    opts = db_options(tiny_dataset, tmp_path / "out", full_bf16=True)
    path = tmp_path / "bad.toml"
    path.write_text(toml.dumps(opts), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "train_db.py", "--config_file", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert "full_bf16' needs mixed_precision" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
