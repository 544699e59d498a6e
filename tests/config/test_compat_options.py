"""sd-scripts options that change nothing here are accepted (with a note); console_log_file writes the log."""

from __future__ import annotations

import logging

import pytest
import toml

from library.cli import run_trainer
from library.config.load import parse_config
from library.errors import ConfigError
from library.training.lora_target import LoRATarget

BASE = {"pretrained_model_name_or_path": "builtin:tiny", "train_data_dir": "dataset_examples/train",
        "output_dir": "out"}


def parse(tmp_path, **values):
    path = tmp_path / "config.toml"
    path.write_text(toml.dumps({**BASE, **values}), encoding="utf-8")
    return parse_config(["--config_file", str(path)], "network")


@pytest.mark.parametrize("name", ["lowram", "highvram", "skip_cache_check", "console_log_simple"])
def test_performance_hints_are_accepted_with_a_note(tmp_path, caplog, name):
    with caplog.at_level(logging.INFO):
        config = parse(tmp_path, **{name: True})
    assert getattr(config, name) is True
    assert any(name in r.getMessage() and "no extra effect" in r.getMessage() for r in caplog.records)


def test_off_values_of_unsupported_options_are_skipped_and_on_values_refused(tmp_path):
    assert parse(tmp_path, dynamo_backend="no").output_dir == "out"
    with pytest.raises(ConfigError, match="dynamo_backend"):
        parse(tmp_path, dynamo_backend="inductor")


def test_console_log_file_gets_the_log(tmp_path):
    log = tmp_path / "logs" / "run.log"
    argv = ["--pretrained_model_name_or_path", "builtin:tiny", "--train_data_dir", "dataset_examples/train",
            "--output_dir", str(tmp_path / "out"), "--console_log_file", str(log),
            "--output_config", str(tmp_path / "effective.toml")]
    assert run_trainer("network", LoRATarget, argv) == 0
    assert "wrote the effective config" in log.read_text(encoding="utf-8")
    bad = [*argv[:-4], "--console_log_file", str(tmp_path / "effective.toml" / "x.log"), *argv[-2:]]
    (tmp_path / "effective.toml").write_text("", encoding="utf-8")  # a file where a folder should be
    assert run_trainer("network", LoRATarget, bad) == 2
