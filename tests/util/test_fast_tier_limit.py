"""The fast tier's guard: an unmarked test longer than the limit fails, a slow-marked one does not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_an_unmarked_slow_test_fails_and_a_marked_one_passes(tmp_path):
    (tmp_path / "test_sleepy.py").write_text(
        "import time, pytest\n"
        "def test_unmarked():\n    time.sleep(0.6)\n"
        "@pytest.mark.slow\ndef test_marked():\n    time.sleep(0.6)\n"
        "def test_quick():\n    pass\n",
        encoding="utf-8",
    )
    env = {**os.environ, "PYTHONPATH": str(TESTS), "SDTRAIN_FAST_TEST_LIMIT": "0.3",
           "SDTRAIN_FAST_TIER_PRELOAD": "0"}  # these tests need none of the heavy libraries
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "fast_tier_limit", "-p", "no:cacheprovider", "-c", os.devnull,
         "-W", "ignore::pytest.PytestUnknownMarkWarning", str(tmp_path / "test_sleepy.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 1, run.stdout
    assert "1 failed, 2 passed" in run.stdout
    assert "test_unmarked: its call took" in run.stdout and "mark it @pytest.mark.slow" in run.stdout
