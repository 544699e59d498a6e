"""Noise, loss weighting, optimizers and schedules checked against their formulas."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDPMScheduler

from library.errors import ConfigError
from library.training.loss import min_snr_weight, per_sample_mse, snr
from library.training.noise import NoiseSettings, sample_noise
from library.training.optimizers import build_optimizer, parse_key_value_args
from library.training.schedulers import build_scheduler, resolve_steps


def _sd_scheduler(prediction_type="epsilon"):
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", prediction_type=prediction_type)


def test_noise_offset_adds_a_per_channel_constant():
    latents = torch.zeros(2, 4, 8, 8)
    plain = sample_noise(latents, torch.Generator().manual_seed(1), NoiseSettings())
    offset = sample_noise(latents, torch.Generator().manual_seed(1), NoiseSettings(offset=0.1))
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(latents.shape, generator=gen)
    extra = torch.randn((2, 4, 1, 1), generator=gen)
    assert torch.equal(plain, base)
    assert torch.allclose(offset, base + 0.1 * extra)
    # the difference is constant over each channel's pixels
    diff = offset - plain
    assert torch.allclose(diff, diff[:, :, :1, :1].expand_as(diff), atol=1e-6)


def test_snr_and_min_snr_weights_follow_the_paper():
    sched = _sd_scheduler()
    t = torch.tensor([0, 10, 500, 999])
    values = snr(sched.alphas_cumprod, t)
    ab = sched.alphas_cumprod[t]
    assert torch.allclose(values, ab / (1 - ab))
    gamma = 5.0
    eps_w = min_snr_weight(values, gamma, v_prediction=False)
    v_w = min_snr_weight(values, gamma, v_prediction=True)
    for s, we, wv in zip(values.tolist(), eps_w.tolist(), v_w.tolist(), strict=False):
        assert we == pytest.approx(min(s, gamma) / s, rel=1e-5)
        assert wv == pytest.approx(min(s, gamma) / (s + 1), rel=1e-5)
    # high-SNR (small t) samples are down-weighted, low-SNR ones keep weight 1 (eps)
    assert eps_w[0] < 0.01 and eps_w[-1] == pytest.approx(1.0)


def test_per_sample_mse():
    a = torch.zeros(2, 1, 2, 2)
    b = torch.stack([torch.ones(1, 2, 2), 2 * torch.ones(1, 2, 2)])
    assert per_sample_mse(a, b).tolist() == [1.0, 4.0]


def test_v_prediction_target_is_velocity():
    sched = _sd_scheduler("v_prediction")
    latents, noise = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    t = torch.tensor([300])
    ab = sched.alphas_cumprod[300]
    expected = ab.sqrt() * noise - (1 - ab).sqrt() * latents
    assert torch.allclose(sched.get_velocity(latents, noise, t), expected, atol=1e-6)


def test_optimizer_args_parsing_and_errors():
    assert parse_key_value_args(["weight_decay=0.01", "betas=0.9,0.99", "decouple=True", "mode=fast"], "x") == {
        "weight_decay": 0.01, "betas": (0.9, 0.99), "decouple": True, "mode": "fast"}
    with pytest.raises(ConfigError, match="'weight_decay'"):
        parse_key_value_args(["weight_decay"], "optimizer_args")


def test_adamw_and_adamw8bit_are_built_with_args():
    params = [torch.nn.Parameter(torch.randn(128, 64))]
    opt = build_optimizer([{"params": params}], "AdamW", 1e-3, ["weight_decay=0.05", "betas=0.8,0.9"])
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["weight_decay"] == 0.05 and opt.param_groups[0]["betas"] == (0.8, 0.9)
    opt8 = build_optimizer([{"params": params}], "AdamW8bit", 1e-3, [])
    params[0].grad = torch.randn(128, 64)
    opt8.step()
    assert opt8.state[params[0]]["state1"].dtype == torch.uint8  # 8-bit optimizer state
    with pytest.raises(ConfigError, match="rejected optimizer_args"):
        build_optimizer([{"params": params}], "AdamW", 1e-3, ["nonsense=1"])
    with pytest.raises(ConfigError, match="pip install"):
        build_optimizer([{"params": params}], "no_such_pkg.Opt", 1e-3, [])


@pytest.mark.parametrize("value,expected", [(None, 0), (10, 10), (0.1, 10), ("25%", 25), (0, 0)])
def test_warmup_as_count_ratio_or_percent(value, expected):
    assert resolve_steps(value, 100) == expected


def _lrs(name, total=100, warmup=0, cycles=1, power=1.0):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, name, warmup=warmup, total_steps=total, num_cycles=cycles, power=power)
    out = []
    for _ in range(total):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


def test_schedule_curves_match_formulas():
    assert _lrs("constant") == [1.0] * 100
    warm = _lrs("constant_with_warmup", warmup=10)
    assert warm[0] == 0.0 and warm[5] == pytest.approx(0.5) and warm[10:] == [1.0] * 90
    assert _lrs("constant", warmup=10)[5] == pytest.approx(0.5)  # warm-up honoured for plain constant
    lin = _lrs("linear", warmup=10)
    assert lin[55] == pytest.approx((100 - 55) / 90)
    cos = _lrs("cosine")
    for t in (0, 25, 50, 75):
        assert cos[t] == pytest.approx(0.5 * (1 + math.cos(math.pi * t / 100)))
    restarts = _lrs("cosine_with_restarts", cycles=2)
    assert restarts[50] == pytest.approx(1.0) and restarts[25] == pytest.approx(0.5)
    poly = _lrs("polynomial", power=2.0)
    assert poly[50] == pytest.approx((1 - 1e-7) * (0.5**2) + 1e-7, rel=1e-4)
