"""The training loop has malloc keep what its steps free, and gives the heap back after each save."""

from __future__ import annotations

import pytest

import library.training.loop as loop
from tests.training.helpers import base_options, train

pytestmark = pytest.mark.slow


def test_the_loop_keeps_its_steps_memory_and_trims_after_saves(tmp_path, tiny_dataset, monkeypatch):
    calls = []
    monkeypatch.setattr(loop, "keep_freed_memory", lambda: calls.append("keep"))
    monkeypatch.setattr(loop, "give_back_free_memory", lambda: calls.append("trim"))
    real_step = loop.TrainLoop._run_epoch

    def run_epoch(self, *args, **kwargs):
        calls.append("epoch")
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(loop.TrainLoop, "_run_epoch", run_epoch)
    options = base_options(tiny_dataset, tmp_path / "out", max_train_steps=4, save_every_n_steps=2)
    assert train(tmp_path, options) == 0
    assert calls.index("trim") < calls.index("keep") < calls.index("epoch")  # loading's leftovers go first
    assert calls.count("keep") == 1
    assert calls[calls.index("epoch"):].count("trim") >= 2  # after the save at step 2 and the final one
    assert sorted(p.name for p in (tmp_path / "out").glob("*.safetensors")) == ["lora-step00000002.safetensors",
                                                                               "lora.safetensors"]
