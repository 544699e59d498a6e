"""The training queue: configs stored as files (``queue/<n>.toml``) plus ``queue/state.json`` (each entry's
trainer, label, state, exit code and output). Entries run one after another through the ``JobRunner``; a
failed run does not stop the queue; the queue survives a GUI restart because it is only files. ``job`` /
``jobs`` give each entry with its run's progress (step/total, ETA, phase) for the Queue tab and the job API.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from pathlib import Path
from typing import Any

from library.gui.jobs import RUNNING, JobRunner, RunView, apply_events, read_events
from library.util.atomic import write_text_atomic

logger = logging.getLogger(__name__)

QUEUED = "queued"

#: the Queue tab's columns (``TrainingQueue.rows``)
ROW_HEADERS = ["#", "label", "trainer", "state", "progress", "ETA", "exit code", "output"]


class TrainingQueue:
    """A folder of queued configs driven by ``tick()`` (called by a background thread or a page timer)."""

    def __init__(self, root: str | Path, runner: JobRunner, command_for):
        """``command_for(trainer, config_path) -> list[str]`` builds each entry's argument list."""
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.runner = runner
        self.command_for = command_for
        self._lock = threading.Lock()
        #: progress file -> ((size, mtime), view): an ended run's events are read once, not every second
        self._views: dict[str, tuple[tuple[int, float], RunView]] = {}

    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    def entries(self) -> dict[str, dict[str, Any]]:
        """Entry number (as a string) -> {"trainer", "label", "status", "returncode", "output", "config"}, and
        once started "run", "progress" and "log" (its run's files), "started", "ended" (Unix times)."""
        try:
            return json.loads(self.state_path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _save(self, entries: dict[str, dict[str, Any]]) -> None:
        write_text_atomic(self.state_path, json.dumps(entries, indent=1))

    def add(self, trainer: str, toml_text: str, label: str = "") -> str:
        """Store a config (its TOML text) as the next entry; returns its number."""
        with self._lock:
            entries = self.entries()
            number = str(max((int(k) for k in entries), default=0) + 1)
            path = self.root / f"{number}.toml"
            write_text_atomic(path, toml_text)
            entries[number] = {
                "trainer": trainer,
                "label": label or f"run {number}",
                "status": QUEUED,
                "returncode": None,
                "output": None,
                "config": str(path),
            }
            self._save(entries)
        return number

    def remove(self, number: str) -> bool:
        """Drop a queued (not running) entry."""
        with self._lock:
            entries = self.entries()
            if entries.get(number, {}).get("status") != QUEUED:
                return False
            del entries[number]
            self._save(entries)
            return True

    def cancel(self, number: str) -> str:
        """Stop entry ``number`` if it is running (the trainer saves, the queue goes on with the next), or
        drop it if it waits. Returns what was done, for the page."""
        with self._lock:
            status = self.entries().get(number, {}).get("status")
            state = self.runner.state()
        if status == QUEUED:
            self.remove(number)
            return f"removed entry {number} from the queue"
        if status == RUNNING and state is not None and state.get("queue_entry") == number:
            self.runner.stop()
            return f"stopping entry {number}: the trainer finishes the step and saves; the queue goes on"
        if status is None:
            return f"there is no entry {number}"
        return f"entry {number} has already ended ({status})"

    def tick(self) -> None:
        """Record the end of the entry that was running and start the next queued one when the runner is
        free (a GUI run started by hand is never interrupted)."""
        with self._lock:
            entries = self.entries()
            state = self.runner.refresh()
            for number, entry in entries.items():
                if entry["status"] != RUNNING:
                    continue
                if state is None or state.get("queue_entry") != number:
                    entry["status"] = "failed"  # the run's record is gone (state folder wiped)
                elif state["status"] != RUNNING:
                    entry["status"], entry["returncode"] = state["status"], state["returncode"]
                    entry["ended"] = state.get("ended")
                    done = [e for e in read_events(state["progress"]) if e.get("event") == "done"]
                    entry["output"] = done[-1].get("path") if done else None
            if state is None or state["status"] != RUNNING:
                self._start_next(entries)
            self._save(entries)

    def _start_next(self, entries: dict[str, dict[str, Any]]) -> None:
        for number in sorted(entries, key=int):
            entry = entries[number]
            if entry["status"] != QUEUED:
                continue
            command = self.command_for(entry["trainer"], entry["config"])
            state = self.runner.start(
                command, label=f"queue {number}: {entry['label']}", extra={"queue_entry": number}
            )
            entry["status"] = RUNNING
            entry.update(
                run=state["id"], progress=state["progress"], log=state["log"], started=state["started"]
            )
            logger.info("queue: started entry %s", number)
            return

    def view(self, entry: dict[str, Any]) -> RunView:
        """The entry's run as its progress events tell it (step/total, ETA, phase, saves); an entry that
        has not started (or was queued before runs were recorded) gives an empty view with its status."""
        path = entry.get("progress")
        try:
            stat = Path(path).stat() if path else None
        except OSError:
            stat = None
        if stat is None:
            return RunView(status=entry["status"], returncode=entry.get("returncode"))
        key = (stat.st_size, stat.st_mtime)
        cached = self._views.get(path)
        if cached is None or cached[0] != key:
            cached = (key, apply_events(RunView(), read_events(path)))
            self._views[path] = cached
        view = cached[1]
        return dataclasses.replace(view, status=entry["status"], returncode=entry.get("returncode"))

    def job(self, number: str) -> dict[str, Any] | None:
        """Entry ``number`` as the job API and the Queue tab show it, or None when there is no such entry:
        number, label, trainer, state, exit code, progress (0..1), step/total, ETA (seconds and text, or
        what the trainer does after its steps), output and the files of its run."""
        entry = self.entries().get(number)
        return None if entry is None else job_record(number, entry, self.view(entry))

    def jobs(self) -> list[dict[str, Any]]:
        """Every entry as :meth:`job` gives it, in queue order."""
        entries = sorted(self.entries().items(), key=lambda kv: int(kv[0]))
        return [job_record(n, e, self.view(e)) for n, e in entries]

    def rows(self) -> list[list[Any]]:
        """Table rows (``ROW_HEADERS``): number, label, trainer, state, progress, ETA, exit code, output."""
        return [job_row(job) for job in self.jobs()]


def job_record(number: str, entry: dict[str, Any], view: RunView) -> dict[str, Any]:
    """One entry as plain JSON data (see ``TrainingQueue.job``)."""
    fraction = view.fraction
    return {
        "number": int(number),
        "label": entry["label"],
        "trainer": entry["trainer"],
        "state": entry["status"],
        "exit_code": entry.get("returncode"),
        "progress": None if fraction is None else round(fraction, 4),
        "step": view.step,
        "total": view.total,
        "epoch": view.epoch,
        "epochs": view.epochs,
        "eta_s": view.eta_s if entry["status"] == RUNNING else None,
        "eta": view.eta_text(),
        "phase": view.activity(),
        "output": entry.get("output") or view.output,
        "saved": list(view.saved),
        "samples": list(view.samples),
        "config": entry["config"],
        "started": entry.get("started"),
        "ended": entry.get("ended"),
    }


def job_row(job: dict[str, Any]) -> list[Any]:
    """A Queue-tab row of a :func:`job_record`: progress as "step/total (percent)"."""
    progress = ""
    if job["total"]:
        progress = f"{job['step']}/{job['total']} ({job['progress'] * 100:.0f}%)"
    return [
        job["number"],
        job["label"],
        job["trainer"],
        job["state"],
        progress,
        job["eta"],
        job["exit_code"],
        job["output"] or "",
    ]


def start_worker(queue: TrainingQueue, interval: float = 1.0) -> threading.Thread:
    """A daemon thread that ticks the queue every ``interval`` seconds (runs whether or not a page is open)."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            try:
                queue.tick()
            except Exception:  # noqa: BLE001 - keep the worker alive; the error is logged
                logger.exception("queue tick failed")

    thread = threading.Thread(target=loop, name="training-queue", daemon=True)
    thread.stop_event = stop  # type: ignore[attr-defined]
    thread.start()
    return thread
