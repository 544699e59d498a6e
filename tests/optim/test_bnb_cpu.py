"""bitsandbytes' 8-bit optimizers on the CPU, stepped slice by slice: the same weights and states bit for bit as
bitsandbytes' own whole-weight update, and without its weight-sized temporaries."""

from __future__ import annotations

import pytest
import torch

bnb = pytest.importorskip("bitsandbytes")

from library.training import bnb_cpu  # noqa: E402
from library.training.optimizers import build_optimizer  # noqa: E402

SHAPES = [(5000,), (300, 1001), (64, 3, 3, 3), (17,), (2048, 513)]  # whole blocks and ragged ends


def _params(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*shape, generator=g)) for shape in SHAPES]


def _run(name: str, params, monkeypatch, sliced: bool, steps: int = 3):
    import bitsandbytes.functional as functional

    bnb_cpu.install()
    current = functional.optimizer_update_8bit_blockwise
    monkeypatch.setattr(functional, "optimizer_update_8bit_blockwise",
                        current if sliced else current.sliced_original)
    optimizer = build_optimizer([{"params": params}], name, 1e-2, ["weight_decay=0.01"])
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        optimizer.step()
    return optimizer


@pytest.mark.parametrize("name", ["AdamW8bit", "Lion8bit"])
def test_slices_give_the_same_weights_and_states_bit_for_bit(name, monkeypatch):
    monkeypatch.setattr(bnb_cpu, "CHUNK", 8 * bnb_cpu.BLOCK)  # many slices, ragged last ones
    whole, sliced = _params(), _params()
    a = _run(name, whole, monkeypatch, sliced=False)
    b = _run(name, sliced, monkeypatch, sliced=True)
    for p, q in zip(whole, sliced, strict=True):
        assert torch.equal(p, q)
        for key, value in a.state[p].items():
            other = b.state[q][key]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, key
        assert a.state[p]["state1"].dtype == torch.uint8 or p.numel() < 4096  # 8-bit states were used
    assert any(not torch.equal(p, q) for p, q in zip(whole, _params(), strict=True))  # and the weights moved


def test_the_update_is_called_once_per_slice_of_big_cpu_weights_only(monkeypatch):
    calls = []

    def fake(name, g, p, state1, state2, *rest, **kwargs):
        calls.append((p.numel(), rest[9].numel()))  # values and absmax1 entries of the slice

    monkeypatch.setattr(bnb_cpu, "CHUNK", 4 * bnb_cpu.BLOCK)
    update = bnb_cpu.chunked(fake)
    n = 10 * bnb_cpu.BLOCK + 7
    p, g, s1, s2 = torch.zeros(n), torch.zeros(n), torch.zeros(n, dtype=torch.uint8), torch.zeros(n, dtype=torch.uint8)
    absmax = torch.zeros(-(-n // bnb_cpu.BLOCK))
    q = torch.zeros(256)
    update("adam", g, p, s1, s2, 0.9, 0.99, 0.0, 0.0, 1e-8, 1, 1e-3, q, q, absmax, absmax.clone())
    assert calls == [(1024, 4), (1024, 4), (519, 3)]
    calls.clear()
    small = torch.zeros(100)
    update("adam", small, small, small.byte(), None, 0.9, 0.99, 0.0, 0.0, 1e-8, 1, 1e-3, q, None, torch.zeros(1), None)
    assert calls == [(100, 1)]  # passed through whole


def test_building_a_bitsandbytes_optimizer_on_cpu_installs_the_slices():
    import bitsandbytes.functional as functional

    build_optimizer([{"params": _params()}], "AdamW8bit", 1e-3, [])
    assert hasattr(functional.optimizer_update_8bit_blockwise, "sliced_original")


def test_each_gradient_is_freed_once_applied_and_the_step_is_unchanged():
    params = _params()
    optimizer = build_optimizer([{"params": params}], "AdamW8bit", 1e-2, [])
    reference_params = _params()
    reference = bnb.optim.AdamW8bit([{"params": reference_params}], lr=1e-2)
    seen = []
    update = optimizer.update_step

    def spy(group, p, gindex, pindex):  # the grads of the weights not yet stepped are still there
        seen.append(sum(q.grad is not None for q in params))
        update(group, p, gindex, pindex)

    optimizer.update_step = spy
    g = torch.Generator().manual_seed(3)
    for p, q in zip(params, reference_params, strict=True):
        p.grad = torch.randn(p.shape, generator=g)
        q.grad = p.grad.clone()
    optimizer.step()
    reference.step()
    assert seen == [5, 4, 3, 2, 1] and all(p.grad is None for p in params)
    assert all(torch.equal(p, q) for p, q in zip(params, reference_params, strict=True))
    assert all(q.grad is not None for q in reference_params)  # bitsandbytes' own keeps them
