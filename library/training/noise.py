"""Noise sampling and loss weighting for diffusion training: pure functions of tensors.

Formulas: offset noise (Guttenberg, "Diffusion with Offset Noise", 2023): ε + s·n with n ~ N(0, 1) of shape
(B, C, 1, 1). Min-SNR weighting (Hang et al., "Efficient Diffusion Training via Min-SNR Weighting
Strategy", 2023): w = min(SNR, γ) / SNR for ε-prediction and min(SNR, γ) / (SNR + 1) for v-prediction,
with SNR(t) = ᾱ_t / (1 - ᾱ_t).
"""

from __future__ import annotations

import torch


def sample_noise(
    latents: torch.Tensor, generator: torch.Generator, noise_offset: float | None = None
) -> torch.Tensor:
    """Gaussian noise shaped like ``latents`` (B, C, H, W), plus offset noise when ``noise_offset`` is set.

    Drawn on the generator's device (CPU) and moved to the latents' device, so runs are reproducible
    on any hardware.
    """
    shape = latents.shape
    noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    if noise_offset:
        noise = noise + noise_offset * torch.randn((shape[0], shape[1], 1, 1), generator=generator)
    return noise.to(device=latents.device, dtype=latents.dtype)


def sample_timesteps(batch_size: int, num_train_timesteps: int, generator: torch.Generator) -> torch.Tensor:
    """Timesteps uniform in [0, num_train_timesteps), shape (B,), int64, on the CPU."""
    return torch.randint(0, num_train_timesteps, (batch_size,), generator=generator, dtype=torch.int64)


def snr(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio ᾱ_t / (1 - ᾱ_t) at ``timesteps`` (B,) -> (B,) float32."""
    alpha_bar = alphas_cumprod.to(torch.float32)[timesteps.cpu()].to(timesteps.device)
    return alpha_bar / (1.0 - alpha_bar)


def min_snr_weight(snr_values: torch.Tensor, gamma: float, v_prediction: bool) -> torch.Tensor:
    """Per-sample loss weights of Min-SNR-γ: min(SNR, γ)/SNR (ε) or min(SNR, γ)/(SNR+1) (v). Shape (B,)."""
    clipped = torch.clamp(snr_values, max=gamma)
    return clipped / (snr_values + 1.0) if v_prediction else clipped / snr_values


def per_sample_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per sample: (B, C, H, W) x2 -> (B,), computed in float32."""
    diff = prediction.float() - target.float()
    return diff.pow(2).mean(dim=tuple(range(1, diff.ndim)))
