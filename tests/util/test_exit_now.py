"""exit_now: the trainer scripts' fast exit keeps the exit code and flushes what was written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_exit_code_printed_text_and_log_lines_survive_the_fast_exit(tmp_path):
    log = tmp_path / "run.log"
    code = (
        "import logging, sys\n"
        "from library.cli import exit_now\n"
        f"logging.basicConfig(filename={str(log)!r}, level=logging.INFO)\n"
        "logging.getLogger('x').info('the last log line')\n"
        "sys.stdout.write('unflushed text without a newline')\n"
        "sys.stderr.write('and on stderr')\n"
        "exit_now(3)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 3
    assert run.stdout == "unflushed text without a newline" and run.stderr == "and on stderr"
    assert "the last log line" in log.read_text()
