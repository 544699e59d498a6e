"""The flow-matching objective against its formulas: noisy input, target, prediction types, each timestep
sampling, the SD3 loss weightings and Huber c."""

from __future__ import annotations

import math

import pytest
import torch

from library.training.flow_matching import (
    FlowMatchingObjective,
    FlowSettings,
    flux_time_shift_mu,
    sample_sigmas,
    scheduler_sigmas,
)
from library.training.loss import LossSettings
from library.training.noise import NoiseSettings


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def latents_and_noise(b=3, h=8, w=6):
    x = torch.randn((b, 16, h, w), generator=gen(1))
    eps = torch.randn((b, 16, h, w), generator=gen(2))
    return x, eps


def test_noisy_input_is_the_straight_line_and_raw_target_the_velocity():
    x, eps = latents_and_noise()
    obj = FlowMatchingObjective(FlowSettings(model_prediction_type="raw"))
    t = torch.tensor([0.0, 250.0, 1000.0])
    noisy = obj.noisy_input(x, eps, t)
    torch.testing.assert_close(noisy[0], x[0])
    torch.testing.assert_close(noisy[1], 0.75 * x[1] + 0.25 * eps[1])
    torch.testing.assert_close(noisy[2], eps[2])
    torch.testing.assert_close(obj.target(x, eps, t), eps - x)
    raw = torch.randn_like(x)
    assert torch.equal(obj.prediction(raw, noisy, t), raw)
    assert torch.equal(obj.loss_weights(t, LossSettings()), torch.ones(3))


def test_additive_adds_the_noisy_input():
    x, eps = latents_and_noise()
    obj = FlowMatchingObjective(FlowSettings(model_prediction_type="additive"))
    t = torch.tensor([100.0, 500.0, 900.0])
    noisy = obj.noisy_input(x, eps, t)
    raw = torch.randn_like(x)
    torch.testing.assert_close(obj.prediction(raw, noisy, t), raw + noisy)
    torch.testing.assert_close(obj.target(x, eps, t), eps - x)


def test_sigma_scaled_turns_the_exact_velocity_into_the_picture():
    """x_σ − σ·(ε − x) = x: with the true velocity the prediction equals its target, so the loss is 0 at the
    flow (sd-scripts' FLUX trainer pairs this prediction with ε − x instead)."""
    x, eps = latents_and_noise()
    obj = FlowMatchingObjective(FlowSettings(model_prediction_type="sigma_scaled"))
    t = torch.tensor([50.0, 500.0, 990.0])
    noisy = obj.noisy_input(x, eps, t)
    prediction = obj.prediction(eps - x, noisy, t)
    torch.testing.assert_close(prediction, x, atol=1e-5, rtol=1e-5)
    assert torch.equal(obj.target(x, eps, t), x)


@pytest.mark.parametrize("scheme, expected", [
    ("sigma_sqrt", lambda s: s ** -2.0),
    ("cosmap", lambda s: 2 / (math.pi * (1 - 2 * s + 2 * s ** 2))),
    ("logit_normal", lambda s: torch.ones_like(s)),
    ("none", lambda s: torch.ones_like(s)),
])
def test_sigma_scaled_weightings(scheme, expected):
    obj = FlowMatchingObjective(FlowSettings(model_prediction_type="sigma_scaled", weighting_scheme=scheme))
    t = torch.tensor([100.0, 400.0, 800.0])
    torch.testing.assert_close(obj.loss_weights(t, LossSettings()), expected(t / 1000))


def test_scheduler_sigmas_are_diffusers_flow_match_euler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    for shift in (1.0, 3.0, 3.1582):
        ours = scheduler_sigmas(shift)
        theirs = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift).sigmas[:1000]
        torch.testing.assert_close(ours, theirs.to(torch.float32))


def test_uniform_and_sigmoid_sampling():
    s = sample_sigmas(5, (8, 8), gen(3), FlowSettings(timestep_sampling="uniform"))
    torch.testing.assert_close(s, torch.rand((5,), generator=gen(3)))
    s = sample_sigmas(5, (8, 8), gen(3), FlowSettings(timestep_sampling="sigmoid", sigmoid_scale=2.5))
    torch.testing.assert_close(s, torch.sigmoid(2.5 * torch.randn((5,), generator=gen(3))))


