"""Noise sampling for diffusion training: pure functions of tensors and an explicit generator.

Sources: offset noise (Guttenberg, "Diffusion with Offset Noise", 2023): ε + s·n, n ~ N(0, 1) of shape
(B, C, 1, 1); adaptive offset adds |mean latent| × scale to s. Pyramid / multi-resolution noise
(Whitaker, "Multi-Resolution Noise for Diffusion Model Training", 2023): Σ_i discount^i · up(N(0,1) at
size/r^i), r ~ U(2, 4), renormalised to unit std. Input perturbation (Ning et al., "Input Perturbation
Reduces Exposure Bias in Diffusion Models", 2023): the noisy input uses ε + γ·ξ while the target stays ε.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class NoiseSettings:
    """The noise options of a run (all off by default)."""

    offset: float | None = None
    offset_random_strength: bool = False
    adaptive_scale: float | None = None
    multires_iterations: int | None = None
    multires_discount: float = 0.3
    ip_gamma: float | None = None
    ip_gamma_random_strength: bool = False
    min_timestep: int | None = None
    max_timestep: int | None = None


def _uniform(shape: tuple, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=generator, dtype=torch.float32)


def offset_strength(latents: torch.Tensor, settings: NoiseSettings, generator: torch.Generator) -> torch.Tensor:
    """Per-sample, per-channel offset strength (B, C, 1, 1); zeros when offset noise is off."""
    b, c = latents.shape[:2]
    strength = torch.full((b, 1, 1, 1), float(settings.offset or 0.0))
    if settings.offset and settings.offset_random_strength:
        strength = strength * _uniform((b, 1, 1, 1), generator)
    strength = strength.expand(b, c, 1, 1)
    if settings.offset and settings.adaptive_scale:
        mean = latents.detach().float().cpu().mean(dim=(2, 3), keepdim=True).abs()
        strength = torch.clamp(strength + settings.adaptive_scale * mean, min=0.0)
    return strength


def pyramid_noise(noise: torch.Tensor, generator: torch.Generator, iterations: int, discount: float) -> torch.Tensor:
    """Add lower-resolution noise levels to ``noise`` (B, C, H, W) and renormalise to unit std."""
    b, c, h, w = noise.shape
    out = noise.clone()
    for i in range(1, iterations + 1):
        r = float(_uniform((1,), generator)) * 2 + 2
        hn, wn = max(1, int(h / r**i)), max(1, int(w / r**i))
        level = torch.randn((b, c, hn, wn), generator=generator)
        out = out + F.interpolate(level, size=(h, w), mode="bilinear", align_corners=False) * discount**i
        if hn == 1 or wn == 1:
            break
    return out / out.std()


def sample_noise(latents: torch.Tensor, generator: torch.Generator, settings: NoiseSettings) -> torch.Tensor:
    """The training noise ε for ``latents`` (B, C, H, W): Gaussian, then offset and pyramid noise as set.

    Drawn on the CPU generator and moved to the latents' device, so a run is reproducible anywhere.
    """
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32)
    if settings.offset:
        strength = offset_strength(latents, settings, generator)
        noise = noise + strength * torch.randn(strength.shape, generator=generator)
    if settings.multires_iterations:
        noise = pyramid_noise(noise, generator, settings.multires_iterations, settings.multires_discount)
    return noise.to(device=latents.device, dtype=latents.dtype)


def input_noise(noise: torch.Tensor, generator: torch.Generator, settings: NoiseSettings) -> torch.Tensor:
    """The noise that goes into the noisy input: ε, or ε + γ·ξ with input perturbation."""
    if not settings.ip_gamma:
        return noise
    gamma = torch.full((noise.shape[0], 1, 1, 1), settings.ip_gamma)
    if settings.ip_gamma_random_strength:
        gamma = gamma * _uniform((noise.shape[0], 1, 1, 1), generator)
    xi = torch.randn(noise.shape, generator=generator)
    return noise + (gamma * xi).to(device=noise.device, dtype=noise.dtype)


def sample_timesteps(batch_size: int, num_train_timesteps: int, generator: torch.Generator,
                     min_timestep: int | None = None, max_timestep: int | None = None) -> torch.Tensor:
    """Timesteps uniform in [min_timestep, max_timestep) (default [0, T)), shape (B,), int64, CPU."""
    low = min_timestep or 0
    high = max_timestep or num_train_timesteps
    return torch.randint(low, max(high, low + 1), (batch_size,), generator=generator, dtype=torch.int64)
