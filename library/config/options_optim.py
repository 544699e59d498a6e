"""Optimizer and learning-rate schedule options beyond the basics in ``options.py`` (sd-scripts' names)."""

from __future__ import annotations

from library.config.schema import Option


def _check_dotted_class(value: str) -> str | None:
    if value and (value.startswith(".") or value.endswith(".") or ".." in value):
        return (
            f"{value!r} is not a class name; write a dotted path such as "
            '"torch.optim.lr_scheduler.CosineAnnealingLR", or a bare name of torch.optim.lr_scheduler\'s.'
        )
    return None


OPTIONS = [
    Option("use_lion_optimizer", "bool", False, "Legacy flag: same as optimizer_type = Lion.", "training"),
    Option(
        "lr_scheduler_type",
        "str",
        None,
        "A learning-rate scheduler class by its dotted name (e.g. torch.optim.lr_scheduler.CosineAnnealingLR; a "
        "bare name such as CosineAnnealingLR is torch's, as in sd-scripts), configured by lr_scheduler_args; "
        "replaces lr_scheduler.",
        "training",
        check=_check_dotted_class,
    ),
    Option(
        "lr_scheduler_args",
        "strs",
        [],
        "Extra scheduler arguments as key=value strings (e.g. step_rules=1:100,0.1 for piecewise_constant, "
        "T_max=100 for a lr_scheduler_type).",
        "training",
    ),
    Option(
        "lr_decay_steps",
        "steps",
        0,
        'Decay length of warmup_stable_decay: a step count, a ratio below 1 of all steps, or "N%".',
        "training",
    ),
    Option(
        "lr_scheduler_timescale",
        "int",
        None,
        "Time scale of inverse_sqrt (unset: the warm-up length, or 10000 without warm-up).",
        "training",
        min=1,
        zero_is_off=True,
    ),
    Option(
        "lr_scheduler_min_lr_ratio",
        "float",
        None,
        "Lowest lr as a fraction of learning_rate, for cosine_with_min_lr and warmup_stable_decay.",
        "training",
        min=0.0,
        max=1.0,
    ),
]
