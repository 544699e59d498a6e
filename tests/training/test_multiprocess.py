"""Two processes on the CPU (gloo): the data is sharded, ranks stay identical, one file is written."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import toml

from tests.training.helpers import base_options, read_lora

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_two_process_cpu_run(tmp_path, tiny_dataset):
    out = tmp_path / "out"
    opts = base_options(tiny_dataset, out, max_train_steps=None, max_train_epochs=2, save_every_n_epochs=1)
    config = tmp_path / "mp.toml"
    config.write_text(toml.dumps(opts), encoding="utf-8")
    accelerate = shutil.which("accelerate") or str(Path(sys.executable).with_name("accelerate"))
    result = subprocess.run(
        [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
         "no", "--dynamo_backend", "no", "--main_process_port", "29517", "train_network.py", "--config_file",
         str(config)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "weights identical on all 2 processes" in result.stderr
    # 8 samples per epoch at batch 2 = 4 batches, 2 per process per epoch
    assert "steps per epoch 2 (processes 2" in result.stderr
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["lora-000001.safetensors", "lora.safetensors"]
    meta = read_lora(out / "lora.safetensors")[1]
    assert meta["ss_steps"] == "4" and meta["ss_epoch"] == "2"
