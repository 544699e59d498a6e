"""The training queue: configs stored as files (``queue/<n>.toml``) plus ``queue/state.json`` (each entry's
trainer, label, state, exit code and output). Entries run one after another through the ``JobRunner``; a
failed run does not stop the queue; the queue survives a GUI restart because it is only files.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

from library.gui.jobs import RUNNING, JobRunner, read_events
from library.util.atomic import write_text_atomic

logger = logging.getLogger(__name__)

QUEUED = "queued"


class TrainingQueue:
    """A folder of queued configs driven by ``tick()`` (called by a background thread or a page timer)."""

    def __init__(self, root: str | Path, runner: JobRunner, command_for):
        """``command_for(trainer, config_path) -> list[str]`` builds each entry's argument list."""
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.runner = runner
        self.command_for = command_for
        self._lock = threading.Lock()

    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    def entries(self) -> dict[str, dict[str, Any]]:
        """Entry number (as a string) -> {"trainer", "label", "status", "returncode", "output", "config"}."""
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
            self.runner.start(
                command, label=f"queue {number}: {entry['label']}", extra={"queue_entry": number}
            )
            entry["status"] = RUNNING
            logger.info("queue: started entry %s", number)
            return

    def rows(self) -> list[list[Any]]:
        """Table rows: number, label, trainer, state, exit code, output."""
        return [
            [n, e["label"], e["trainer"], e["status"], e["returncode"], e["output"] or ""]
            for n, e in sorted(self.entries().items(), key=lambda kv: int(kv[0]))
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
