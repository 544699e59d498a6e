"""Exact resume: a run stopped at a state and resumed in a new process ends with the same weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import toml
import torch

from library.errors import UserError
from tests.training.helpers import base_options, read_lora, train

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _base_opts(tiny_dataset, out, **kw):
    settings = dict(max_train_steps=10, shuffle_caption=True, flip_aug=True, caption_dropout_rate=0.3,
                    network_dropout=0.1, seed=5)
    return base_options(tiny_dataset, out, **{**settings, **kw})


@pytest.mark.parametrize("extra", [{}, {"ema_decay": 0.9}], ids=["plain", "ema"])
def test_resume_is_bit_exact(tmp_path, tiny_dataset, extra):
    def _opts(dataset, out, **kw):  # the module's options plus this case's
        return _base_opts(dataset, out, **{**extra, **kw})

    assert train(tmp_path, _opts(tiny_dataset, tmp_path / "straight")) == 0
    straight = read_lora(tmp_path / "straight" / "lora.safetensors")[0]

    assert train(tmp_path, _opts(tiny_dataset, tmp_path / "first", save_every_n_steps=5, save_state=True)) == 0
    state_dir = tmp_path / "first" / "lora-step00000005-state"
    position = json.loads((state_dir / "train_state.json").read_text())
    assert position["current_step"] == 5 and position["current_epoch"] == 2  # 4 batches per epoch

    config = tmp_path / "resume.toml"
    config.write_text(toml.dumps(_opts(tiny_dataset, tmp_path / "resumed", resume=str(state_dir))), encoding="utf-8")
    result = subprocess.run([sys.executable, "train_network.py", "--config_file", str(config)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed, meta = read_lora(tmp_path / "resumed" / "lora.safetensors")
    assert meta["ss_steps"] == "10"
    assert resumed.keys() == straight.keys()
    for key in straight:
        assert torch.equal(resumed[key], straight[key]), key


_opts = _base_opts


def test_resume_with_other_network_shape_names_the_keys(tmp_path, tiny_dataset, capsys):
    assert train(tmp_path, _opts(tiny_dataset, tmp_path / "a", max_train_steps=2, save_state_on_train_end=True)) == 0
    state_dir = tmp_path / "a" / "lora-state"
    assert (state_dir / "train_state.json").exists()
    opts = _opts(tiny_dataset, tmp_path / "b", network_dim=8, resume=str(state_dir))
    assert train(tmp_path, opts) == 2
    err = capsys.readouterr().err
    assert "differently shaped network" in err and "lora_down.weight: state (4," in err and "now (8," in err


def test_save_state_without_interval_still_saves_at_the_end(tmp_path, tiny_dataset):
    assert train(tmp_path, _opts(tiny_dataset, tmp_path / "c", max_train_steps=2, save_state=True)) == 0
    assert (tmp_path / "c" / "lora-state" / "train_state.json").exists()


def test_resume_from_a_log_folder_is_explained(tmp_path):
    from library.training.state import read_position

    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "events.out.tfevents.1").write_text("x")
    with pytest.raises(UserError, match="TensorBoard log folder"):
        read_position(logs)
