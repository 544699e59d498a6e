"""The low-rank math of extract / resize / SVD merge, against direct computations."""

from __future__ import annotations

import math

import pytest
import torch

from library.tools.models import lowrank


def low_rank_product(out_f: int, in_f: int, true_rank: int, stored_rank: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(out_f, true_rank, generator=gen, dtype=torch.float64)
    b = torch.randn(true_rank, in_f, generator=gen, dtype=torch.float64)
    mix = torch.randn(true_rank, stored_rank, generator=gen, dtype=torch.float64)
    up = (a @ mix).float()  # (out, stored_rank), rank true_rank
    down = (torch.linalg.pinv(mix) @ b).float()  # (stored_rank, in)
    return up, down


def test_svd_of_product_equals_svd_of_the_full_matrix():
    up, down = low_rank_product(40, 24, 6, 16)
    u, s, vh = lowrank.svd_of_product(up, down)
    full_s = torch.linalg.svdvals((up @ down).double())
    assert s.shape == (16,)
    torch.testing.assert_close(s.double(), full_s[:16], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(u @ torch.diag(s) @ vh, up @ down, atol=1e-4, rtol=1e-4)
    assert float(s[6]) < 1e-4 * float(s[0])  # rank 6 exactly


def test_truncation_error_is_the_discarded_singular_values():
    gen = torch.Generator().manual_seed(1)
    m = torch.randn(30, 20, generator=gen)
    u, s, vh = lowrank.svd(m)
    up, down = lowrank.split_factors(u, s, vh, 5)
    err = float(torch.linalg.matrix_norm(m - up @ down))
    assert err == pytest.approx(math.sqrt(float((s[5:] ** 2).sum())), rel=1e-4)
    assert lowrank.discarded_error(s, 5) == pytest.approx(err, rel=1e-4)
    kept = lowrank.fro_retained(s, 5)
    assert kept == pytest.approx(math.sqrt(1 - err**2 / float(torch.linalg.matrix_norm(m)) ** 2), rel=1e-4)
    # symmetric split: both factors carry sqrt(S)
    torch.testing.assert_close(up.norm(dim=0), down.norm(dim=1))


@pytest.mark.parametrize(
    "method,param,expected",
    [
        (None, None, 3),
        ("sv_ratio", 4.0, 3),  # keep S >= 10/4 = 2.5: 10, 5, 3 (capped by max_rank 3 anyway)
        ("sv_ratio", 2.0, 2),  # S >= 5: 10, 5
        ("sv_cumulative", 0.75, 2),  # cumulative 10/20=.5, 15/20=.75 -> 2
        ("sv_cumulative", 0.76, 3),
        ("sv_fro", 0.9, 2),  # sqrt(100/136) = 0.857 < 0.9 <= sqrt(125/136) = 0.959
        ("sv_fro", 0.85, 1),
    ],
)
def test_choose_rank_methods(method, param, expected):
    s = torch.tensor([10.0, 5.0, 3.0, 1.0, 1.0])  # Σ=20, Σ²=136
    assert lowrank.choose_rank(s, 3, method, param) == expected


def test_choose_rank_limits():
    s = torch.tensor([4.0, 2.0, 1.0])
    assert lowrank.choose_rank(s, 10) == 3
    assert lowrank.choose_rank(s, 10, "sv_fro", 1.0) == 3
    assert lowrank.choose_rank(torch.zeros(3), 2, "sv_ratio", 2.0) == 1
    with pytest.raises(ValueError):
        lowrank.choose_rank(s, 2, "bogus", 1.0)


def test_clamp_factors_clips_outliers_only_below_one():
    up = torch.tensor([[1.0, -100.0], [0.5, 0.2]])
    down = torch.tensor([[0.1, 0.3], [0.2, 0.4]])
    same_up, same_down = lowrank.clamp_factors(up, down, 1.0)
    assert same_up is up and same_down is down
    c_up, c_down = lowrank.clamp_factors(up, down, 0.5)
    limit = float(torch.quantile(torch.cat([up.flatten(), down.flatten()]).abs(), 0.5))
    assert float(c_up.abs().max()) == pytest.approx(limit)
    assert float(c_up[0, 1]) == pytest.approx(-limit)


def test_conv_shapes_round_trip():
    weight = torch.randn(8, 4, 3, 3)
    u, s, vh = lowrank.svd(lowrank.as_matrix(weight))
    up, down = lowrank.split_factors(u, s, vh, 36)
    up4, down4 = lowrank.to_lora_shapes(up, down, (3, 3))
    assert up4.shape == (8, 8, 1, 1)  # rank capped at min(8, 36)
    assert down4.shape == (8, 4, 3, 3)
    rebuilt = (up4.flatten(1) @ down4.flatten(1)).reshape(weight.shape)
    torch.testing.assert_close(rebuilt, weight, atol=1e-4, rtol=1e-4)
