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
