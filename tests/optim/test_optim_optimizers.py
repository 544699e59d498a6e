"""Optimizers by name: every registered one steps, sd-scripts' defaults, errors, train/eval and effective lrs."""

from __future__ import annotations

import logging
import math
import sys

import pytest
import torch

from library.errors import ConfigError
from library.training.optimizers import (
    OPTIMIZERS,
    build_optimizer,
    check_optimizer_name,
    effective_lrs,
    is_schedule_free,
    optimizer_eval_mode,
    optimizer_train_mode,
    parse_key_value_args,
    resolve_optimizer_name,
)

#: every name of the issue (plus sd-scripts' extra paged/8-bit ones) must be registered.
ISSUE_NAMES = [
    "AdamW",
    "AdamW8bit",
    "PagedAdamW8bit",
    "Lion",
    "Lion8bit",
    "SGDNesterov",
    "SGDNesterov8bit",
    "DAdaptation",
    "DAdaptAdam",
    "DAdaptAdaGrad",
    "DAdaptAdan",
    "DAdaptLion",
    "DAdaptSGD",
    "Prodigy",
    "AdaFactor",
    "RAdamScheduleFree",
    "AdamWScheduleFree",
    "SGDScheduleFree",
    "PagedAdamW",
    "PagedAdamW32bit",
    "PagedLion8bit",
    "DAdaptAdanIP",
    "DAdaptAdamPreprint",
]


def _groups(lr_b: float = 2e-2) -> tuple[list[dict], torch.nn.Linear, torch.nn.Linear]:
    torch.manual_seed(0)
    a, b = (
        torch.nn.Linear(8, 300),
        torch.nn.Linear(300, 4),
    )  # > 4096 elements: bitsandbytes really uses 8 bits
    return (
        [
            {"name": "a", "params": list(a.parameters()), "lr": 1e-2},
            {"name": "b", "params": list(b.parameters()), "lr": lr_b},
        ],
        a,
        b,
    )


def _steps(optimizer, a, b, n: int = 3) -> list[float]:
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(n):
        loss = (b(torch.relu(a(x))) - 1.0).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_every_issue_name_is_registered_case_insensitively():
    for name in ISSUE_NAMES:
        assert OPTIMIZERS.find(name) is not None, name
        assert OPTIMIZERS.find(name.lower()).name == name
        assert check_optimizer_name(name.upper()) is None


@pytest.mark.parametrize("name", ISSUE_NAMES)
def test_each_optimizer_takes_three_steps(name):
    groups, a, b = _groups(lr_b=1e-2)
    before = [p.detach().clone() for p in [*a.parameters(), *b.parameters()]]
    optimizer = build_optimizer(groups, name, 1e-2, [])
    losses = _steps(optimizer, a, b, n=6)  # RAdam's rectification makes no update in its first steps
    optimizer_eval_mode(optimizer)
    after = [p.detach() for p in [*a.parameters(), *b.parameters()]]
    assert all(math.isfinite(x) for x in losses)
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(x, y) for x, y in zip(before, after, strict=True)), (
        f"{name} did not change the weights"
    )
    adapts = name.startswith(("DAdapt", "Prodigy", "AdaFactor"))
    assert (effective_lrs(optimizer) is not None) == adapts


def test_sgd_nesterov_defaults_to_momentum_09_and_args_override():
    groups, *_ = _groups()
    opt = build_optimizer(groups, "sgdnesterov", 1e-2, [])
    assert type(opt) is torch.optim.SGD
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["nesterov"] is True
    opt = build_optimizer(_groups()[0], "SGDNesterov", 1e-2, ["momentum=0.5", "weight_decay=0.01"])
    assert opt.defaults["momentum"] == 0.5 and opt.defaults["weight_decay"] == 0.01


def test_sgd_nesterov_8bit_is_bitsandbytes_with_momentum_09():
    opt = build_optimizer(_groups()[0], "SGDNesterov8bit", 1e-2, [])
    assert type(opt).__name__ == "SGD8bit"
    assert opt.defaults["betas"][0] == 0.9  # bitsandbytes keeps the momentum as beta1


