"""sd-scripts style --config_file and --dataset_config files run unchanged; the quick start works."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.training.helpers import read_lora

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "sdscripts"


def test_sdscripts_config_and_dataset_config_run_unchanged(tmp_path, tiny_dataset, tiny_model_files):
    from accelerate.state import AcceleratorState

    from library.cli import run_trainer
    from library.training.lora_target import LoRATarget

    dataset = (FIXTURES / "dataset_config.toml").read_text(encoding="utf-8")
    dataset = dataset.replace("IMAGE_DIR", (tiny_dataset / "train" / "2_sks disc").as_posix())
    dataset = dataset.replace("REG_DIR", (tiny_dataset / "reg" / "1_disc").as_posix())
    (tmp_path / "dataset.toml").write_text(dataset, encoding="utf-8")
    config = (FIXTURES / "train_network_config.toml").read_text(encoding="utf-8")
    for word, value in {"MODEL": tiny_model_files["sd1"]["single"], "DATASET_CONFIG": tmp_path / "dataset.toml",
                        "OUTPUT": tmp_path / "out", "LOGS": tmp_path / "logs"}.items():
        config = config.replace(f'"{word}"', f'"{Path(value).as_posix()}"')
    (tmp_path / "config.toml").write_text(config, encoding="utf-8")
    AcceleratorState._reset_state(True)
    assert run_trainer("network", LoRATarget, ["--config_file", str(tmp_path / "config")]) == 0
    tensors, meta = read_lora(tmp_path / "out" / "sdscripts_style.safetensors")
    assert meta["ss_optimizer"] == "AdamW8bit" and meta["ss_clip_skip"] == "2"
    assert meta["ss_num_reg_images"] == "2" and meta["ss_epoch"] == "2"
    assert (tmp_path / "out" / "sdscripts_style-000001.safetensors").exists()
    assert "ss_datasets" not in meta or meta["ss_datasets"]


def test_readme_quick_start_command(tmp_path):
    """The README's first command (after the install) trains the demo preset and writes the LoRA."""
    out = tmp_path / "quick"
    result = subprocess.run(
        [sys.executable, "train_network.py", "--config_file", "presets/quickstart.toml", "--output_dir", str(out),
         "--logging_dir", str(tmp_path / "logs")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "quickstart_lora.safetensors").exists()
    assert "steps per epoch" in result.stderr
