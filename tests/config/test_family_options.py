"""Options of one family's objective or files are refused for another family, never ignored."""

from __future__ import annotations

import pytest

from library.config.load import config_from_values
from library.errors import ConfigError
from library.models.family import check_family_options, get_model_family


def config(tmp_path, **values):
    base = {"pretrained_model_name_or_path": "builtin:tiny", "output_dir": str(tmp_path / "out"),
            "train_data_dir": str(tmp_path)}
    return config_from_values({**base, **values}, "network")


@pytest.mark.parametrize("name, value", [("timestep_sampling", "shift"), ("discrete_flow_shift", 3.1582),
                                         ("model_prediction_type", "raw"), ("weighting_scheme", "logit_normal")])
def test_flow_options_are_refused_for_sd1(tmp_path, name, value):
    with pytest.raises(ConfigError) as info:
        check_family_options(config(tmp_path, **{name: value}), get_model_family("sd1"))
    message = str(info.value)
    assert f"{name} = {value!r}" in message and "sd1" in message and "Remove" in message


def test_several_refused_options_are_named_together(tmp_path):
    cfg = config(tmp_path, timestep_sampling="shift", model_prediction_type="raw")
    with pytest.raises(ConfigError, match="model_prediction_type = 'raw', timestep_sampling = 'shift': these"):
        check_family_options(cfg, get_model_family("sdxl"))


def test_off_values_and_defaults_are_accepted(tmp_path):
    cfg = config(tmp_path, timestep_sampling="sigma", discrete_flow_shift=3.0,
                 noise_offset=0.0, fp8_base=True)
    check_family_options(cfg, get_model_family("sd1"))


def test_ddpm_options_belong_to_the_unet_families(tmp_path):
    check_family_options(config(tmp_path, min_snr_gamma=5, clip_skip=2, noise_offset=0.05),
                         get_model_family("sdxl"))
