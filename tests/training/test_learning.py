"""Training actually learns, and the model source does not change what is learnt."""

from __future__ import annotations

import pytest
import torch

from library.config.load import config_from_values
from library.models.loading import load_base_model
from library.networks import get_network_type
from tests.training.helpers import base_options, held_out_loss, read_lora, train

pytestmark = pytest.mark.slow


def test_training_lowers_the_loss(tmp_path, tiny_dataset):
    opts = base_options(tiny_dataset, tmp_path / "out", max_train_steps=60, learning_rate=3e-3)
    assert train(tmp_path, opts) == 0
    config = config_from_values(opts, "network")
    model = load_base_model("builtin:tiny")
    before = held_out_loss(model, config)
    network, _ = get_network_type("networks.lora").from_weights(tmp_path / "out" / "lora.safetensors", model.unet,
                                                                model.text_encoder)
    network.apply_to()
    after = held_out_loss(model, config)
    assert after < before * 0.97, (before, after)


def test_single_file_and_diffusers_copies_train_alike(tmp_path, tiny_dataset, tiny_model_files):
    results = {}
    for source in ("folder", "single"):
        opts = base_options(tiny_dataset, tmp_path / source, max_train_steps=1,
                            pretrained_model_name_or_path=str(tiny_model_files["sd1"][source]))
        config = config_from_values(opts, "network")
        model = load_base_model(opts["pretrained_model_name_or_path"])
        results[source + "_loss"] = held_out_loss(model, config, draws=1)
        assert train(tmp_path, opts) == 0
        results[source] = read_lora(tmp_path / source / "lora.safetensors")[0]
    assert results["folder_loss"] == results["single_loss"]
    assert all(torch.equal(results["folder"][k], results["single"][k]) for k in results["folder"])
