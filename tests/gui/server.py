"""Start ``gui.py`` as a subprocess on a free port for browser tests, and small Playwright helpers."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
ARTIFACTS = REPO / "tests" / "gui" / "artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_served(url: str, timeout: float = 60.0) -> float:
    """Seconds until ``url`` answers 200 (raises after ``timeout``)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


class GuiServer:
    """``python gui.py`` in ``cwd`` with its own state folder; ``close()`` ends its process group."""

    def __init__(self, cwd: Path, state_dir: Path | None = None, extra: list[str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = open(cwd / f"gui-{self.port}.log", "wb")
        argv = [
            sys.executable,
            str(REPO / "gui.py"),
            "--port",
            str(self.port),
            "--state_dir",
            str(state_dir or cwd / "gui_state"),
            *(extra or []),
        ]
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(REPO)}
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            argv, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            self.startup_s = wait_served(self.url, 120)
        except TimeoutError as exc:  # end the process (nobody else will) and say why it did not answer
            self.close()
            log = (cwd / f"gui-{self.port}.log").read_text(encoding="utf-8", errors="replace")[-2000:]
            raise TimeoutError(f"{exc}; gui.py's log ends with:\n{log}") from None

    def close(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


def need_browser():
    """Skip (with the reason) when Playwright or Debian's chromium is missing."""
    try:
        from playwright.sync_api import sync_playwright  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright==1.65.2)")
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip("chromium is not installed (apt-get install -y chromium)")


def field(page, elem_id: str):
    """The input element of a gradio field (textbox, number)."""
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def set_field(page, elem_id: str, value) -> None:
    box = field(page, elem_id)
    box.fill(str(value))
    box.press("Tab")


def choose(page, elem_id: str, value: str) -> None:
    """Pick ``value`` in a gradio dropdown (an entry labelled ``value``, or ``value — description`` as the
    presets are)."""
    box = page.locator(f"#{elem_id} input").first
    box.click()
    page.locator(
        f"li[role='option'][aria-label='{value}'], li[role='option'][aria-label^='{value} — ']"
    ).first.click()
