"""The learning-rate curves behind ``lr_scheduler``: each a ``LambdaLR`` of a multiplier ``f(step)``.

These are the curves of transformers' ``optimization`` module (the ones sd-scripts calls), with the same
arguments, defaults and values, so ``lr_scheduler_args`` written for sd-scripts reach them unchanged and a
run's learning rates are the same number for number (``tests/optim/test_lr_curves.py`` checks every curve
against transformers'). They are our own because importing ``transformers.optimization`` costs every start
up to 1.5 s on 2 cores (it imports the trainer utilities, and through them peft and bitsandbytes), for a
handful of one-line formulas.

The multipliers are ``functools.partial`` objects of module functions, as transformers' are, so a
scheduler's ``state_dict`` (and a resumed run) holds the same entries.
"""

from __future__ import annotations

import math
from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

WSD_SHAPES = ("linear", "cosine", "1-sqrt")


def _warmup(step: int, warmup: int) -> float:
    return float(step) / float(max(1, warmup))


def _constant(_step: int = 0) -> float:
    return 1


def _constant_with_warmup(step: int, *, num_warmup_steps: int) -> float:
    if step < num_warmup_steps:
        return float(step) / float(max(1.0, num_warmup_steps))
    return 1.0


def _linear(step: int, *, num_warmup_steps: int, num_training_steps: int) -> float:
    if step < num_warmup_steps:
        return _warmup(step, num_warmup_steps)
    return max(0.0, float(num_training_steps - step) / float(max(1, num_training_steps - num_warmup_steps)))


def _cosine(step: int, *, num_warmup_steps: int, num_training_steps: int, num_cycles: float,
            min_lr_rate: float = 0.0) -> float:
    if step < num_warmup_steps:
        return _warmup(step, num_warmup_steps)
    progress = float(step - num_warmup_steps) / float(max(1, num_training_steps - num_warmup_steps))
    factor = 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress))
    return max(0, factor * (1 - min_lr_rate) + min_lr_rate)


def _cosine_hard_restarts(step: int, *, num_warmup_steps: int, num_training_steps: int, num_cycles: int) -> float:
    if step < num_warmup_steps:
        return _warmup(step, num_warmup_steps)
    progress = float(step - num_warmup_steps) / float(max(1, num_training_steps - num_warmup_steps))
    if progress >= 1.0:
        return 0.0
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((float(num_cycles) * progress) % 1.0))))


def _polynomial(step: int, *, num_warmup_steps: int, num_training_steps: int, lr_end: float, power: float,
                lr_init: float) -> float:
    if step < num_warmup_steps:
        return _warmup(step, num_warmup_steps)
    if step > num_training_steps:
        return lr_end / lr_init  # LambdaLR multiplies by lr_init
    remaining = 1 - (step - num_warmup_steps) / (num_training_steps - num_warmup_steps)
    return ((lr_init - lr_end) * remaining**power + lr_end) / lr_init


def _inverse_sqrt(step: int, *, num_warmup_steps: int, timescale: int) -> float:
    if step < num_warmup_steps:
        return _warmup(step, num_warmup_steps)
    return 1.0 / math.sqrt((step + timescale - num_warmup_steps) / timescale)


def _shape(kind: str, progress: float, num_cycles: float, rising: bool) -> float:
    if kind == "linear":
        return progress if rising else 1.0 - progress
    if kind == "cosine":
        if rising:
            return 0.5 * (1.0 - math.cos(math.pi * progress))
        return 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress))
    return 1.0 - math.sqrt(1.0 - progress) if rising else 1.0 - math.sqrt(progress)  # "1-sqrt"


def _wsd(step: int, *, num_warmup_steps: int, num_stable_steps: int, num_decay_steps: int, warmup_type: str,
         decay_type: str, min_lr_ratio: float, num_cycles: float) -> float:
    if step < num_warmup_steps:
        progress = float(step) / float(max(1, num_warmup_steps))
        factor = _shape(warmup_type, progress, num_cycles, rising=True)
        return max(0.0, factor * (1.0 - min_lr_ratio) + min_lr_ratio)
    if step < num_warmup_steps + num_stable_steps:
        return 1.0
    if step < num_warmup_steps + num_stable_steps + num_decay_steps:
        progress = float(step - num_warmup_steps - num_stable_steps) / float(max(1, num_decay_steps))
        factor = _shape(decay_type, progress, num_cycles, rising=False)
        return max(0.0, factor * (1.0 - min_lr_ratio) + min_lr_ratio)
    return min_lr_ratio


# -- the schedules, with transformers' names, arguments and defaults ------------------------------------------

def get_constant_schedule(optimizer: Optimizer, last_epoch: int = -1) -> LambdaLR:
    return LambdaLR(optimizer, _constant, last_epoch=last_epoch)


