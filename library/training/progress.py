"""Progress reporting: a tqdm bar (step, epoch, loss, lr, it/s, ETA) and TensorBoard scalars."""

from __future__ import annotations

import logging
from collections import deque

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


class RunningLoss:
    """Mean of the last ``window`` losses (sd-scripts shows a running average per epoch)."""

    def __init__(self, window: int = 100):
        self.values: deque[float] = deque(maxlen=window)

    def add(self, value: float) -> float:
        self.values.append(value)
        return self.mean

    @property
    def mean(self) -> float:
        return sum(self.values) / max(1, len(self.values))


class Progress:
    """The console bar of a run; only the main process shows it."""

    def __init__(self, total_steps: int, initial_step: int, enabled: bool):
        self.bar = tqdm(total=total_steps, initial=initial_step, disable=not enabled, desc="steps",
                        dynamic_ncols=True, smoothing=0.1)

    def update(self, epoch: int, num_epochs: int, loss: float, avg_loss: float, lr: float) -> None:
        self.bar.update(1)
        self.bar.set_postfix(epoch=f"{epoch}/{num_epochs}", loss=f"{loss:.4f}", avr_loss=f"{avg_loss:.4f}",
                             lr=f"{lr:.2e}", refresh=False)

    def close(self) -> None:
        self.bar.close()
