"""Learning-rate schedules by name (sd-scripts' ``lr_scheduler``): transformers' curves (in :mod:`lr_curves`) and
diffusers' piecewise constant one.

Every schedule is a multiplier ``f(step)`` of each param group's own lr (so separate ``unet_lr`` /
``text_encoder_lr`` groups follow the same curve). One registry entry per name; a factory takes the
optimizer and a :class:`ScheduleSpec`. ``lr_scheduler_type`` (a dotted class) and ``lr_scheduler_args``
("key=value" strings, parsed like ``optimizer_args``) are sd-scripts' escape hatch. Schedule-free
optimizers get a constant dummy schedule; Adafactor with ``relative_step`` gets the ``adafactor`` one.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from library.errors import ConfigError
from library.training import lr_curves
from library.training.optimizers import is_schedule_free, parse_key_value_args, unwrap_optimizer
from library.util.registry import Registry

logger = logging.getLogger(__name__)

SCHEDULERS = Registry("lr_scheduler")


@dataclass(frozen=True)
class ScheduleSpec:
    """The resolved lengths and shape parameters of a schedule (all step counts are optimizer steps)."""

    warmup_steps: int
    total_steps: int
    num_cycles: int = 1
    power: float = 1.0
    decay_steps: int = 0
    min_lr_ratio: float | None = None
    timescale: int | None = None
    #: ``lr_scheduler_args``, passed on as keyword arguments.
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_steps(value: int | float | str | None, total_steps: int) -> int:
    """A warm-up/decay length given as a count, a ratio (< 1) of ``total_steps`` or "N%" -> a step count."""
    if value is None:
        return 0
    if isinstance(value, str):
        return int(total_steps * float(value.rstrip("%")) / 100)
    if isinstance(value, float) and value < 1:
        return int(total_steps * value)
    return int(value)


def _transformers(function: str, **spec_args: Callable[[ScheduleSpec], Any]) -> Callable:
    """A factory calling ``lr_curves.<function>`` (transformers' curve of that name, see :mod:`lr_curves`) with
    arguments taken from the spec."""

    def factory(optimizer, spec: ScheduleSpec):
        kwargs = {name: pick(spec) for name, pick in spec_args.items()}
        return getattr(lr_curves, function)(optimizer, **kwargs, **spec.extra)

    return factory


def _warmup(spec: ScheduleSpec) -> int:
    return spec.warmup_steps


def _total(spec: ScheduleSpec) -> int:
    return spec.total_steps


_FACTORIES = {
    # f = 1
    "constant": _transformers("get_constant_schedule"),
    # f = s / w during warm-up, then 1
    "constant_with_warmup": _transformers("get_constant_schedule_with_warmup", num_warmup_steps=_warmup),
    # f = (T - s) / (T - w) after warm-up
    "linear": _transformers(
        "get_linear_schedule_with_warmup", num_warmup_steps=_warmup, num_training_steps=_total
    ),
    # f = ½(1 + cos(π p)), p = (s - w) / (T - w)
    "cosine": _transformers(
        "get_cosine_schedule_with_warmup", num_warmup_steps=_warmup, num_training_steps=_total
    ),
    # f = ½(1 + cos(π ((n p) mod 1))): n hard restarts
    "cosine_with_restarts": _transformers(
        "get_cosine_with_hard_restarts_schedule_with_warmup",
        num_warmup_steps=_warmup,
        num_training_steps=_total,
        num_cycles=lambda s: s.num_cycles,
    ),
    # f = (1 - lr_end/lr) (1 - p)^power + lr_end/lr
    "polynomial": _transformers(
        "get_polynomial_decay_schedule_with_warmup",
        num_warmup_steps=_warmup,
        num_training_steps=_total,
        power=lambda s: s.power,
    ),
    # f = 1 / sqrt((s + τ - w) / τ) after warm-up, τ = lr_scheduler_timescale (default: w, or 10,000)
    "inverse_sqrt": _transformers(
        "get_inverse_sqrt_schedule", num_warmup_steps=_warmup, timescale=lambda s: s.timescale
    ),
    # f = r + (1 - r) ½(1 + cos(π n p)), r = lr_scheduler_min_lr_ratio (sd-scripts passes num_cycles / 2)
    "cosine_with_min_lr": _transformers(
        "get_cosine_with_min_lr_schedule_with_warmup",
        num_warmup_steps=_warmup,
        num_training_steps=_total,
        num_cycles=lambda s: s.num_cycles / 2,
        min_lr_rate=lambda s: _need_min_lr_ratio(s),
    ),
    # warm-up, f = 1 until T - d, then r + (1 - r) ½(1 + cos(π n q)) over the d = lr_decay_steps last steps
    "warmup_stable_decay": _transformers(
        "get_wsd_schedule",
        num_warmup_steps=_warmup,
        num_decay_steps=lambda s: s.decay_steps,
        num_stable_steps=lambda s: _stable_steps(s),
        num_cycles=lambda s: s.num_cycles / 2,
        min_lr_ratio=lambda s: s.min_lr_ratio or 0.0,
    ),
}

_DESCRIPTIONS = {
    "constant": "the same lr throughout (with lr_warmup_steps: constant_with_warmup)",
    "constant_with_warmup": "linear warm-up, then constant",
    "linear": "linear warm-up, then linear decay to 0",
    "cosine": "linear warm-up, then half a cosine down to 0",
    "cosine_with_restarts": "cosine with lr_scheduler_num_cycles hard restarts",
    "polynomial": "polynomial decay with lr_scheduler_power",
    "inverse_sqrt": "1/sqrt(step) decay with lr_scheduler_timescale",
    "cosine_with_min_lr": "cosine down to lr × lr_scheduler_min_lr_ratio",
    "warmup_stable_decay": "warm-up, constant, then cosine decay over lr_decay_steps",
}

for _name, _factory in _FACTORIES.items():
    SCHEDULERS.register(_name, description=_DESCRIPTIONS[_name])(_factory)


def _need_min_lr_ratio(spec: ScheduleSpec) -> float:
    if spec.min_lr_ratio is None:
        raise ConfigError(
            "lr_scheduler 'cosine_with_min_lr' needs 'lr_scheduler_min_lr_ratio' (e.g. 0.1: the "
            "lr ends at a tenth of learning_rate)."
        )
    return spec.min_lr_ratio


def _stable_steps(spec: ScheduleSpec) -> int:
    stable = spec.total_steps - spec.warmup_steps - spec.decay_steps
    if stable < 0:
        raise ConfigError(
            f"lr_scheduler 'warmup_stable_decay': lr_warmup_steps ({spec.warmup_steps}) + lr_decay_steps "
            f"({spec.decay_steps}) is more than the {spec.total_steps} training steps. Shorten them."
        )
    return stable


@SCHEDULERS.register("piecewise_constant", description="lr multipliers by step: lr_scheduler_args step_rules")
def _piecewise_constant(optimizer, spec: ScheduleSpec):
    """diffusers' piecewise constant schedule: ``step_rules="1:10,0.1:20,0.01"`` = ×1 until step 10, ×0.1
    until step 20, then ×0.01."""
    from diffusers.optimization import get_piecewise_constant_schedule

    extra = dict(spec.extra)
    rules = extra.pop("step_rules", None)
    if rules is None:
        raise ConfigError(
            "lr_scheduler 'piecewise_constant' needs lr_scheduler_args = [\"step_rules=1:100,0.1:200,0.01\"] "
            "(multiplier:until_step pairs, then the final multiplier)."
        )
    if isinstance(rules, tuple):  # "1:10,0.1" was split on the commas by the key=value parser
        rules = ",".join(str(r) for r in rules)
    try:
        return get_piecewise_constant_schedule(optimizer, step_rules=str(rules), **extra)
    except ValueError as exc:
        raise ConfigError(
            f"lr_scheduler_args step_rules={rules!r} is malformed ({exc}); write it like "
            '"1:100,0.1:200,0.01".'
        ) from None


@SCHEDULERS.register("adafactor", description="Adafactor's own relative-step lr (optimizer_type AdaFactor)")
def _adafactor(optimizer, spec: ScheduleSpec):
    """transformers' ``AdafactorSchedule``: reports the lr Adafactor computes itself (relative_step)."""
    from transformers.optimization import AdafactorSchedule

    if not _is_adafactor(optimizer):
        raise ConfigError(
            "lr_scheduler 'adafactor' only works with optimizer_type = \"AdaFactor\"; choose "
            "another schedule (e.g. constant_with_warmup)."
        )
    initial = spec.extra.get("initial_lr", getattr(optimizer, "initial_lr_for_schedule", 0.0) or 0.0)
    return AdafactorSchedule(optimizer, initial_lr=initial)


def _is_adafactor(optimizer) -> bool:
    return type(optimizer).__name__ == "Adafactor"


def constant_dummy_schedule(optimizer) -> LambdaLR:
    """A schedule that never changes the lr (schedule-free optimizers schedule themselves)."""
    return LambdaLR(optimizer, lambda _step: 1.0)


def scheduler_options(config) -> dict[str, Any]:
    """The keyword arguments of :func:`build_scheduler` beyond sd-scripts' first four, from a Config."""
    return dict(
        decay=config.lr_decay_steps,
        min_lr_ratio=config.lr_scheduler_min_lr_ratio,
        timescale=config.lr_scheduler_timescale,
        scheduler_args=config.lr_scheduler_args,
        scheduler_type=config.lr_scheduler_type,
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str,
    *,
    warmup: int | float | str | None,
    total_steps: int,
    num_cycles: int = 1,
    power: float = 1.0,
    decay: int | float | str | None = None,
    min_lr_ratio: float | None = None,
    timescale: int | None = None,
    scheduler_args: list[str] | tuple[str, ...] = (),
    scheduler_type: str | None = None,
) -> torch.optim.lr_scheduler.LRScheduler:
    """The schedule ``name`` over ``total_steps`` optimizer steps; every param group follows it.

    ``warmup`` / ``decay``: a count, a ratio (< 1) of ``total_steps`` or "N%". ``scheduler_type``: a dotted
    class built as ``cls(optimizer, **lr_scheduler_args)`` (no warm-up then, as sd-scripts).
    """
    inner = unwrap_optimizer(optimizer)
    extra = parse_key_value_args(scheduler_args or (), "lr_scheduler_args")
    if is_schedule_free(inner):
        if name not in ("constant", "constant_with_warmup") or scheduler_type:
            logger.warning(
                "schedule-free optimizers need no lr schedule: lr_scheduler %r is ignored",
                scheduler_type or name,
            )
        return constant_dummy_schedule(inner)
    warmup_steps = resolve_steps(warmup, total_steps)
    if scheduler_type:
        return _custom_scheduler(inner, scheduler_type, extra, warmup_steps)
    name = _adafactor_advice(inner, name)
    entry = SCHEDULERS.find(name)
    if entry is None:
        raise ConfigError(f"option 'lr_scheduler': {SCHEDULERS.unknown_message(name)}")
    if entry.name == "constant" and warmup_steps:
        entry = SCHEDULERS.find("constant_with_warmup")
    spec = ScheduleSpec(
        warmup_steps,
        total_steps,
        num_cycles,
        power,
        resolve_steps(decay, total_steps),
        min_lr_ratio,
        timescale,
        extra,
    )
    try:
        return entry.factory(inner, spec)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"lr_scheduler {entry.name!r} rejected lr_scheduler_args {list(scheduler_args)!r}: {exc}"
        ) from None