def get_constant_schedule_with_warmup(optimizer: Optimizer, num_warmup_steps: int, last_epoch: int = -1) -> LambdaLR:
    return LambdaLR(optimizer, partial(_constant_with_warmup, num_warmup_steps=num_warmup_steps), last_epoch)


def get_linear_schedule_with_warmup(optimizer: Optimizer, num_warmup_steps: int, num_training_steps: int,
                                    last_epoch: int = -1) -> LambdaLR:
    curve = partial(_linear, num_warmup_steps=num_warmup_steps, num_training_steps=num_training_steps)
    return LambdaLR(optimizer, curve, last_epoch)


def get_cosine_schedule_with_warmup(optimizer: Optimizer, num_warmup_steps: int, num_training_steps: int,
                                    num_cycles: float = 0.5, last_epoch: int = -1) -> LambdaLR:
    curve = partial(_cosine, num_warmup_steps=num_warmup_steps, num_training_steps=num_training_steps,
                    num_cycles=num_cycles)
    return LambdaLR(optimizer, curve, last_epoch)


def get_cosine_with_hard_restarts_schedule_with_warmup(optimizer: Optimizer, num_warmup_steps: int,
                                                       num_training_steps: int, num_cycles: int = 1,
                                                       last_epoch: int = -1) -> LambdaLR:
    curve = partial(_cosine_hard_restarts, num_warmup_steps=num_warmup_steps, num_training_steps=num_training_steps,
                    num_cycles=num_cycles)
    return LambdaLR(optimizer, curve, last_epoch)


def get_polynomial_decay_schedule_with_warmup(optimizer: Optimizer, num_warmup_steps: int, num_training_steps: int,
                                              lr_end: float = 1e-7, power: float = 1.0,
                                              last_epoch: int = -1) -> LambdaLR:
    lr_init = optimizer.defaults["lr"]
    if not lr_init > lr_end:
        raise ValueError(f"lr_end ({lr_end}) must be smaller than the initial lr ({lr_init})")
    curve = partial(_polynomial, num_warmup_steps=num_warmup_steps, num_training_steps=num_training_steps,
                    lr_end=lr_end, power=power, lr_init=lr_init)
    return LambdaLR(optimizer, curve, last_epoch)


def get_inverse_sqrt_schedule(optimizer: Optimizer, num_warmup_steps: int, timescale: int | None = None,
                              last_epoch: int = -1) -> LambdaLR:
    if timescale is None:
        timescale = num_warmup_steps or 10_000
    curve = partial(_inverse_sqrt, num_warmup_steps=num_warmup_steps, timescale=timescale)
    return LambdaLR(optimizer, curve, last_epoch=last_epoch)


def get_cosine_with_min_lr_schedule_with_warmup(optimizer: Optimizer, num_warmup_steps: int,
                                                num_training_steps: int, num_cycles: float = 0.5,
                                                last_epoch: int = -1, min_lr: float | None = None,
                                                min_lr_rate: float | None = None) -> LambdaLR:
    if min_lr is not None and min_lr_rate is not None:
        raise ValueError("only one of min_lr or min_lr_rate may be set")
    if min_lr is not None:
        min_lr_rate = min_lr / optimizer.defaults["lr"]
    elif min_lr_rate is None:
        raise ValueError("one of min_lr or min_lr_rate must be set")
    curve = partial(_cosine, num_warmup_steps=num_warmup_steps, num_training_steps=num_training_steps,
                    num_cycles=num_cycles, min_lr_rate=min_lr_rate)
    return LambdaLR(optimizer, curve, last_epoch)


def get_wsd_schedule(optimizer: Optimizer, num_warmup_steps: int, num_decay_steps: int,
                     num_training_steps: int | None = None, num_stable_steps: int | None = None,
                     warmup_type: str = "linear", decay_type: str = "cosine", min_lr_ratio: float = 0,
                     num_cycles: float = 0.5, last_epoch: int = -1) -> LambdaLR:
    if num_training_steps is None and num_stable_steps is None:
        raise ValueError("either num_training_steps or num_stable_steps must be given")
    for name, kind in (("warmup_type", warmup_type), ("decay_type", decay_type)):
        if kind not in WSD_SHAPES:
            raise ValueError(f"{name} {kind!r} is not one of {', '.join(WSD_SHAPES)}")
    if num_stable_steps is None:
        num_stable_steps = num_training_steps - num_warmup_steps - num_decay_steps
    curve = partial(_wsd, num_warmup_steps=num_warmup_steps, num_stable_steps=num_stable_steps,
                    num_decay_steps=num_decay_steps, warmup_type=warmup_type, decay_type=decay_type,
                    min_lr_ratio=min_lr_ratio, num_cycles=num_cycles)
    return LambdaLR(optimizer, curve, last_epoch)
