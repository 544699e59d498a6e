"""ema_decay: the moving average follows its formula, is what gets saved, and leaves training unchanged."""

from __future__ import annotations

import pytest
import torch

from library.training.ema import WeightAverage
from tests.training.helpers import base_options, read_lora, train


def test_average_follows_the_warmup_formula_and_swaps_back_exactly():
    param = torch.nn.Parameter(torch.tensor([0.0, 10.0]))
    average = WeightAverage([param], decay=0.5, every=1)
    expected = param.detach().clone()
    for step, value in enumerate([1.0, 2.0, 3.0], start=1):
        with torch.no_grad():
            param.fill_(value)
        average.after_step(step)
        decay = min(0.5, (1 + step - 1) / (10 + step - 1)) if step > 1 else 0.0  # diffusers' warm-up
        expected = expected - (1 - decay) * (expected - param.detach())
    with average.in_place():
        assert torch.allclose(param.detach(), expected)
    assert param.detach().tolist() == [3.0, 3.0]  # the trained value is back, exactly


def test_update_interval():
    param = torch.nn.Parameter(torch.zeros(1))
    average = WeightAverage([param], decay=0.9, every=3)
    with torch.no_grad():
        param.fill_(1.0)
    average.after_step(1)
    average.after_step(2)
    with average.in_place():
        assert param.item() == 0.0  # not updated before step 3
    average.after_step(3)
    with average.in_place():
        assert param.item() == 1.0  # the first update copies (decay 0 at its first step)


@pytest.mark.slow  # three small trainings
def test_saved_weights_are_the_average_and_training_is_unchanged(tiny_dataset, tmp_path):
    options = base_options(tiny_dataset, tmp_path / "plain", max_train_steps=4, seed=4)
    assert train(tmp_path, options) == 0
    plain, _ = read_lora(tmp_path / "plain" / "lora.safetensors")
    # an average that is never updated is the initial network: zero up matrices
    never = {**options, "output_dir": str(tmp_path / "never"), "ema_decay": 0.99, "ema_update_every_n_steps": 100}
    assert train(tmp_path, never) == 0
    saved, meta = read_lora(tmp_path / "never" / "lora.safetensors")
    assert meta["ss_ema_decay"] == "0.99"
    assert all(torch.count_nonzero(v) == 0 for k, v in saved.items() if k.endswith("lora_up.weight"))
    # an average with (almost) no memory is the trained network: training went on exactly as without EMA
    follow = {**options, "output_dir": str(tmp_path / "follow"), "ema_decay": 1e-9}
    assert train(tmp_path, follow) == 0
    saved, _ = read_lora(tmp_path / "follow" / "lora.safetensors")
    for key in plain:
        assert torch.allclose(saved[key].float(), plain[key].float(), atol=1e-6, rtol=1e-5), key


@pytest.mark.slow  # a small training
def test_average_is_taken_after_max_norm_scaling(tiny_dataset, tmp_path):
    from library.tools.models.lora_file import read_lora as read_modules

    options = base_options(tiny_dataset, tmp_path / "out", max_train_steps=4, seed=4, learning_rate=5e-2,
                           scale_weight_norms=0.01, ema_decay=1e-9)
    assert train(tmp_path, options) == 0
    lora = read_modules(tmp_path / "out" / "lora.safetensors")
    norms = [float(m.delta().float().norm()) for m in lora.modules.values()]
    assert max(norms) <= 0.01 * 1.01  # the saved average holds the scaled weights of the last step
