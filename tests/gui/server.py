"""Start ``gui.py`` as a subprocess on a free port for browser tests, and small Playwright helpers."""

from __future__ import annotations

import contextlib
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


def wait_served(url: str, timeout: float = 60.0, alive=lambda: True) -> float:
    """Seconds until ``url`` answers 200 (raises after ``timeout``, or as soon as ``alive()`` is False)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if not alive():
            raise ChildProcessError(f"the server for {url} exited before answering")
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

    #: a server that exits before answering is started again, this many times in all (gui.py used to exit at
    #: start when gradio's launch check, one HEAD within 3 s, timed out on a busy machine; it now waits, see
    #: ``library.gui.app.patient_url_ok``, so this is a second line of defence)
    ATTEMPTS = 3

    def __init__(self, cwd: Path, state_dir: Path | None = None, extra: list[str] | None = None):
        self.cwd, self.state_dir, self.extra = cwd, state_dir or cwd / "gui_state", list(extra or [])
        for attempt in range(1, self.ATTEMPTS + 1):
            try:
                self._start()
                return
            except ChildProcessError:
                self.log.close()
                if attempt == self.ATTEMPTS:
                    raise TimeoutError(f"gui.py exited at start {attempt} times; its log ends with:\n"
                                       f"{self._log_tail()}") from None

    def _start(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = open(self.cwd / f"gui-{self.port}.log", "wb")
        argv = [
            sys.executable,
            str(REPO / "gui.py"),
            "--port",
            str(self.port),
            "--state_dir",
            str(self.state_dir),
            *self.extra,
        ]
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(REPO)}
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            argv, cwd=self.cwd, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            self.startup_s = wait_served(self.url, 120, alive=lambda: self.proc.poll() is None)
        except TimeoutError as exc:  # end the process (nobody else will) and say why it did not answer
            self.close()
            raise TimeoutError(f"{exc}; gui.py's log ends with:\n{self._log_tail()}") from None

    def _log_tail(self) -> str:
        return (self.cwd / f"gui-{self.port}.log").read_text(encoding="utf-8", errors="replace")[-2000:]

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


@contextlib.contextmanager
def training_page(url: str):
    """A Chromium page on the GUI at ``url``, its training form loaded (1400 x 1000)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.wait_for_selector("#network-start")
        yield page
        browser.close()


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
