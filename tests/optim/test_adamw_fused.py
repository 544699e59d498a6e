"""AdamW runs torch's fused kernel by default (one kernel per weight), unless optimizer_args choose."""

from __future__ import annotations

import torch

from library.training.optimizers import build_optimizer


def params(n=3):
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(8, 4)) for _ in range(n)]


def test_adamw_is_fused_on_cpu_and_still_adamw():
    fused = params()
    plain = [torch.nn.Parameter(p.detach().clone()) for p in fused]
    start = [p.detach().clone() for p in fused]
    a = build_optimizer([{"params": fused, "lr": 1e-2}], "AdamW", 1e-2, [])
    b = torch.optim.AdamW([{"params": plain, "lr": 1e-2}], lr=1e-2, foreach=False)
    assert a.defaults["fused"] is True and b.defaults["fused"] is None
    for _ in range(4):
        for x, y in zip(fused, plain, strict=True):
            x.grad = torch.full_like(x, 0.5)
            y.grad = torch.full_like(y, 0.5)
        a.step()
        b.step()
    for x, y, x0 in zip(fused, plain, start, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)  # the same update, up to rounding
        assert (x - x0).abs().min() > 1e-3  # and it moved


def test_optimizer_args_choose_the_implementation():
    assert not build_optimizer([{"params": params()}], "AdamW", 1e-3, ["foreach=True"]).defaults["fused"]
    assert build_optimizer([{"params": params()}], "AdamW", 1e-3, ["fused=False"]).defaults["fused"] is False


def test_a_generator_of_weights_is_kept():
    optimizer = build_optimizer([{"params": (p for p in params(2))}], "AdamW", 1e-3, [])
    assert len(optimizer.param_groups[0]["params"]) == 2