def _adafactor_advice(optimizer, name: str) -> str:
    """sd-scripts' rules for Adafactor: relative_step forces the adafactor schedule; else advise one."""
    if not _is_adafactor(optimizer):
        return name
    if optimizer.defaults.get("relative_step"):
        if name.lower() != "adafactor":
            logger.warning(
                "Adafactor with relative_step=True computes its own lr: lr_scheduler %r is replaced "
                "by 'adafactor'",
                name,
            )
        return "adafactor"
    if name.lower() != "constant_with_warmup":
        logger.warning(
            "Adafactor with relative_step=False: lr_scheduler 'constant_with_warmup' is recommended (now %r)",
            name,
        )
    return name


def _custom_scheduler(optimizer, dotted: str, extra: dict, warmup_steps: int):
    """sd-scripts' ``lr_scheduler_type``: any scheduler class, configured by ``lr_scheduler_args`` only."""
    if warmup_steps:
        raise ConfigError(
            f"'lr_scheduler_type' ({dotted}) is configured by 'lr_scheduler_args' only: set "
            "'lr_warmup_steps' to 0 (or use a built-in lr_scheduler with warm-up)."
        )
    module_name, _, class_name = dotted.rpartition(".")
    module_name = module_name or "torch.optim.lr_scheduler"  # sd-scripts: a bare name is one of torch's
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"option 'lr_scheduler_type': cannot import {module_name!r} ({exc}). Install it with: "
            f"pip install {module_name.split('.')[0]}"
        ) from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ConfigError(f"option 'lr_scheduler_type': module {module_name!r} has no class {class_name!r}.")
    try:
        return cls(optimizer, **extra)
    except TypeError as exc:
        raise ConfigError(
            f"lr_scheduler_type {dotted!r} rejected lr_scheduler_args {extra!r}: {exc}"
        ) from None
