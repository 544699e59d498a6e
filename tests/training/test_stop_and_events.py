"""Stopping a run (SIGTERM, as the GUI's Stop sends) saves the weights; the JSON-lines event stream;
a diverging run stops with a clear message."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import toml

from tests.training.helpers import base_options, read_lora, train

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_sigterm_stops_cleanly_and_saves(tmp_path, tiny_dataset):
    out = tmp_path / "out"
    config = tmp_path / "long.toml"
    config.write_text(toml.dumps(base_options(tiny_dataset, out, max_train_steps=5000, save_state_on_train_end=True)),
                      encoding="utf-8")
    events = tmp_path / "events.jsonl"
    proc = subprocess.Popen([sys.executable, "train_network.py", "--config_file", str(config)], cwd=ROOT,
                            env={**os.environ, "SDTRAIN_PROGRESS_FILE": str(events)}, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not any(e["event"] == "step" and e["step"] >= 3 for e in _events(events)):
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    recorded = _events(events)
    kinds = [e["event"] for e in recorded]
    assert kinds[0] == "start" and recorded[0]["total"] == 5000
    assert "stopped" in kinds and kinds[-1] == "done"
    steps = [e for e in recorded if e["event"] == "step"]
    assert all({"loss", "avg_loss", "lr", "epoch", "it_s", "eta_s"} <= set(e) for e in steps)
    stopped_at = next(e["step"] for e in recorded if e["event"] == "stopped")
    meta = read_lora(out / "lora.safetensors")[1]
    assert int(meta["ss_steps"]) == stopped_at < 5000
    assert (out / "lora-state" / "train_state.json").exists()  # resumable from where it stopped


def test_diverging_loss_stops_with_a_clear_message(tmp_path, tiny_dataset, capsys):
    out = tmp_path / "nan"
    opts = base_options(tiny_dataset, out, max_train_steps=20, learning_rate=1e30, max_grad_norm=0,
                        optimizer_type="torch.optim.SGD")
    assert train(tmp_path, opts) == 2
    err = capsys.readouterr().err
    assert "the loss became" in err and "Lower the learning rate" in err
    assert not (out / "lora.safetensors").exists()
