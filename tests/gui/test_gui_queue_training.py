"""A queue of two quickstart runs through the real trainer, the first made to fail (a base model that does
not exist): the second still runs to completion and writes its LoRA (issue 7 check)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from library.gui import configs
from library.gui.jobs import DONE, FAILED, JobRunner
from library.gui.run_queue import TrainingQueue

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_queue_runs_the_second_quickstart_after_a_failed_first(tmp_path):
    shutil.copytree(REPO / "dataset_examples", tmp_path / "data")
    (tmp_path / "data" / "train" / "5_sks circle").rename(tmp_path / "data" / "train" / "1_sks circle")
    fields = configs.load_config("network", configs.preset_path("quickstart"))
    fields.update(
        train_data_dir=str(tmp_path / "data" / "train"),
        reg_data_dir=str(tmp_path / "data" / "reg"),
        max_train_epochs=1,
        resolution="64",
        logging_dir="",
    )
    runner = JobRunner(tmp_path / "job")
    queue = TrainingQueue(tmp_path / "queue", runner, lambda t, p: configs.trainer_command(t, p))
    failing = configs.config_toml("network", {**fields, "output_dir": str(tmp_path / "a")})[0]
    failing = failing.replace('"builtin:tiny"', f'"{tmp_path / "missing.safetensors"}"')
    queue.add("network", failing, "broken")
    good, error = configs.config_toml("network", {**fields, "output_dir": str(tmp_path / "b")})
    assert error is None
    queue.add("network", good, "good")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and queue.entries()["2"]["status"] not in (DONE, FAILED):
        queue.tick()
        time.sleep(0.5)
    entries = queue.entries()
    assert entries["1"]["status"] == FAILED and entries["1"]["returncode"] == 2
    assert entries["2"]["status"] == DONE, runner.view().log_tail
    assert Path(entries["2"]["output"]).name == "quickstart_lora.safetensors"
    assert (tmp_path / "b" / "quickstart_lora.safetensors").exists()
