"""The job runner: one training run at a time, as a subprocess in its own process group, with its state on
disk so that a page reload or a GUI restart re-attaches to it. Plain Python (no gradio), tested directly.

Files under the runner's folder: ``job.json`` (the current or last run: command, pid, status, paths),
``runs/<id>/progress.jsonl`` (the trainer's JSON-lines events, see ``library.training.progress``) and
``runs/<id>/log.txt`` (the trainer's stdout and stderr).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from library.training.progress import PROGRESS_ENV
from library.util.atomic import write_text_atomic

logger = logging.getLogger(__name__)

RUNNING, DONE, FAILED, STOPPED = "running", "done", "failed", "stopped"


@dataclass
class RunView:
    """What the page shows of a run, derived from its events and log (pure data)."""

    status: str = "idle"
    step: int = 0
    total: int = 0
    epoch: int = 0
    epochs: int = 0
    it_s: float | None = None
    eta_s: float | None = None
    losses: list[tuple[int, float, float, float]] = field(default_factory=list)  # step, loss, avg, lr
    validation: list[tuple[int, float]] = field(default_factory=list)  # step, validation loss
    samples: list[str] = field(default_factory=list)
    saved: list[str] = field(default_factory=list)
    output: str | None = None
    returncode: int | None = None
    log_tail: str = ""
    command: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: status, step/total, epoch, it/s and ETA."""
        parts = [self.status]
        if self.total:
            parts.append(f"step {self.step}/{self.total}")
        if self.epochs:
            parts.append(f"epoch {self.epoch}/{self.epochs}")
        if self.it_s:
            parts.append(f"{self.it_s:.2f} it/s")
        if self.eta_s is not None and self.status == RUNNING:
            parts.append(f"ETA {int(self.eta_s) // 60}:{int(self.eta_s) % 60:02d}")
        if self.returncode not in (None, 0):
            parts.append(f"exit code {self.returncode}")
        if self.output:
            parts.append(f"output {self.output}")
        return " · ".join(parts)


def read_events(path: str | Path) -> list[dict[str, Any]]:
    """The JSON-lines events written so far (a half-written last line is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    events = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def apply_events(view: RunView, events: list[dict[str, Any]]) -> RunView:
    """Fold the trainer's events into ``view`` (step/total, epochs, loss points, samples, saves)."""
    for ev in events:
        kind = ev.get("event")
        if kind == "start":
            view.total, view.epochs = ev.get("total", 0), ev.get("epochs", 0)
            view.step = ev.get("step", 0) or 0
        elif kind == "step":
            view.step, view.total = ev["step"], ev.get("total", view.total)
            view.epoch, view.epochs = ev.get("epoch", view.epoch), ev.get("epochs", view.epochs)
            view.it_s, view.eta_s = ev.get("it_s"), ev.get("eta_s")
            view.losses.append((ev["step"], ev.get("loss"), ev.get("avg_loss"), ev.get("lr")))
        elif kind == "validation":
            view.validation.append((ev.get("step", 0), ev.get("loss")))
        elif kind == "sample":
            view.samples.extend(ev.get("paths", []))
        elif kind == "saved":
            view.saved.append(ev["path"])
        elif kind == "done":
            view.output = ev.get("path")
    return view


def tail(path: str | Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file ("" when missing); tqdm's carriage returns become lines."""
    path = Path(path)
    if not path.exists():
        return ""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 64 * 1024))
        text = f.read().decode("utf-8", errors="replace").replace("\r", "\n")
    return "\n".join([ln for ln in text.splitlines() if ln.strip()][-lines:])


