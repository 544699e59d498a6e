"""sd-scripts' values (issue 14): its bounds, and its spellings of "off" (false, 0, "") for every option."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from library.config.load import config_from_values, parse_config
from library.config.options import SCHEMA
from library.config.values import empty_is_unset
from library.errors import ConfigError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sdscripts"
#: options without which nothing runs: their "unset" is the "missing" error, tested elsewhere
REQUIRED = ("pretrained_model_name_or_path", "output_dir", "train_data_dir")
#: options another area's rules tie to others (an off value of one is fine, tested there)
TRANSIENT = ("config_file", "output_config", "estimate")


@pytest.fixture
def base(tmp_path):
    data = tmp_path / "data" / "1_thing"
    data.mkdir(parents=True)
    return {"pretrained_model_name_or_path": "builtin:tiny", "train_data_dir": str(data.parent),
            "output_dir": str(tmp_path / "out")}


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        # sd-scripts rounds min/max_bucket_reso to bucket_reso_steps and only checks them against the resolution
        ({"min_bucket_reso": 32}, {"min_bucket_reso": 32}),
        ({"min_bucket_reso": 1, "enable_bucket": True}, {"min_bucket_reso": 1}),
        ({"bucket_reso_steps": 1}, {"bucket_reso_steps": 1}),
        ({"bucket_reso_steps": 4, "enable_bucket": True}, {"bucket_reso_steps": 4}),
        ({"max_bucket_reso": 32, "min_bucket_reso": 16}, {"max_bucket_reso": 32}),
        # 0 where sd-scripts reads it as unset: the default
        ({"max_bucket_reso": 0}, {"max_bucket_reso": 1024}),
        ({"bucket_reso_steps": 0}, {"bucket_reso_steps": 64}),
        ({"vae_batch_size": 0}, {"vae_batch_size": 1}),
        ({"max_train_epochs": 0}, {"max_train_epochs": None}),
        ({"clip_skip": 0}, {"clip_skip": None}),
        ({"max_token_length": 0}, {"max_token_length": None}),
        ({"sample_every_n_epochs": 0, "sample_every_n_steps": 0}, {"sample_every_n_epochs": None}),
        ({"min_snr_gamma": 0}, {"min_snr_gamma": None}),
        ({"noise_offset": 0.0}, {"noise_offset": None}),
        ({"multires_noise_iterations": 0}, {"multires_noise_iterations": None}),
        ({"max_grad_norm": 0}, {"max_grad_norm": 0.0}),  # 0 is sd-scripts' "no clipping", not the default 1.0
        ({"resume": False}, {"resume": None}),
        ({"resume": ""}, {"resume": None}),
        ({"mixed_precision": ""}, {"mixed_precision": "no"}),
        ({"log_with": ""}, {"log_with": None}),
        ({"flip_aug": 0}, {"flip_aug": False}),
        ({"network_alpha": 0, "network_dim": 16}, {"network_alpha": 16.0}),  # sd-scripts: alpha 0 = the rank
        ({"validation_split": 0}, {"validation_split": 0.0}),
    ],
)
def test_values_sd_scripts_accepts(base, values, expected):
    config = config_from_values({**base, **values}, "network")
    for name, value in expected.items():
        assert getattr(config, name) == value, name


def test_off_values_are_not_counted_as_set(base):
    config = config_from_values({**base, "max_bucket_reso": 0, "resolution": "", "v2": False}, "network")
    assert "max_bucket_reso" not in config.explicit and "resolution" not in config.explicit
    assert "v2" in config.explicit  # false is a value of a switch, not "unset"


def _off_values(opt) -> list:
    values = []
    if empty_is_unset(opt):
        values.append("")
    if opt.kind != "bool":
        values.append(False)
    if opt.zero_is_off:
        values += [0, "0"]
    return values


OFF = {opt.name: _off_values(opt) for opt in SCHEMA.options if opt.name not in REQUIRED + TRANSIENT}


def test_every_non_switch_option_has_off_values():
    non_bool = {o.name for o in SCHEMA.options if o.kind != "bool" and o.name not in REQUIRED + TRANSIENT}
    assert non_bool <= {name for name, values in OFF.items() if values}
    assert {"clip_skip", "min_snr_gamma", "save_every_n_epochs", "vae_batch_size"} <= {
        name for name in OFF if 0 in OFF[name]}


@pytest.mark.parametrize("trainer", ["network", "db"])
@pytest.mark.parametrize("which", [0, 1, 2, 3])
def test_every_off_value_validates_as_the_default(base, trainer, which):
    """Every option's off values (its ``""``, ``false``, ``0`` and ``"0"``, as they apply) validate in either
    trainer, all at once, and read as the option's default; another trainer's options are skipped when off."""
    from library.config.values import coerce

    values = {name: offs[which] for name, offs in OFF.items() if len(offs) > which}
    assert len(values) > 20
    config = config_from_values({**base, **values}, trainer)
    for name in values:
        opt = SCHEMA[name]
        if trainer in opt.trainers:
            assert getattr(config, name) == coerce(opt, opt.default), name
            assert name not in config.explicit, name
        else:
            assert not hasattr(config, name)


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"network_dim": 0}, ("network_dim", "at least 1")),
        ({"train_batch_size": 0}, ("train_batch_size", "at least 1")),
        ({"output_name": ""}, ("output_name", "empty")),
        ({"caption_extension": ""}, ("caption_extension", "empty")),
        ({"huber_c": 0}, ("huber_c", "greater than 0")),
        ({"clip_skip": -1}, ("clip_skip", "at least 1")),
        ({"bucket_reso_steps": -64}, ("bucket_reso_steps", "at least 1")),
        ({"mixed_precision": "fp8"}, ("mixed_precision", "not one of")),
        ({"resume": "no-such-state"}, ("resume", "does not exist")),
        ({"full_bf16": True}, ("full_bf16", "not used by this trainer")),
        ({"enable_bucket": True, "min_bucket_reso": 2048}, ("min_bucket_reso", "max_bucket_reso")),
        ({"validation_split": 1.0}, ("validation_split", "below 1")),
    ],
)
def test_real_mistakes_keep_their_errors(base, values, words):
    with pytest.raises(ConfigError) as info:
        config_from_values({**base, **values}, "network")
    for word in words:
        assert word in str(info.value)


def test_other_trainers_off_options_are_skipped_without_a_note(base, caplog):
    with caplog.at_level(logging.INFO):
        config = config_from_values({**base, "full_bf16": False, "full_fp16": False, "learning_rate_te": 0,
                                     "stop_text_encoder_training": 0, "train_text_encoder": False}, "network")
    assert not hasattr(config, "full_bf16")
    assert not any("full_bf16" in r.getMessage() for r in caplog.records)
    with caplog.at_level(logging.INFO):
        config_from_values({**base, "network_alpha": 0, "network_dim": 8}, "network")
    assert any("network_alpha = 0 means alpha = network_dim (8)" in r.getMessage() for r in caplog.records)


def test_command_line_zero_is_off_too(base):
    argv = [x for k, v in base.items() for x in (f"--{k}", v)]
    config = parse_config([*argv, "--min_snr_gamma", "0", "--save_every_n_epochs", "0", "--vae_batch_size", "0"],
                          "network")
    assert (config.min_snr_gamma, config.save_every_n_epochs, config.vae_batch_size) == (None, None, 1)


@pytest.mark.parametrize("trainer", ["network", "db"])
def test_kohya_gui_defaults_file_validates(base, tmp_path, trainer):
    """The kohya_ss GUI's defaults (its false / 0 / "" for empty fields) under sd-scripts' names."""
    text = (FIXTURES / "kohya_gui_defaults.toml").read_text(encoding="utf-8")
    path = tmp_path / "gui_defaults.toml"
    path.write_text(text, encoding="utf-8")
    argv = [x for k, v in base.items() for x in (f"--{k}", v)]
    config = parse_config(["--config_file", str(path), *argv], trainer)
    assert config.max_train_steps == 1600 and config.max_train_epochs is None  # 0: unset, sd-scripts' default
    assert config.min_snr_gamma is None and config.noise_offset is None and config.resume is None
    assert config.log_with is None and config.vae_batch_size == 1 and config.sample_prompts is None
    assert config.sample_sampler == "euler_a" and config.max_bucket_reso == 2048