def test_shift_sampling():
    shift = 3.1582
    s = sample_sigmas(6, (8, 8), gen(4), FlowSettings(timestep_sampling="shift", discrete_flow_shift=shift))
    base = torch.sigmoid(torch.randn((6,), generator=gen(4)))
    torch.testing.assert_close(s, base * shift / (1 + (shift - 1) * base))
    many = sample_sigmas(20000, (8, 8), gen(5), FlowSettings(timestep_sampling="shift", discrete_flow_shift=shift))
    assert 0.7 < float(many.mean()) < 0.8  # shifted towards noise


def test_flux_shift_depends_on_resolution():
    settings = FlowSettings(timestep_sampling="flux_shift")
    small = sample_sigmas(6, (32, 32), gen(6), settings)   # 16x16 = 256 packed tokens: mu = 0.5
    base = torch.sigmoid(torch.randn((6,), generator=gen(6)))
    mu = 0.5
    torch.testing.assert_close(small, math.exp(mu) / (math.exp(mu) + (1 / base - 1)))
    assert flux_time_shift_mu(256) == pytest.approx(0.5)
    assert flux_time_shift_mu(4096) == pytest.approx(1.15)
    large = sample_sigmas(6, (128, 128), gen(6), settings)  # 4096 tokens: mu = 1.15, more noise
    assert bool((large > small).all())


@pytest.mark.parametrize("scheme", ["uniform", "logit_normal", "mode"])
def test_sigma_sampling_indexes_the_scheduler(scheme):
    from diffusers.training_utils import compute_density_for_timestep_sampling

    settings = FlowSettings(timestep_sampling="sigma", weighting_scheme=scheme, discrete_flow_shift=3.0,
                            logit_mean=0.2, logit_std=1.1, mode_scale=1.29)
    s = sample_sigmas(7, (8, 8), gen(7), settings)
    u = compute_density_for_timestep_sampling(scheme, 7, logit_mean=0.2, logit_std=1.1, mode_scale=1.29,
                                              generator=gen(7))
    expected = scheduler_sigmas(3.0)[(u * 1000).long().clamp(0, 999)]
    torch.testing.assert_close(s, expected)


def test_timesteps_are_sigma_times_1000_and_min_max_narrow_them():
    x, _ = latents_and_noise(b=4)
    obj = FlowMatchingObjective(FlowSettings(timestep_sampling="uniform"))
    t = obj.sample_timesteps(x, gen(8), NoiseSettings())
    torch.testing.assert_close(t, torch.rand((4,), generator=gen(8)) * 1000)
    narrowed = obj.sample_timesteps(x, gen(8), NoiseSettings(min_timestep=200, max_timestep=300))
    torch.testing.assert_close(narrowed, 200 + 100 * torch.rand((4,), generator=gen(8)))
    fixed = obj.sample_timesteps(x, gen(9), NoiseSettings(min_timestep=600, max_timestep=600))
    torch.testing.assert_close(fixed, torch.full((4,), 600.0))


def test_huber_c_schedules():
    obj = FlowMatchingObjective()
    t = torch.tensor([0.0, 500.0, 1000.0])
    assert obj.huber_c(t, LossSettings(loss_type="l2")) is None
    const = obj.huber_c(t, LossSettings(loss_type="huber", huber_schedule="constant", huber_c=0.2, huber_scale=2))
    torch.testing.assert_close(const, torch.full((3,), 0.4))
    exp = obj.huber_c(t, LossSettings(loss_type="huber", huber_schedule="exponential", huber_c=0.1))
    torch.testing.assert_close(exp, torch.tensor([1.0, math.sqrt(0.1), 0.1]))
    snr = obj.huber_c(torch.tensor([0.0, 500.0]), LossSettings(loss_type="smooth_l1", huber_schedule="snr",
                                                               huber_c=0.1))
    torch.testing.assert_close(snr, torch.tensor([1.0, 0.9 / 4 + 0.1]))