def _alive(pid: int) -> bool:
    """True when ``pid`` runs and is not a zombie (a finished child of another process)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            return stat.read_text().split(")")[-1].split()[0] != "Z"
        except OSError:
            return False
    return True


class JobRunner:
    """Owns at most one training subprocess. All state is in ``root/job.json`` so a new runner on the same
    folder (a restarted GUI) sees the running job, can show it and can stop it."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._proc: subprocess.Popen | None = None

    @property
    def state_path(self) -> Path:
        return self.root / "job.json"

    def state(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.state_path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def _write_state(self, state: dict[str, Any]) -> None:
        write_text_atomic(self.state_path, json.dumps(state, indent=1))

    def busy(self) -> bool:
        state = self.refresh()
        return state is not None and state["status"] == RUNNING

    def start(
        self,
        command: list[str],
        label: str = "",
        extra: dict[str, Any] | None = None,
        cwd: str | Path | None = None,
    ) -> dict[str, Any]:
        """Start ``command`` (an argument list) in its own process group with the progress file set.
        Raises ``RuntimeError`` when a run is already going (one run at a time)."""
        if self.busy():
            raise RuntimeError("a training run is already going; stop it or wait for it to end")
        run_id = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}-{time.monotonic_ns() % 100000}"
        run_dir = self.root / "runs" / run_id
        run_dir.mkdir(parents=True)
        progress, log = run_dir / "progress.jsonl", run_dir / "log.txt"
        env = {**os.environ, PROGRESS_ENV: str(progress), "PYTHONUNBUFFERED": "1"}
        with open(log, "wb") as log_file:
            self._proc = subprocess.Popen(
                command,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
                stdin=subprocess.DEVNULL,
            )
        state = {
            "id": run_id,
            "label": label,
            "command": command,
            "pid": self._proc.pid,
            "status": RUNNING,
            "progress": str(progress),
            "log": str(log),
            "started": time.time(),
            "ended": None,
            "returncode": None,
            **(extra or {}),
        }
        self._write_state(state)
        logger.info("started %s (pid %d)", label or command, self._proc.pid)
        return state

    def refresh(self) -> dict[str, Any] | None:
        """Update the on-disk state when the process has ended; returns the state."""
        state = self.state()
        if state is None or state["status"] != RUNNING:
            return state
        code = None
        if self._proc is not None and self._proc.pid == state["pid"]:
            code = self._proc.poll()
            if code is None:
                return state
        elif _alive(state["pid"]):
            return state
        events = {e.get("event") for e in read_events(state["progress"])}
        if code is None:  # not our child (the GUI restarted): judge by the events it wrote
            code = 0 if events & {"done", "stopped"} else -1
        state["returncode"] = code
        if "stopped" in events or (state.get("stop_requested") and code != 0):
            state["status"] = STOPPED
        else:
            state["status"] = DONE if code == 0 else FAILED
        state["ended"] = time.time()
        self._write_state(state)
        return state

    def stop(self, timeout: float | None = None) -> bool:
        """SIGTERM to the run's process group: the trainer finishes the step, saves and exits. With
        ``timeout``, wait that long and then SIGKILL the group. Returns True when a signal was sent."""
        state = self.refresh()
        if state is None or state["status"] != RUNNING:
            return False
        state["stop_requested"] = True
        self._write_state(state)
        try:
            os.killpg(state["pid"], signal.SIGTERM)
        except ProcessLookupError:
            return False
        if timeout is not None:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.refresh()["status"] == RUNNING:
                time.sleep(0.2)
            if self.refresh()["status"] == RUNNING:
                os.killpg(state["pid"], signal.SIGKILL)
        return True

    def wait(self, timeout: float) -> dict[str, Any] | None:
        """Block until the run ends or ``timeout`` seconds pass; returns the state."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.refresh()
            if state is None or state["status"] != RUNNING:
                return state
            time.sleep(0.2)
        return self.refresh()

    def view(self, log_lines: int = 40) -> RunView:
        """The current (or last) run as the page shows it."""
        state = self.refresh()
        if state is None:
            return RunView()
        view = apply_events(
            RunView(status=state["status"], command=state["command"]), read_events(state["progress"])
        )
        view.returncode = state["returncode"]
        view.log_tail = tail(state["log"], log_lines)
        return view