@pytest.mark.parametrize(
    "name, cls, module",
    [
        ("Lion", "Lion", "lion_pytorch"),
        ("Lion8bit", "Lion8bit", "bitsandbytes"),
        ("DAdaptation", "DAdaptAdamPreprint", "dadaptation"),
        ("DAdaptAdam", "DAdaptAdam", "dadaptation"),
        ("Prodigy", "Prodigy", "prodigyopt"),
        ("AdaFactor", "Adafactor", "transformers"),
        ("AdamWScheduleFree", "AdamWScheduleFree", "schedulefree"),
        ("PagedAdamW8bit", "PagedAdamW8bit", "bitsandbytes"),
    ],
)
def test_each_name_comes_from_its_own_package(name, cls, module):
    opt = build_optimizer(_groups(lr_b=1e-2)[0], name, 1.0, [])
    assert type(opt).__name__ == cls
    assert type(opt).__module__.split(".")[0] == module


def test_optimizer_args_reach_the_optimizer():
    opt = build_optimizer(_groups()[0], "AdamW", 1e-3, ["weight_decay=0.05", "betas=0.8,0.95", "eps=1e-6"])
    assert opt.defaults["weight_decay"] == 0.05 and opt.defaults["betas"] == (0.8, 0.95)
    assert opt.defaults["eps"] == 1e-6
    assert [g["lr"] for g in opt.param_groups] == [1e-2, 2e-2]  # group lrs kept


def test_parse_key_value_args_literals_and_tuples():
    assert parse_key_value_args(["a=1", "b=0.9,0.99", "c=True", "d=(1, 2)", "e=hello", "f='x,y'"], "x") == {
        "a": 1,
        "b": (0.9, 0.99),
        "c": True,
        "d": (1, 2),
        "e": "hello",
        "f": "x,y",
    }


def test_malformed_optimizer_arg_names_the_entry():
    with pytest.raises(ConfigError, match="'weight_decay'.*key=value"):
        build_optimizer(_groups()[0], "AdamW", 1e-3, ["weight_decay"])


def test_rejected_optimizer_arg_is_a_config_error():
    with pytest.raises(ConfigError, match="AdamW.*rejected optimizer_args.*no_such_arg"):
        build_optimizer(_groups()[0], "AdamW", 1e-3, ["no_such_arg=1"])


def test_unknown_name_lists_the_valid_ones():
    problem = check_optimizer_name("AdamWW")
    assert "Did you mean 'AdamW'" in problem and "Prodigy" in problem and "SGDScheduleFree" in problem
    with pytest.raises(ConfigError, match="unknown optimizer 'Adamm'.*Valid names:.*DAdaptLion"):
        build_optimizer(_groups()[0], "Adamm", 1e-3, [])


def test_plain_torch_optim_names_and_dotted_names():
    assert check_optimizer_name("Adagrad") is None
    assert type(build_optimizer(_groups()[0], "Adagrad", 1e-3, [])) is torch.optim.Adagrad
    opt = build_optimizer(_groups()[0], "torch.optim.RMSprop", 1e-3, ["alpha=0.9"])
    assert type(opt) is torch.optim.RMSprop and opt.defaults["alpha"] == 0.9
    with pytest.raises(ConfigError, match="has no class 'Nope'"):
        build_optimizer(_groups()[0], "torch.optim.Nope", 1e-3, [])


def test_missing_package_says_what_to_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lion_pytorch", None)  # makes the import fail
    with pytest.raises(ConfigError, match="pip install lion-pytorch"):
        build_optimizer(_groups()[0], "Lion", 1e-4, [])
    with pytest.raises(ConfigError, match="pip install pytorch_optimizer"):
        build_optimizer(_groups()[0], "pytorch_optimizer.CAME", 1e-4, [])


def test_legacy_flags_and_empty_name():
    assert resolve_optimizer_name("", False) == "AdamW"
    assert resolve_optimizer_name("adamw8BIT", False) == "AdamW8bit"
    assert resolve_optimizer_name("AdamW", True) == "AdamW8bit"
    assert resolve_optimizer_name("AdamW", False, use_lion_optimizer=True) == "Lion"
    assert resolve_optimizer_name("pytorch_optimizer.CAME", False) == "pytorch_optimizer.CAME"
    with pytest.raises(ConfigError, match="use_lion_optimizer"):
        resolve_optimizer_name("AdamW", True, use_lion_optimizer=True)


