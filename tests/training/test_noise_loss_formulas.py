"""Each noise and loss option checked against its formula, as pure functions of tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from library.training.loss import (
    LossSettings,
    debiased_weight,
    huber_c_per_sample,
    loss_weights,
    per_sample_loss,
    snr,
    v_pred_like_noise_pred_weight,
)
from library.training.noise import (
    NoiseSettings,
    input_noise,
    offset_strength,
    pyramid_noise,
    sample_noise,
    sample_timesteps,
)

SCHED = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_offset_random_strength_and_adaptive_scale():
    latents = torch.full((3, 4, 2, 2), -2.0)
    fixed = offset_strength(latents, NoiseSettings(offset=0.1), gen())
    assert torch.allclose(fixed, torch.full((3, 4, 1, 1), 0.1))
    rnd = offset_strength(latents, NoiseSettings(offset=0.1, offset_random_strength=True), gen(5))
    u = torch.rand((3, 1, 1, 1), generator=gen(5))
    assert torch.allclose(rnd, (0.1 * u).expand(3, 4, 1, 1))
    adaptive = offset_strength(latents, NoiseSettings(offset=0.1, adaptive_scale=0.5), gen())
    assert torch.allclose(adaptive, torch.full((3, 4, 1, 1), 0.1 + 0.5 * 2.0))


def test_pyramid_noise_formula():
    noise = torch.randn(2, 4, 16, 16, generator=gen(1))
    out = pyramid_noise(noise, gen(2), iterations=3, discount=0.3)
    g = gen(2)
    expected = noise.clone()
    for i in range(1, 4):
        r = float(torch.rand((1,), generator=g)) * 2 + 2
        hn, wn = max(1, int(16 / r**i)), max(1, int(16 / r**i))
        level = torch.randn((2, 4, hn, wn), generator=g)
        expected = expected + F.interpolate(level, size=(16, 16), mode="bilinear", align_corners=False) * 0.3**i
        if hn == 1 or wn == 1:
            break
    assert torch.allclose(out, expected / expected.std(), atol=1e-6)
    assert out.std().item() == pytest.approx(1.0, abs=1e-5)
    via_settings = sample_noise(torch.zeros(2, 4, 16, 16), gen(9), NoiseSettings(multires_iterations=3))
    assert via_settings.std().item() == pytest.approx(1.0, abs=1e-5)


def test_input_perturbation_changes_the_input_only():
    noise = torch.randn(2, 4, 4, 4, generator=gen(1))
    assert input_noise(noise, gen(), NoiseSettings()) is noise
    out = input_noise(noise, gen(3), NoiseSettings(ip_gamma=0.1))
    assert torch.allclose(out, noise + 0.1 * torch.randn(noise.shape, generator=gen(3)))


def test_timestep_range():
    t = sample_timesteps(4000, 1000, gen(), min_timestep=200, max_timestep=300)
    assert t.min().item() >= 200 and t.max().item() < 300
    assert sample_timesteps(5, 1000, gen(), None, None).max().item() < 1000


def test_snr_weights():
    t = torch.tensor([1, 100, 900])
    s = snr(SCHED.alphas_cumprod, t)
    assert torch.allclose(v_pred_like_noise_pred_weight(s), s / (s + 1))
    assert torch.allclose(debiased_weight(s, False), 1 / torch.sqrt(torch.clamp(s, max=1000)))
    assert torch.allclose(debiased_weight(s, True), 1 / (torch.clamp(s, max=1000) + 1))
    both = loss_weights(s, LossSettings(min_snr_gamma=5.0, debiased_estimation=True), v_prediction=False)
    assert torch.allclose(both, torch.clamp(s, max=5.0) / s / torch.sqrt(torch.clamp(s, max=1000)))
    # scale_v_pred_loss_like_noise_pred only acts on v-prediction
    assert torch.equal(loss_weights(s, LossSettings(scale_v_pred_loss_like_noise_pred=True), False), torch.ones(3))


def test_loss_types():
    pred = torch.zeros(2, 1, 1, 2)
    target = torch.tensor([[[[1.0, -3.0]]], [[[2.0, 0.0]]]])
    assert per_sample_loss(pred, target, "l2").tolist() == [5.0, 2.0]
    assert per_sample_loss(pred, target, "l1").tolist() == [2.0, 1.0]
    c = torch.tensor([0.5, 0.1])
    d = target.view(2, 2)
    huber = (2 * c[:, None] * (torch.sqrt(d**2 + c[:, None] ** 2) - c[:, None])).mean(1)
    smooth = (2 * (torch.sqrt(d**2 + c[:, None] ** 2) - c[:, None])).mean(1)
    assert torch.allclose(per_sample_loss(pred, target, "huber", c), huber)
    assert torch.allclose(per_sample_loss(pred, target, "smooth_l1", c), smooth)


def test_huber_schedules():
    t = torch.tensor([0, 500, 999])
    const = huber_c_per_sample(t, LossSettings(huber_schedule="constant", huber_c=0.1), SCHED.alphas_cumprod, 1000)
    assert torch.allclose(const, torch.full((3,), 0.1))
    expo = huber_c_per_sample(t, LossSettings(huber_schedule="exponential", huber_c=0.1), SCHED.alphas_cumprod, 1000)
    alpha = -math.log(0.1) / 1000
    assert torch.allclose(expo, torch.exp(-alpha * t.float()))
    by_snr = huber_c_per_sample(t, LossSettings(huber_schedule="snr", huber_c=0.1, huber_scale=2.0),
                                SCHED.alphas_cumprod, 1000)
    ab = SCHED.alphas_cumprod[t]
    sig = ((1 - ab) / ab).sqrt()
    assert torch.allclose(by_snr, 2.0 * ((1 - 0.1) / (1 + sig) ** 2 + 0.1))


def test_v_pred_like_loss_adds_a_v_prediction_like_term():
    t = torch.tensor([1, 100, 900])
    s = snr(SCHED.alphas_cumprod, t)
    weights = loss_weights(s, LossSettings(v_pred_like_loss=0.5), v_prediction=False)
    assert torch.allclose(weights, 1 + 0.5 * (s + 1) / s)  # loss + loss / (SNR/(SNR+1)) · 0.5
    with_snr = loss_weights(s, LossSettings(min_snr_gamma=5.0, v_pred_like_loss=0.5), v_prediction=False)
    assert torch.allclose(with_snr, torch.clamp(s, max=5.0) / s * (1 + 0.5 * (s + 1) / s))
    huge = torch.tensor([1e6])  # SNR capped at 1000, as sd-scripts' SNR scale
    assert torch.allclose(loss_weights(huge, LossSettings(v_pred_like_loss=1.0), False), torch.tensor([2.001]))


def test_v_pred_like_loss_is_an_option():
    from library.config.load import config_from_values

    values = {"pretrained_model_name_or_path": "builtin:tiny", "train_data_dir": "dataset_examples/train",
              "output_dir": "out", "v_pred_like_loss": 0.1}
    config = config_from_values(values, "network")
    from library.training.step import StepSettings

    class Model:
        v_parameterization = False

    assert StepSettings.from_config(config, Model()).loss.v_pred_like_loss == 0.1
