"""The option schema's CLI and TOML faces, validation, and --output_config round trips."""

from __future__ import annotations

import pytest

from library.cli import run_trainer, write_output_config
from library.config.load import config_from_values, parse_config, read_toml
from library.config.options import SCHEMA
from library.errors import ConfigError


@pytest.fixture
def base_args(tmp_path):
    data = tmp_path / "data"
    (data / "10_sks dog").mkdir(parents=True)
    return ["--pretrained_model_name_or_path", "builtin:tiny", "--output_dir", str(tmp_path / "out"),
            "--train_data_dir", str(data)]


def test_every_option_is_complete():
    for opt in SCHEMA.options:
        assert opt.help.strip(), opt.name
        assert opt.name == opt.name.lower() and " " not in opt.name
    # sd-scripts' names from SPEC are all declared
    for name in ("pretrained_model_name_or_path", "train_data_dir", "reg_data_dir", "output_dir", "output_name",
                 "resolution", "train_batch_size", "max_train_epochs", "max_train_steps", "learning_rate",
                 "unet_lr", "text_encoder_lr", "lr_scheduler", "lr_warmup_steps", "optimizer_type",
                 "optimizer_args", "network_module", "network_dim", "network_alpha", "network_args",
                 "network_weights", "network_train_unet_only", "network_train_text_encoder_only",
                 "noise_offset", "min_snr_gamma", "v2", "v_parameterization", "clip_skip", "max_token_length",
                 "shuffle_caption", "keep_tokens", "caption_extension", "caption_dropout_rate",
                 "caption_dropout_every_n_epochs", "caption_tag_dropout_rate", "enable_bucket",
                 "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps", "bucket_no_upscale", "flip_aug",
                 "color_aug", "random_crop", "cache_latents", "cache_latents_to_disk", "mixed_precision",
                 "save_precision", "gradient_checkpointing", "gradient_accumulation_steps", "max_grad_norm",
                 "seed", "save_every_n_epochs", "save_every_n_steps", "save_last_n_epochs", "save_model_as",
                 "prior_loss_weight", "logging_dir", "log_prefix", "training_comment", "dataset_config",
                 "config_file"):
        assert name in SCHEMA, name


def test_cli_values_are_typed(base_args):
    cfg = parse_config(base_args + ["--resolution", "512,768", "--learning_rate", "3e-4", "--shuffle_caption",
                                    "--network_args", "conv_dim=4", "conv_alpha=1", "--lr_warmup_steps", "10%"],
                       "network")
    assert cfg.resolution == (512, 768)
    assert cfg.learning_rate == pytest.approx(3e-4)
    assert cfg.shuffle_caption is True
    assert cfg.network_args == ["conv_dim=4", "conv_alpha=1"]
    assert cfg.lr_warmup_steps == "10%"
    assert cfg.train_batch_size == 1  # default
    assert "train_batch_size" not in cfg.explicit and "learning_rate" in cfg.explicit


def test_toml_sections_are_grouping_only_and_cli_overrides(tmp_path, base_args):
    toml_path = tmp_path / "cfg.toml"
    toml_path.write_text(
        '[model_arguments]\nv2 = false\nclip_skip = 2\n[training_arguments]\nlearning_rate = 1e-4\n'
        'train_batch_size = 3\nresolution = 768\n', encoding="utf-8")
    cfg = parse_config(base_args + ["--config_file", str(toml_path.with_suffix("")), "--learning_rate", "5e-5"],
                       "network")
    assert cfg.clip_skip == 2
    assert cfg.train_batch_size == 3
    assert cfg.resolution == (768, 768)
    assert cfg.learning_rate == pytest.approx(5e-5)  # the command line wins


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--lerning_rate", "1"], "Did you mean 'learning_rate'"),
        (["--learning_rate", "fast"], "'learning_rate': 'fast' is not a number"),
        (["--keep_tokens", "-1"], "'keep_tokens': -1 is out of range"),
        (["--caption_dropout_rate", "1.5"], "at most 1.0"),
        (["--mixed_precision", "fp8"], "is not one of no, fp16, bf16"),
        (["--lr_scheduler", "cosin"], "'lr_scheduler'"),
        (["--optimizer_type", "Adamm"], "Did you mean 'AdamW'"),
        (["--huggingface_repo_id", "x"], "sd-scripts option this trainer does not support yet"),
        (["--network_train_unet_only", "--network_train_text_encoder_only"], "nothing would be trained"),
        (["--cache_latents", "--random_crop"], "cannot be combined with 'cache_latents'"),
        (["--max_token_length", "100"], "is not one of 75, 150, 225"),
        (["--network_module", "networks.nothing"], "networks.nothing"),
        (["--resolution", "32"], "at least 64 pixels"),
    ],
)
def test_bad_values_name_the_problem(base_args, extra, message):
    with pytest.raises(ConfigError) as info:
        parse_config(base_args + extra, "network")
    assert message in str(info.value)


def test_missing_required_options(tmp_path):
    with pytest.raises(ConfigError, match="pretrained_model_name_or_path"):
        parse_config(["--output_dir", str(tmp_path), "--train_data_dir", str(tmp_path)], "network")
    with pytest.raises(ConfigError, match="no training data"):
        parse_config(["--pretrained_model_name_or_path", "x", "--output_dir", str(tmp_path)], "network")
    with pytest.raises(ConfigError, match="does not exist"):
        parse_config(["--pretrained_model_name_or_path", "x", "--output_dir", str(tmp_path), "--train_data_dir",
                      str(tmp_path / "missing")], "network")


def test_unknown_toml_key_names_file_and_suggests(tmp_path, base_args):
    path = tmp_path / "bad.toml"
    path.write_text("[training]\nlearning_rat = 1e-4\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        parse_config(base_args + ["--config_file", str(path)], "network")
    assert "bad.toml" in str(info.value) and "'learning_rate'" in str(info.value)


def test_broken_toml_is_a_config_error(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("learning_rate = = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        read_toml(path, "network")


def test_alias_is_accepted(base_args):
    cfg = parse_config(base_args + ["--caption_extention", ".caption"], "network")
    assert cfg.caption_extension == ".caption"


def test_output_config_round_trip(tmp_path, base_args):
    argv = base_args + ["--resolution", "640,512", "--network_dim", "16", "--network_alpha", "8",
                        "--optimizer_args", "weight_decay=0.01", "betas=0.9,0.99", "--shuffle_caption",
                        "--lr_warmup_steps", "0.05", "--text_encoder_lr", "1e-5", "--clip_skip", "2"]
    cfg = parse_config(argv, "network")
    out = tmp_path / "effective"
    cfg = cfg.replace(output_config=str(out))
    written = write_output_config(cfg)
    assert written.suffix == ".toml"
    again = parse_config(["--config_file", str(written)], "network")
    for opt in SCHEMA.for_trainer("network"):
        if not opt.transient:
            assert getattr(again, opt.name) == getattr(cfg, opt.name), opt.name


def test_output_config_exits_without_training(tmp_path, base_args):
    out = tmp_path / "x.toml"
    code = run_trainer("network", lambda cfg: pytest.fail("must not build a target"),
                       base_args + ["--output_config", str(out)])
    assert code == 0 and out.exists()


def test_user_error_exit_code_2_and_one_paragraph(capsys, base_args):
    code = run_trainer("network", lambda cfg: None, base_args + ["--keep_tokens", "x"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: option 'keep_tokens'") and "Traceback" not in err


def test_gui_values_validate_like_cli(base_args):
    values = {"pretrained_model_name_or_path": "builtin:tiny", "output_dir": base_args[3],
              "train_data_dir": base_args[5], "network_dim": "8", "flip_aug": "true"}
    cfg = config_from_values(values, "network")
    assert cfg.network_dim == 8 and cfg.flip_aug is True


def test_wandb_needs_its_package_and_the_key_is_never_written(tmp_path, base_args, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match="pip install wandb"):
        parse_config(base_args + ["--log_with", "wandb", "--logging_dir", str(tmp_path)], "network")
    cfg = parse_config(base_args + ["--wandb_api_key", "SECRET", "--wandb_run_name", "run1"], "network")
    written = write_output_config(cfg.replace(output_config=str(tmp_path / "c.toml")))
    text = written.read_text()
    assert "SECRET" not in text and 'wandb_run_name = "run1"' in text


def test_one_lr_optimizers_are_checked_before_any_model_loads(base_args):
    with pytest.raises(ConfigError, match="needs one learning rate.*unet 1.0, text encoder 0.5"):
        parse_config(base_args + ["--optimizer_type", "prodigy", "--learning_rate", "1", "--text_encoder_lr",
                                  "0.5"], "network")
    with pytest.raises(ConfigError, match="loraplus_lr_ratio"):
        parse_config(base_args + ["--optimizer_type", "DAdaptAdam", "--learning_rate", "1", "--network_args",
                                  "loraplus_lr_ratio=4"], "network")
    cfg = parse_config(base_args + ["--optimizer_type", "Prodigy", "--learning_rate", "1",
                                    "--network_train_unet_only", "--text_encoder_lr", "0.5"], "network")
    assert cfg.optimizer_type == "Prodigy"  # the text encoder is not trained: one lr in use