def test_adafactor_relative_step_drops_group_lrs():
    opt = build_optimizer(_groups()[0], "AdaFactor", 1e-3, [])
    assert opt.defaults["relative_step"] is True
    assert [g["lr"] for g in opt.param_groups] == [None, None]
    assert opt.initial_lr_for_schedule == 1e-3
    opt = build_optimizer(_groups()[0], "AdaFactor", 1e-3, ["relative_step=False", "scale_parameter=False"])
    assert [g["lr"] for g in opt.param_groups] == [1e-2, 2e-2]


def test_adafactor_effective_lr_is_its_relative_step():
    groups, a, b = _groups()
    opt = build_optimizer(groups, "AdaFactor", 1e-3, [])
    _steps(opt, a, b, n=4)
    # transformers' Adafactor: lr = min(1e-2, 1/sqrt(step)) * max(eps2 = 1e-3, RMS(p)) (scale_parameter)
    w = a.weight.detach()
    rms = w.pow(2).mean().sqrt().item()
    expected_a = min(1e-2, 1 / math.sqrt(4)) * max(1e-3, rms)
    # the rms is taken before the 4th update; the update is tiny so 1% agreement is plenty
    assert effective_lrs(opt)[0] == pytest.approx(expected_a, rel=1e-2)


@pytest.mark.parametrize("name", ["Prodigy", "DAdaptAdam", "DAdaptLion"])
def test_effective_lr_of_adaptive_optimizers_is_d_times_lr(name):
    groups, a, b = _groups(lr_b=1e-2)
    opt = build_optimizer(groups, name, 1.0, [])
    _steps(opt, a, b)
    d = [g["d"] for g in opt.param_groups]
    assert effective_lrs(opt) == pytest.approx([d[0] * 1e-2, d[1] * 1e-2])
    assert d[0] > 0


def test_adaptive_optimizers_warn_about_small_lr(caplog):
    with caplog.at_level(logging.WARNING, logger="library.training.optimizers"):
        build_optimizer(_groups()[0], "DAdaptAdaGrad", 1e-4, [])
    assert "learning_rate = 1.0 is recommended" in caplog.text
    assert "different learning rates per group" in caplog.text


@pytest.mark.parametrize("name", ["Prodigy", "DAdaptation", "DAdaptAdam", "DAdaptLion", "DAdaptSGD"])
def test_same_lr_optimizers_refuse_different_group_lrs_before_training(name):
    with pytest.raises(
        ConfigError, match="one learning rate for all parameters.*unet_lr and text_encoder_lr"
    ):
        build_optimizer(_groups(lr_b=0.5)[0], name, 1.0, [])


def test_schedule_free_starts_in_train_mode_and_switches():
    groups, a, b = _groups()
    opt = build_optimizer(groups, "AdamWScheduleFree", 1e-2, [])
    assert is_schedule_free(opt) and all(g["train_mode"] for g in opt.param_groups)
    _steps(opt, a, b)
    train_weights = a.weight.detach().clone()
    optimizer_eval_mode(opt)
    assert not any(g["train_mode"] for g in opt.param_groups)
    assert not torch.equal(train_weights, a.weight)  # eval weights = the average x
    optimizer_train_mode(opt)
    torch.testing.assert_close(a.weight.detach(), train_weights)


@pytest.fixture
def accelerator_state():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield Accelerator(cpu=True)
    AcceleratorState._reset_state(True)


def test_effective_lrs_is_none_when_the_lr_is_not_adapted():
    assert effective_lrs(build_optimizer(_groups()[0], "AdamW", 1e-3, [])) is None


def test_train_eval_mode_are_noops_for_others_and_see_through_accelerate(accelerator_state):
    from accelerate.optimizer import AcceleratedOptimizer

    groups, a, _ = _groups()
    adam = build_optimizer(groups, "AdamW", 1e-2, [])
    assert not is_schedule_free(adam) and not is_schedule_free(
        AcceleratedOptimizer(adam, device_placement=False)
    )
    optimizer_eval_mode(adam)
    optimizer_train_mode(adam)
    sf = build_optimizer(_groups()[0], "SGDScheduleFree", 1e-2, [])
    wrapped = AcceleratedOptimizer(sf, device_placement=False)
    optimizer_eval_mode(wrapped)
    assert not sf.param_groups[0]["train_mode"]
    optimizer_train_mode(wrapped)
    assert sf.param_groups[0]["train_mode"]
