"""fused_backward_pass: stepping each weight during backward gives the same run as one optimizer step."""

from __future__ import annotations

import pytest
import torch

from library.config.load import config_from_values
from library.errors import ConfigError
from library.training.fused_backward import check_fused_backward, install_fused_backward
from tests.db.db_helpers import db_options, state_of, train_db


def test_fused_steps_equal_one_step():
    from transformers.optimization import Adafactor

    torch.manual_seed(0)
    layers = [torch.nn.Linear(8, 8) for _ in range(2)]
    copies = [torch.nn.Linear(8, 8) for _ in range(2)]
    for a, b in zip(layers, copies, strict=True):
        b.load_state_dict(a.state_dict())
    plain = Adafactor([p for m in layers for p in m.parameters()], lr=1e-2, relative_step=False)
    fused = Adafactor([p for m in copies for p in m.parameters()], lr=1e-2, relative_step=False)
    install_fused_backward(fused, None)
    x = torch.randn(4, 8)
    for _ in range(3):
        layers[1](layers[0](x)).pow(2).mean().backward()
        plain.step()
        plain.zero_grad()
        copies[1](copies[0](x)).pow(2).mean().backward()  # the update happens here
        assert all(p.grad is None for m in copies for p in m.parameters())
    for a, b in zip(layers, copies, strict=True):
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_fused_backward_refuses_what_it_cannot_do():
    config = config_from_values({"pretrained_model_name_or_path": "builtin:tiny", "train_data_dir": "dataset_examples",
                                 "output_dir": "out", "gradient_accumulation_steps": 2,
                                 "fused_backward_pass": True}, "db")
    with pytest.raises(ConfigError, match="fused_backward_pass cannot be used here: optimizer_type is 'AdamW'.*"
                                          "gradient_accumulation_steps is 2"):
        check_fused_backward(config, "AdamW", 1)


@pytest.mark.slow
def test_fused_fine_tune_equals_the_plain_one(tmp_path, tiny_dataset):
    common = dict(optimizer_type="AdaFactor", max_grad_norm=0, learning_rate=1e-3,
                  optimizer_args=["relative_step=False", "scale_parameter=False"], lr_scheduler="constant")
    code, plain = train_db(tmp_path, db_options(tiny_dataset, tmp_path / "a", **common))
    assert code == 0
    code, fused = train_db(tmp_path, db_options(tiny_dataset, tmp_path / "b", fused_backward_pass=True, **common))
    assert code == 0
    a, b = state_of(plain._model.unet), state_of(fused._model.unet)
    assert all(torch.equal(a[k], b[k]) for k in a)
    base = state_of(__import__("library.models.loading", fromlist=["x"]).load_base_model("builtin:tiny").unet)
    assert any(not torch.equal(a[k], base[k]) for k in a)


@pytest.mark.parametrize("make", [
    lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1),
    lambda params: torch.optim.SGD(params, lr=1e-2, momentum=0.9, nesterov=True),
], ids=["AdamW", "SGDNesterov"])
def test_blockwise_fused_steps_equal_one_step_for_per_weight_optimizers(make):
    """blockwise_fused_optimizers: AdamW (and the like) stepped weight by weight during backward gives the
    whole step's weights bit for bit."""
    torch.manual_seed(0)
    layers = [torch.nn.Linear(8, 8) for _ in range(2)]
    copies = [torch.nn.Linear(8, 8) for _ in range(2)]
    for a, b in zip(layers, copies, strict=True):
        b.load_state_dict(a.state_dict())
    plain = make([p for m in layers for p in m.parameters()])
    fused = make([p for m in copies for p in m.parameters()])
    install_fused_backward(fused, None)
    x = torch.randn(4, 8)
    for _ in range(3):
        layers[1](layers[0](x)).pow(2).mean().backward()
        plain.step()
        plain.zero_grad()
        copies[1](copies[0](x)).pow(2).mean().backward()
        assert all(p.grad is None for m in copies for p in m.parameters())
    for a, b in zip(layers, copies, strict=True):
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_blockwise_fused_optimizers_takes_adamw_and_refuses_prodigy():
    values = {"pretrained_model_name_or_path": "builtin:tiny", "train_data_dir": "dataset_examples",
              "output_dir": "out", "blockwise_fused_optimizers": True}
    check_fused_backward(config_from_values(values, "db"), "AdamW", 1)
    check_fused_backward(config_from_values(values, "db"), "AdamW8bit", 1)
    with pytest.raises(ConfigError, match="blockwise_fused_optimizers cannot be used here: optimizer_type is "
                                          "'Prodigy'"):
        check_fused_backward(config_from_values(values, "db"), "Prodigy", 1)
    with pytest.raises(ConfigError, match="fused_backward_pass cannot be used here: optimizer_type is 'AdamW' "
                                          r"\(it works with AdaFactor; blockwise_fused_optimizers also"):
        check_fused_backward(config_from_values({**values, "blockwise_fused_optimizers": False,
                                                 "fused_backward_pass": True}, "db"), "AdamW", 1)


@pytest.mark.slow
def test_blockwise_fused_fine_tune_with_adamw_equals_the_plain_one(tmp_path, tiny_dataset, monkeypatch):
    import library.training.fused_backward as fused_backward

    installed = []

    def install(optimizer, max_grad_norm):
        installed.append(len(optimizer.param_groups))
        return original(optimizer, max_grad_norm)

    original = fused_backward.install_fused_backward
    monkeypatch.setattr(fused_backward, "install_fused_backward", install)
    common = dict(optimizer_type="AdamW", max_grad_norm=0, learning_rate=1e-3, lr_scheduler="constant")
    code, plain = train_db(tmp_path, db_options(tiny_dataset, tmp_path / "a", **common))
    assert code == 0 and not installed
    code, fused = train_db(tmp_path, db_options(tiny_dataset, tmp_path / "b", blockwise_fused_optimizers=True,
                                                **common))
    assert code == 0 and installed  # the weights were stepped during backward
    a, b = state_of(plain._model.unet), state_of(fused._model.unet)
    assert all(torch.equal(a[k], b[k]) for k in a)
