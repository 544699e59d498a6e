"""Learning-rate schedules: each curve against its formula at chosen steps, and the special cases."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from library.errors import ConfigError
from library.training.optimizers import build_optimizer
from library.training.schedulers import SCHEDULERS, build_scheduler, resolve_steps, scheduler_options

T, W = 100, 10  # total steps, warm-up steps
STEPS = [0, 3, 9, 10, 11, 37, 50, 64, 90, 99, 100]


def _optimizer(lrs=(1.0,)):
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0])


def _curve(scheduler, optimizer, steps, group: int = 0) -> dict[int, float]:
    """lr of ``group`` after s scheduler steps, for each s in ``steps`` (s = 0: before any step)."""
    out, done = {}, 0
    for s in sorted(steps):
        while done < s:
            optimizer.step()
            scheduler.step()
            done += 1
        out[s] = scheduler.get_last_lr()[group]
    return out


def _warm(s: int) -> float | None:
    return s / W if s < W else None


def _progress(s: int) -> float:
    return (s - W) / (T - W)


FORMULAS = {
    "constant": (dict(warmup=0), lambda s: 1.0),
    "constant_with_warmup": (dict(warmup=W), lambda s: _warm(s) if s < W else 1.0),
    "linear": (dict(warmup=W), lambda s: _warm(s) if s < W else max(0.0, (T - s) / (T - W))),
    "cosine": (dict(warmup=W), lambda s: _warm(s) if s < W else 0.5 * (1 + math.cos(math.pi * _progress(s)))),
    "cosine_with_restarts": (
        dict(warmup=W, num_cycles=3),
        lambda s: (
            _warm(s)
            if s < W
            else (0.0 if _progress(s) >= 1 else 0.5 * (1 + math.cos(math.pi * ((3 * _progress(s)) % 1.0))))
        ),
    ),
    "polynomial": (
        dict(warmup=W, power=2.0),
        lambda s: _warm(s) if s < W else (1 - 1e-7) * (1 - _progress(s)) ** 2 + 1e-7,
    ),
    # timescale τ = 25: f = 1 / sqrt((s + τ - W) / τ)
    "inverse_sqrt": (
        dict(warmup=W, timescale=25),
        lambda s: _warm(s) if s < W else 1 / math.sqrt((s + 25 - W) / 25),
    ),
    # min ratio r = 0.2: f = r + (1 - r) · ½(1 + cos(π p))
    "cosine_with_min_lr": (
        dict(warmup=W, min_lr_ratio=0.2),
        lambda s: _warm(s) if s < W else 0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * _progress(s))),
    ),
    # decay over the last 30 steps: stable until 70, then r + (1 - r) · ½(1 + cos(π q)), q = (s - 70) / 30
    "warmup_stable_decay": (
        dict(warmup=W, decay=30, min_lr_ratio=0.1),
        lambda s: (
            (0.1 + 0.9 * s / W)
            if s < W
            else (
                1.0
                if s < 70
                else (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 70) / 30)) if s < 100 else 0.1)
            )
        ),
    ),
    "piecewise_constant": (
        dict(warmup=0, scheduler_args=["step_rules=1:10,0.5:50,0.1"]),
        lambda s: 1.0 if s < 10 else (0.5 if s < 50 else 0.1),
    ),
}


def test_every_issue_scheduler_is_registered():
    names = set(SCHEDULERS.names())
    assert names >= {
        "constant",
        "constant_with_warmup",
        "linear",
        "cosine",
        "cosine_with_restarts",
        "polynomial",
        "adafactor",
        "inverse_sqrt",
        "cosine_with_min_lr",
        "warmup_stable_decay",
        "piecewise_constant",
    }


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_curve_matches_formula(name):
    kwargs, formula = FORMULAS[name]
    optimizer = _optimizer()
    scheduler = build_scheduler(optimizer, name, total_steps=T, **kwargs)
    curve = _curve(scheduler, optimizer, STEPS)
    for s in STEPS:
        assert curve[s] == pytest.approx(formula(s), abs=1e-9), f"{name} at step {s}"


@pytest.mark.parametrize("name", ["cosine", "warmup_stable_decay", "piecewise_constant"])
def test_unet_and_text_encoder_groups_follow_the_same_schedule(name):
    kwargs, formula = FORMULAS[name]
    optimizer = _optimizer(lrs=(1e-4, 5e-5))
    scheduler = build_scheduler(optimizer, name, total_steps=T, **kwargs)
    for s, lr in _curve(scheduler, optimizer, STEPS, group=1).items():
        assert lr == pytest.approx(5e-5 * formula(s), rel=1e-9, abs=1e-15)


def test_constant_with_warmup_steps_becomes_constant_with_warmup():
    optimizer = _optimizer()
    curve = _curve(build_scheduler(optimizer, "constant", warmup=W, total_steps=T), optimizer, [0, 5, 20])
    assert curve == pytest.approx({0: 0.0, 5: 0.5, 20: 1.0})


@pytest.mark.parametrize(
    "value, steps", [(None, 0), (0, 0), (15, 15), (0.25, 25), ("10%", 10), ("12.5%", 12)]
)
def test_warmup_and_decay_as_count_ratio_or_percent(value, steps):
    assert resolve_steps(value, T) == steps
    optimizer = _optimizer()
    scheduler = build_scheduler(optimizer, "warmup_stable_decay", warmup=0, decay=value, total_steps=T)
    if steps:  # the decay starts at T - steps: half-way down (cosine) at T - steps / 2
        mid = T - steps // 2 if steps % 2 == 0 else None
        if mid is not None:
            assert _curve(scheduler, optimizer, [mid])[mid] == pytest.approx(0.5, abs=1e-9)


def test_inverse_sqrt_default_timescale_is_the_warmup():
    optimizer = _optimizer()
    curve = _curve(build_scheduler(optimizer, "inverse_sqrt", warmup=W, total_steps=T), optimizer, [40])
    assert curve[40] == pytest.approx(1 / math.sqrt(40 / W))


def test_cosine_with_min_lr_needs_the_ratio():
    with pytest.raises(ConfigError, match="lr_scheduler_min_lr_ratio"):
        build_scheduler(_optimizer(), "cosine_with_min_lr", warmup=0, total_steps=T)


def test_warmup_stable_decay_too_long_is_an_error():
    with pytest.raises(ConfigError, match=r"lr_warmup_steps \(60\) \+ lr_decay_steps \(50\)"):
        build_scheduler(_optimizer(), "warmup_stable_decay", warmup=60, decay=50, total_steps=T)


def test_piecewise_constant_needs_step_rules_and_accepts_quoted_ones():
    with pytest.raises(ConfigError, match="step_rules=1:100,0.1:200,0.01"):
        build_scheduler(_optimizer(), "piecewise_constant", warmup=0, total_steps=T)
    optimizer = _optimizer()
    scheduler = build_scheduler(
        optimizer, "piecewise_constant", warmup=0, total_steps=T, scheduler_args=["step_rules='1:5,0.25'"]
    )
    assert _curve(scheduler, optimizer, [4, 5]) == pytest.approx({4: 1.0, 5: 0.25})


def test_scheduler_args_reach_the_schedule():
    optimizer = _optimizer()
    scheduler = build_scheduler(
        optimizer,
        "warmup_stable_decay",
        warmup=0,
        decay=40,
        total_steps=T,
        scheduler_args=["decay_type='linear'"],
    )
    assert _curve(scheduler, optimizer, [80])[80] == pytest.approx(0.5)  # linear: half-way through the decay
    with pytest.raises(ConfigError, match="rejected lr_scheduler_args.*bogus"):
        build_scheduler(_optimizer(), "cosine", warmup=0, total_steps=T, scheduler_args=["bogus=1"])


@pytest.mark.parametrize("name", ["torch.optim.lr_scheduler.StepLR", "StepLR"])  # bare: torch's (sd-scripts)
def test_lr_scheduler_type_builds_any_class_from_its_args(name):
    optimizer = _optimizer()
    scheduler = build_scheduler(
        optimizer,
        "constant",
        warmup=0,
        total_steps=T,
        scheduler_type=name,
        scheduler_args=["step_size=10", "gamma=0.5"],
    )
    assert type(scheduler) is torch.optim.lr_scheduler.StepLR
    curve = _curve(scheduler, optimizer, [0, 9, 10, 25])
    assert curve == pytest.approx({0: 1.0, 9: 1.0, 10: 0.5, 25: 0.25})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(scheduler_type="torch.optim.lr_scheduler.StepLR", warmup=5, scheduler_args=["step_size=3"]),
            "set 'lr_warmup_steps' to 0",
        ),
        (dict(scheduler_type="no_such_pkg.Sched", warmup=0), "pip install no_such_pkg"),
        (dict(scheduler_type="torch.optim.lr_scheduler.Nope", warmup=0), "has no class 'Nope'"),
        (dict(scheduler_type="Nope", warmup=0), "module 'torch.optim.lr_scheduler' has no class 'Nope'"),
        (dict(scheduler_type="torch.optim.lr_scheduler.StepLR", warmup=0), "rejected lr_scheduler_args"),
    ],
)
def test_lr_scheduler_type_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        build_scheduler(_optimizer(), "constant", total_steps=T, **kwargs)


def test_unknown_scheduler_lists_the_valid_ones():
    with pytest.raises(
        ConfigError, match="unknown lr_scheduler 'cosin'.*Did you mean 'cosine'.*warmup_stable_decay"
    ):
        build_scheduler(_optimizer(), "cosin", warmup=0, total_steps=T)


def _param_groups():
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 16)
    return [{"params": list(layer.parameters()), "lr": 1e-3}], layer


def test_schedule_free_optimizers_get_a_constant_dummy(caplog):
    groups, _ = _param_groups()
    optimizer = build_optimizer(groups, "AdamWScheduleFree", 1e-3, [])
    with caplog.at_level(logging.WARNING, logger="library.training.schedulers"):
        scheduler = build_scheduler(optimizer, "cosine", warmup=W, total_steps=T)
    assert "schedule-free" in caplog.text
    assert set(_curve(scheduler, optimizer, [0, 5, 50]).values()) == {1e-3}


def test_adafactor_relative_step_uses_the_adafactor_schedule(caplog):
    groups, layer = _param_groups()
    optimizer = build_optimizer(groups, "AdaFactor", 1e-3, [])
    with caplog.at_level(logging.WARNING, logger="library.training.schedulers"):
        scheduler = build_scheduler(optimizer, "cosine", warmup=0, total_steps=T)
    assert type(scheduler).__name__ == "AdafactorSchedule" and "replaced by 'adafactor'" in caplog.text
    assert scheduler.get_last_lr() == [1e-3]  # learning_rate until Adafactor has state
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        rms = layer.weight.detach().pow(2).mean().sqrt().item()
        layer(x).pow(2).mean().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    # Adafactor's relative step (Shazeer & Stern 2018, transformers): min(1e-2, 1/sqrt(t)) · max(1e-3, RMS(W))
    assert scheduler.get_last_lr()[0] == pytest.approx(min(1e-2, 1 / math.sqrt(3)) * max(1e-3, rms), rel=1e-6)


def test_adafactor_schedule_needs_adafactor():
    with pytest.raises(ConfigError, match='only works with optimizer_type = "AdaFactor"'):
        build_scheduler(_optimizer(), "adafactor", warmup=0, total_steps=T)


def test_adafactor_without_relative_step_warns_about_the_schedule(caplog):
    groups, _ = _param_groups()
    optimizer = build_optimizer(groups, "AdaFactor", 1e-3, ["relative_step=False", "scale_parameter=False"])
    with caplog.at_level(logging.WARNING, logger="library.training.schedulers"):
        scheduler = build_scheduler(optimizer, "cosine", warmup=0, total_steps=T)
    assert "constant_with_warmup' is recommended" in caplog.text
    assert scheduler.get_last_lr() == [1e-3]


def test_scheduler_options_reads_the_config(tmp_path):
    from library.config.load import config_from_values

    config = config_from_values(
        {
            "pretrained_model_name_or_path": "builtin:tiny",
            "output_dir": str(tmp_path),
            "train_data_dir": str(tmp_path),
            "lr_decay_steps": "20%",
            "lr_scheduler_min_lr_ratio": 0.1,
            "lr_scheduler_timescale": 30,
            "lr_scheduler_args": ["a=1"],
            "lr_scheduler_type": "torch.optim.lr_scheduler.StepLR",
        },
        "network",
    )
    assert scheduler_options(config) == dict(
        decay="20%",
        min_lr_ratio=0.1,
        timescale=30,
        scheduler_args=["a=1"],
        scheduler_type="torch.optim.lr_scheduler.StepLR",
    )
