"""The validation loss: held-out pictures (``validation_split``) at fixed timesteps and fixed noise.

Every evaluation sees the same batches, captions, timesteps and noise, so the curve moves only with the
weights: it falls while the model learns what generalises and rises when it starts to memorise the
training pictures. The timesteps are sd-scripts' choice: 4 evenly spaced inside [min_timestep,
max_timestep] (200, 400, 600, 800 by default). Nothing here draws from a global RNG, so validating does
not change the training run (a test trains with and without it and compares the weights bit for bit).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from library.training.setup import step_seed

#: timesteps per validation batch
NUM_TIMESTEPS = 4


def validation_timesteps(min_timestep: int | None, max_timestep: int | None, num_train_timesteps: int) -> list[int]:
    """``NUM_TIMESTEPS`` timesteps evenly inside (min, max), ends excluded: [200, 400, 600, 800] for 0..1000."""
    low = min_timestep or 0
    high = max_timestep or num_train_timesteps
    return [int(t) for t in np.linspace(low, high, NUM_TIMESTEPS + 2, dtype=int)[1:-1]]


class Validator:
    """When to validate, and the mean loss over the held-out batches x timesteps."""

    def __init__(self, config, dataset, settings, num_train_timesteps: int, seed: int):
        self.config = config
        self.dataset = dataset
        self.settings = settings
        self.seed = config.validation_seed if config.validation_seed is not None else seed
        self.batches = dataset.epoch_batches(1, self.seed) if dataset is not None else []
        if config.max_validation_steps:
            self.batches = self.batches[: config.max_validation_steps]
        self.timesteps = validation_timesteps(config.min_timestep, config.max_timestep, num_train_timesteps)

    @property
    def enabled(self) -> bool:
        return bool(self.batches)

    def due_at_step(self, step: int) -> bool:
        every = self.config.validate_every_n_steps
        return self.enabled and bool(every) and step % every == 0

    def due_at_epoch(self, epoch: int) -> bool:
        return self.enabled and epoch % (self.config.validate_every_n_epochs or 1) == 0

    def loss(self, compute, modules: list[torch.nn.Module]) -> float:
        """Mean of ``compute(batch, generator, settings)`` over the batches and timesteps (the run's step
        settings with the timestep fixed), modules in eval
        mode (no dropout) and without gradients; the modules' train/eval flags are restored after."""
        flags = [(m, m.training) for m in modules]
        for module in modules:
            module.eval()
        total, count = 0.0, 0
        try:
            with torch.no_grad():
                for index, refs in enumerate(self.batches):
                    batch = self.dataset.load_batch(refs, epoch=1, seed=self.seed, step=index)
                    for k, timestep in enumerate(self.timesteps):
                        fixed = dataclasses.replace(self.settings, noise=dataclasses.replace(
                            self.settings.noise, min_timestep=timestep, max_timestep=timestep))
                        generator = torch.Generator().manual_seed(step_seed(self.seed, 0, index * 64 + k))
                        total += float(compute(batch, generator, fixed))
                        count += 1
        finally:
            for module, flag in flags:
                module.train(flag)
        return total / count
