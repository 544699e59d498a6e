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
import re
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
    #: what the trainer does between steps ("sampling", "saving"; its ``phase`` events), or None
    phase: str | None = None

    @property
    def fraction(self) -> float | None:
        """Steps done as a fraction of the run (0..1), or None before the trainer said its length."""
        return min(1.0, self.step / self.total) if self.total else None

    def activity(self) -> str | None:
        """What a running job does when that is not training steps ("rendering final samples", "saving",
        "finishing" after the last step), else None: then the ETA says how long it still takes."""
        if self.status != RUNNING:
            return None
        last = bool(self.total) and self.step >= self.total
        if self.phase == "sampling":
            return "rendering final samples" if last else "rendering samples"
        if self.phase:
            return PHASE_TEXT.get(self.phase, self.phase)
        return "finishing" if last or self.output else None  # output: "done" came, the process ends

    def eta_text(self) -> str:
        """The ETA column: the activity when there is one, else "m:ss" while running, else ""."""
        activity = self.activity()
        if activity:
            return activity
        if self.eta_s is None or self.status != RUNNING:
            return ""
        return format_duration(self.eta_s)

    def summary(self) -> str:
        """One line: status, step/total, epoch, it/s and ETA (or what the trainer does after its steps)."""
        parts = [self.status]
        if self.total:
            parts.append(f"step {self.step}/{self.total}")
        if self.epochs:
            parts.append(f"epoch {self.epoch}/{self.epochs}")
        if self.it_s:
            parts.append(f"{self.it_s:.2f} it/s")
        eta = self.eta_text()
        if eta:
            parts.append(eta if self.activity() else f"ETA {eta}")
        if self.returncode not in (None, 0):
            parts.append(f"exit code {self.returncode}")
        if self.output:
            parts.append(f"output {self.output}")
        return " · ".join(parts)


#: how a ``phase`` event is shown (``sampling`` depends on whether the steps are over, see ``activity``)
PHASE_TEXT = {"saving": "saving"}


def format_duration(seconds: float) -> str:
    """``seconds`` as "m:ss", or "h:mm:ss" from an hour on."""
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


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
            view.phase = None
            view.losses.append((ev["step"], ev.get("loss"), ev.get("avg_loss"), ev.get("lr")))
        elif kind == "validation":
            view.validation.append((ev.get("step", 0), ev.get("loss")))
        elif kind == "phase":
            view.phase = ev.get("phase")
        elif kind == "sample":
            view.samples.extend(ev.get("paths", []))
            view.phase = None if view.phase == "sampling" else view.phase
        elif kind == "saved":
            view.saved.append(ev["path"])
        elif kind == "done":
            view.output, view.phase = ev.get("path"), None
    return view


def read_new_events(path: str | Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """The events written after byte ``offset`` and the offset to read on from (only complete lines: a
    half-written last line is read next time)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    complete = data[: data.rfind(b"\n") + 1]
    events = []
    for line in complete.decode("utf-8", errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events, offset + len(complete)


#: the end of a tqdm bar: "... [00:03<00:05, 2.10it/s, loss=0.12]" (elapsed, rate and postfix in brackets)
_TQDM_BAR_END = re.compile(r"\[[^\[\]\r\n]*(?:it/s|s/it)[^\[\]\r\n]*\]")
#: how far back ``tail`` reads at most (a long run's bar line alone can be megabytes of updates)
TAIL_MAX_BYTES = 1024 * 1024


def shown_lines(line: str) -> list[str]:
    """One line of a log as a terminal shows it: tqdm's ``\\r`` updates collapsed to their last state, a
    message a logger wrote while the bar was drawn (glued to its end) on a line of its own, and text
    printed before a bar took the line kept."""
    segments = line.split("\r")
    kept = [seg for seg in segments[1:] if seg.strip()]
    shown = [segments[0].rstrip()] if segments[0].strip() and kept else []
    last = kept[-1] if kept else segments[0]
    if not last.strip():
        return shown
    match = _TQDM_BAR_END.search(last)
    if match and last[match.end() :].strip():
        return [*shown, last[: match.end()].rstrip(), last[match.end() :].strip()]
    return [*shown, last.rstrip()]


def tail(path: str | Path, lines: int = 40) -> str:
    """The newest ``lines`` lines of a log ("" when missing), as a terminal would show them (see
    :func:`shown_lines`); reads back from the end, at most ``TAIL_MAX_BYTES``."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return ""
    window = 64 * 1024
    while True:
        start = max(0, size - window)
        with open(path, "rb") as f:
            f.seek(start)
            text = f.read(size - start).decode("utf-8", errors="replace")
        if start > 0:  # the first line is cut: drop it (or, in one huge line, its first segment)
            cut = text.find("\n")
            text = text[cut + 1 :] if cut >= 0 else text[text.find("\r") :] if "\r" in text else ""
        shown = [out for ln in text.split("\n") for out in shown_lines(ln)]
        if len(shown) >= lines or start == 0 or window >= TAIL_MAX_BYTES:
            return "\n".join(shown[-lines:])
        window *= 4


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
