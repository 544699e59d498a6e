"""Progress reporting: a tqdm bar (step, epoch, loss, lr, it/s, ETA), and an optional JSON-lines event
stream for front ends (the GUI sets ``SDTRAIN_PROGRESS_FILE``; one JSON object per line)."""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from pathlib import Path

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

#: environment variable naming the JSON-lines file that receives progress events.
PROGRESS_ENV = "SDTRAIN_PROGRESS_FILE"


class RunningLoss:
    """Mean of the last ``window`` losses (sd-scripts shows a running average)."""

    def __init__(self, window: int = 100):
        self.values: deque[float] = deque(maxlen=window)

    def add(self, value: float) -> float:
        self.values.append(value)
        return self.mean

    @property
    def mean(self) -> float:
        return sum(self.values) / max(1, len(self.values))


class EventLog:
    """Appends events to the file named by ``SDTRAIN_PROGRESS_FILE`` (main process only); no-op otherwise.

    Events: {"event": "start", "total": N, "epochs": E}, {"event": "step", "step", "total", "epoch",
    "epochs", "loss", "avg_loss", "lr", "it_s", "eta_s"}, {"event": "sample", "paths": [...]},
    {"event": "validation", "step", "loss", "kind"}, {"event": "saved", "path"}, {"event": "stopped", "step"},
    {"event": "phase", "phase": "sampling" | "saving", "step"}, {"event": "done", "path"}; each with "time".
    """

    def __init__(self, enabled: bool):
        name = os.environ.get(PROGRESS_ENV)
        self.path = Path(name) if (name and enabled) else None

    def emit(self, event: str, **fields) -> None:
        if self.path is None:
            return
        record = {"event": event, "time": time.time(), **fields}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def phase(self, name: str, step: int) -> None:
        """Say that work without steps begins (``"sampling"``, ``"saving"``), so a front end shows it rather
        than an ETA that has run out; the next step, sample or done event ends it."""
        self.emit("phase", phase=name, step=step)


class Progress:
    """The console bar of a run and the event stream; only the main process shows/writes them."""

    def __init__(self, total_steps: int, initial_step: int, num_epochs: int, events: EventLog, enabled: bool):
        self.total, self.num_epochs = total_steps, num_epochs
        self.bar = tqdm(total=total_steps, initial=initial_step, disable=not enabled, desc="steps",
                        dynamic_ncols=True, smoothing=0.1)
        self.events = events
        self.started, self.first_step = time.time(), initial_step
        self.events.emit("start", total=total_steps, epochs=num_epochs, step=initial_step)

    def update(self, step: int, epoch: int, loss: float, avg_loss: float, lr: float) -> None:
        self.bar.update(1)
        self.bar.set_postfix(epoch=f"{epoch}/{self.num_epochs}", loss=f"{loss:.4f}", avr_loss=f"{avg_loss:.4f}",
                             lr=f"{lr:.2e}", refresh=False)
        elapsed = max(time.time() - self.started, 1e-9)
        rate = (step - self.first_step) / elapsed
        eta = (self.total - step) / rate if rate > 0 else None
        self.events.emit("step", step=step, total=self.total, epoch=epoch, epochs=self.num_epochs, loss=loss,
                         avg_loss=avg_loss, lr=lr, it_s=rate, eta_s=eta)

    def close(self) -> None:
        self.bar.close()
