"""fine_tune.py's options: in_json / dataset_repeats in the schema, its own text-encoder default, the rules."""

from __future__ import annotations

import pytest
import toml

from library.config.load import config_from_values, parse_config
from library.config.options_finetune import FINE_TUNE_DEFAULTS, schema_with_defaults
from library.errors import ConfigError
from tests.finetune.ft_helpers import write_json


def _values(tmp_path, **extra):
    meta = write_json(tmp_path / "meta.json", {"img0": {"caption": "a"}})
    return {
        "pretrained_model_name_or_path": "builtin:tiny",
        "output_dir": str(tmp_path / "out"),
        "in_json": str(meta),
        **extra,
    }


@pytest.mark.parametrize("trainer", ["db", "network"])
def test_in_json_alone_is_training_data(tmp_path, trainer):
    config = config_from_values(_values(tmp_path, dataset_repeats=4), trainer)
    assert (
        config.in_json.endswith("meta.json") and config.dataset_repeats == 4 and config.train_data_dir is None
    )


def test_fine_tune_keeps_the_text_encoder_frozen_unless_asked(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(toml.dumps(_values(tmp_path)), encoding="utf-8")
    schema = schema_with_defaults(FINE_TUNE_DEFAULTS)
    assert (
        parse_config(["--config_file", str(path)], "db", schema).train_text_encoder is False
    )  # sd-scripts' fine_tune.py
    assert (
        parse_config(["--config_file", str(path), "--train_text_encoder"], "db", schema).train_text_encoder
        is True
    )
    assert (
        parse_config(["--config_file", str(path)], "db").train_text_encoder is True
    )  # train_db.py unchanged
    path.write_text(toml.dumps(_values(tmp_path, train_text_encoder=True)), encoding="utf-8")
    assert parse_config(["--config_file", str(path)], "db", schema).train_text_encoder is True


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        ({"in_json": "nope.json"}, ["in_json", "nope.json", "does not exist"]),
        ({"dataset_repeats": 0}, ["dataset_repeats", "at least 1"]),
        ({"reg_data_dir": "."}, ["reg_data_dir", "in_json", "regularisation"]),
    ],
)
def test_rules(tmp_path, extra, needles):
    with pytest.raises(ConfigError) as err:
        config_from_values(_values(tmp_path, **extra), "db")
    for needle in needles:
        assert needle in str(err.value)


def test_no_data_names_in_json(tmp_path):
    values = _values(tmp_path)
    del values["in_json"]
    with pytest.raises(ConfigError, match="in_json"):
        config_from_values(values, "db")
