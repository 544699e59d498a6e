"""Our learning-rate curves give transformers' numbers (the curves sd-scripts uses), step for step, with the same
arguments; and a trainer's start no longer imports ``transformers.optimization``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from library.training import lr_curves

optimization = pytest.importorskip("transformers.optimization")

REPO = Path(__file__).resolve().parents[2]
T = 57  # an odd length, so no curve lands on round numbers only

CASES = [
    ("get_constant_schedule", {}),
    ("get_constant_schedule_with_warmup", dict(num_warmup_steps=7)),
    ("get_linear_schedule_with_warmup", dict(num_warmup_steps=7, num_training_steps=T)),
    ("get_linear_schedule_with_warmup", dict(num_warmup_steps=0, num_training_steps=T)),
    ("get_cosine_schedule_with_warmup", dict(num_warmup_steps=7, num_training_steps=T)),
    ("get_cosine_schedule_with_warmup", dict(num_warmup_steps=3, num_training_steps=T, num_cycles=1.5)),
    ("get_cosine_with_hard_restarts_schedule_with_warmup", dict(num_warmup_steps=7, num_training_steps=T,
                                                                num_cycles=3)),
    ("get_polynomial_decay_schedule_with_warmup", dict(num_warmup_steps=7, num_training_steps=T, power=2.0)),
    ("get_polynomial_decay_schedule_with_warmup", dict(num_warmup_steps=7, num_training_steps=T - 10,
                                                       lr_end=1e-3, power=0.5)),
    ("get_inverse_sqrt_schedule", dict(num_warmup_steps=7)),
    ("get_inverse_sqrt_schedule", dict(num_warmup_steps=0)),
    ("get_inverse_sqrt_schedule", dict(num_warmup_steps=7, timescale=25)),
    ("get_cosine_with_min_lr_schedule_with_warmup", dict(num_warmup_steps=7, num_training_steps=T,
                                                         num_cycles=0.5, min_lr_rate=0.2)),
    ("get_cosine_with_min_lr_schedule_with_warmup", dict(num_warmup_steps=7, num_training_steps=T, min_lr=0.01)),
    ("get_wsd_schedule", dict(num_warmup_steps=7, num_decay_steps=20, num_training_steps=T, min_lr_ratio=0.1)),
    *[("get_wsd_schedule", dict(num_warmup_steps=7, num_decay_steps=20, num_stable_steps=25, warmup_type=w,
                                decay_type=d, min_lr_ratio=0.05, num_cycles=0.75))
      for w in lr_curves.WSD_SHAPES for d in lr_curves.WSD_SHAPES],
]


def _lrs(make, kwargs) -> list[list[float]]:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in (0.1, 0.025)]
    optimizer = torch.optim.SGD(groups, lr=0.1)
    scheduler = make(optimizer, **kwargs)
    out = []
    for _ in range(T + 5):  # a few steps past the end too
        out.append(scheduler.get_last_lr())
        optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_each_curve_is_transformers_number_for_number(name, kwargs):
    ours, theirs = _lrs(getattr(lr_curves, name), kwargs), _lrs(getattr(optimization, name), kwargs)
    assert ours == theirs  # exact: the same floats, so a run's lr log is the same as sd-scripts'
    assert len({tuple(v) for v in ours}) > 1 or name == "get_constant_schedule"


@pytest.mark.parametrize(("name", "kwargs"), [
    ("get_polynomial_decay_schedule_with_warmup", dict(num_warmup_steps=1, num_training_steps=T, lr_end=0.5)),
    ("get_cosine_with_min_lr_schedule_with_warmup", dict(num_warmup_steps=1, num_training_steps=T)),
    ("get_cosine_with_min_lr_schedule_with_warmup", dict(num_warmup_steps=1, num_training_steps=T, min_lr=0.1,
                                                         min_lr_rate=0.1)),
    ("get_wsd_schedule", dict(num_warmup_steps=1, num_decay_steps=5)),
    ("get_wsd_schedule", dict(num_warmup_steps=1, num_decay_steps=5, num_training_steps=T, decay_type="exp")),
])
def test_the_same_arguments_are_refused(name, kwargs):
    for module in (lr_curves, optimization):
        with pytest.raises(ValueError):
            _lrs(getattr(module, name), kwargs)


def test_state_dicts_match_so_resume_files_do_too():
    def state(module):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        scheduler = module.get_cosine_schedule_with_warmup(optimizer, 3, 20)
        for _ in range(5):
            optimizer.step()
            scheduler.step()
        return scheduler.state_dict()

    assert state(lr_curves) == state(optimization)


@pytest.mark.slow  # a fresh interpreter
def test_building_a_schedule_does_not_import_transformers_optimization():
    probe = ("import json, sys, torch\n"
             "from library.training.schedulers import build_scheduler\n"
             "opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)\n"
             "for name in ('constant', 'linear', 'cosine', 'cosine_with_restarts', 'polynomial', 'inverse_sqrt'):\n"
             "    build_scheduler(opt, name, warmup=2, total_steps=10)\n"
             "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('transformers', 'peft', "
             "'bitsandbytes')))))\n")
    run = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == []
