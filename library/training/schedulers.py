"""Learning-rate schedules by name (sd-scripts' ``lr_scheduler``), built on diffusers' schedules."""

from __future__ import annotations

from typing import Callable

import torch
from diffusers.optimization import get_scheduler

from library.util.registry import Registry

SCHEDULERS = Registry("lr_scheduler")


def resolve_steps(value: int | float | str | None, total_steps: int) -> int:
    """A warm-up/decay length given as a count, a ratio (< 1) of ``total_steps`` or "N%" -> a step count."""
    if value is None:
        return 0
    if isinstance(value, str):
        return int(total_steps * float(value.rstrip("%")) / 100)
    if isinstance(value, float) and value < 1:
        return int(total_steps * value)
    return int(value)


def _diffusers(name: str) -> Callable:
    def factory(optimizer, warmup_steps: int, total_steps: int, num_cycles: int, power: float):
        return get_scheduler(
            name,
            optimizer,
            num_warmup_steps=warmup_steps,
            num_training_steps=total_steps,
            num_cycles=num_cycles,
            power=power,
        )

    return factory


for _name in ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"):
    SCHEDULERS.register(_name, description=f"diffusers' {_name} schedule")(_diffusers(_name))


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str,
    *,
    warmup: int | float | str | None,
    total_steps: int,
    num_cycles: int = 1,
    power: float = 1.0,
) -> torch.optim.lr_scheduler.LRScheduler:
    """The schedule ``name`` over ``total_steps`` optimizer steps; every param group follows it."""
    entry = SCHEDULERS.find(name)
    if entry is None:
        from library.errors import ConfigError

        raise ConfigError(f"option 'lr_scheduler': {SCHEDULERS.unknown_message(name)}")
    warmup_steps = resolve_steps(warmup, total_steps)
    if name == "constant" and warmup_steps:
        entry = SCHEDULERS.find("constant_with_warmup")
    return entry.factory(optimizer, warmup_steps, total_steps, num_cycles, power)
