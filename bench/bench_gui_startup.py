"""GUI start time: from starting `python gui.py` to the first page served (HTTP 200), a few runs.

    python bench/bench_gui_startup.py [--runs 3]

Prints a table (run, seconds) with the median; the issue's bound is 10 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_start(timeout: float = 120.0) -> float:
    port = free_port()
    with tempfile.TemporaryDirectory() as state:
        argv = [sys.executable, str(REPO / "gui.py"), "--port", str(port), "--state_dir", state]
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
        start = time.monotonic()
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        try:
            while time.monotonic() - start < timeout:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                        if r.status == 200:
                            return time.monotonic() - start
                except OSError:
                    time.sleep(0.05)
            raise TimeoutError("the GUI did not answer")
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    times = [one_start() for _ in range(args.runs)]
    print(f"{'run':>4} | {'import to first page (s)':>24}")
    for i, t in enumerate(times, 1):
        print(f"{i:>4} | {t:>24.2f}")
    print(f"{'median':>4} | {statistics.median(times):>24.2f}   (cores: {os.cpu_count()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
