"""An exponential moving average of the trained weights (``ema_decay``), through diffusers' ``EMAModel``.

The average is updated after every ``ema_update_every_n_steps``-th optimizer step and stands in for the
trained weights whenever they are used rather than trained: saved files, sample images and the validation
loss. The trained weights themselves are put back bit for bit afterwards, so the run goes on as without EMA.
Its state is saved with ``save_state`` and restored by ``resume``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


class WeightAverage:
    """EMA of ``params``; decay warms up as (1 + n) / (10 + n) up to ``decay`` (diffusers' default)."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float, every: int = 1):
        from diffusers.training_utils import EMAModel

        self.params = params
        self.every = every
        self.model = EMAModel(params, decay=decay)

    def after_step(self, step: int) -> None:
        """Called after optimizer step ``step`` (1-based)."""
        if step % self.every == 0:
            self.model.step(self.params)

    @contextlib.contextmanager
    def in_place(self) -> Iterator[None]:
        """The averaged weights in the trained parameters for the duration; the trained ones back after."""
        self.model.store(self.params)
        self.model.copy_to(self.params)
        try:
            yield
        finally:
            self.model.restore(self.params)

    # accelerate.register_for_checkpointing: the average is part of the training state
    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)
