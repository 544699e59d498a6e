"""Loss functions and per-sample loss weights: pure functions of tensors.

Sources: Min-SNR-γ (Hang et al., 2023): w = min(SNR, γ)/SNR (ε) or min(SNR, γ)/(SNR+1) (v), with
SNR(t) = ᾱ_t/(1-ᾱ_t). Debiased estimation (Yu et al., "Debias the Training of Diffusion Models", 2024):
w = 1/√SNR (SNR capped at 1000), 1/(SNR+1) for v-prediction as sd-scripts does. Scheduled pseudo-Huber loss
(Khrapov et al., "Improving Diffusion Models's Data-Corruption Resistance using Scheduled Pseudo-Huber
Loss", 2024): huber 2c(√(d²+c²) − c), smooth_l1 2(√(d²+c²) − c), with c constant, exponential in t
(c_t = exp(−α t), α = −ln c / T) or following the SNR (c_t = (1−c)/(1+σ_t)² + c, σ_t = √((1−ᾱ_t)/ᾱ_t)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LossSettings:
    loss_type: str = "l2"
    huber_schedule: str = "snr"
    huber_c: float = 0.1
    huber_scale: float = 1.0
    min_snr_gamma: float | None = None
    scale_v_pred_loss_like_noise_pred: bool = False
    v_pred_like_loss: float | None = None
    debiased_estimation: bool = False


def snr(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio ᾱ_t / (1 - ᾱ_t) at ``timesteps`` (B,) -> (B,) float32 on the CPU.

    A zero-terminal-SNR schedule has ᾱ_T = 0: SNR 0 there; callers guard divisions.
    """
    alpha_bar = alphas_cumprod.to(torch.float32).cpu()[timesteps.cpu()]
    return alpha_bar / (1.0 - alpha_bar).clamp(min=1e-12)


def min_snr_weight(snr_values: torch.Tensor, gamma: float, v_prediction: bool) -> torch.Tensor:
    """Per-sample loss weights of Min-SNR-γ. Shape (B,)."""
    clipped = torch.clamp(snr_values, max=gamma)
    return clipped / (snr_values + 1.0) if v_prediction else clipped / snr_values.clamp(min=1e-12)


def v_pred_like_noise_pred_weight(snr_values: torch.Tensor) -> torch.Tensor:
    """SNR/(SNR+1), SNR capped at 1000 (sd-scripts' SNR scale): makes a v-prediction loss weigh timesteps like
    an ε-prediction loss. (B,)"""
    capped = torch.clamp(snr_values, max=1000.0)
    return capped / (capped + 1.0)


def v_pred_like_loss_weight(snr_values: torch.Tensor, amount: float) -> torch.Tensor:
    """1 + amount·(SNR+1)/SNR: adds ``amount`` times a v-prediction-like loss to an ε loss
    (sd-scripts' ``v_pred_like_loss``: loss + loss / scale · amount, scale = SNR/(SNR+1)). (B,)"""
    return 1.0 + amount / v_pred_like_noise_pred_weight(snr_values).clamp(min=1e-12)


def debiased_weight(snr_values: torch.Tensor, v_prediction: bool) -> torch.Tensor:
    """1/√SNR (SNR capped at 1000), or 1/(SNR+1) for v-prediction. (B,)"""
    capped = torch.clamp(snr_values, max=1000.0)
    return 1.0 / (capped + 1.0) if v_prediction else 1.0 / torch.sqrt(capped.clamp(min=1e-12))


def huber_c_per_sample(timesteps: torch.Tensor, settings: LossSettings, alphas_cumprod: torch.Tensor,
                       num_train_timesteps: int) -> torch.Tensor:
    """The pseudo-Huber parameter c for each sample's timestep. (B,) float32 on the CPU."""
    t = timesteps.cpu().to(torch.float32)
    c = settings.huber_c
    if settings.huber_schedule == "exponential":
        alpha = -math.log(c) / num_train_timesteps
        values = torch.exp(-alpha * t)
    elif settings.huber_schedule == "snr":
        ab = alphas_cumprod.to(torch.float32).cpu()[timesteps.cpu()]
        sigmas = ((1.0 - ab) / ab.clamp(min=1e-12)).sqrt()
        values = (1 - c) / (1 + sigmas) ** 2 + c
    else:
        values = torch.full_like(t, c)
    return values * settings.huber_scale


def per_sample_loss(prediction: torch.Tensor, target: torch.Tensor, loss_type: str = "l2",
                    huber_c: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Loss averaged per sample: (B, C, H, W) x2 -> (B,), computed in float32.

    ``mask`` (B, 1, H', W') in [0, 1], at any resolution (the pictures'), is brought to the latents' size by
    area averaging and multiplies the element-wise loss before the mean, as sd-scripts' masked loss does
    (the mean is over all elements, masked ones counting as zero).
    """
    diff = prediction.float() - target.float()
    if loss_type == "l2":
        elementwise = diff.pow(2)
    elif loss_type == "l1":
        elementwise = diff.abs()
    else:
        c = huber_c.to(diff.device).view(-1, *([1] * (diff.ndim - 1)))
        root = torch.sqrt(diff.pow(2) + c.pow(2)) - c
        elementwise = 2 * c * root if loss_type == "huber" else 2 * root
    if mask is not None:
        mask = torch.nn.functional.interpolate(mask.float().to(diff.device), size=diff.shape[2:], mode="area")
        elementwise = elementwise * mask
    return elementwise.mean(dim=tuple(range(1, diff.ndim)))


def per_sample_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per sample: (B, C, H, W) x2 -> (B,)."""
    return per_sample_loss(prediction, target, "l2")


def loss_weights(snr_values: torch.Tensor, settings: LossSettings, v_prediction: bool) -> torch.Tensor:
    """The product of the enabled per-sample weightings (ones when none is on). (B,)"""
    weights = torch.ones_like(snr_values)
    if settings.min_snr_gamma:
        weights = weights * min_snr_weight(snr_values, settings.min_snr_gamma, v_prediction)
    if settings.scale_v_pred_loss_like_noise_pred and v_prediction:
        weights = weights * v_pred_like_noise_pred_weight(snr_values)
    if settings.v_pred_like_loss:
        weights = weights * v_pred_like_loss_weight(snr_values, settings.v_pred_like_loss)
    if settings.debiased_estimation:
        weights = weights * debiased_weight(snr_values, v_prediction)
    return weights
