"""The training objective seam: timestep sampling, the noisy input, the target and the loss weights.

A family says which objective its models train with (:meth:`ModelFamily.objective`); the step asks the
objective, never the noise scheduler itself. :class:`DDPMObjective` is SD1/SD2/SDXL's: integer timesteps
in [0, 1000), ``x_t = sqrt(ᾱ_t)·x + sqrt(1-ᾱ_t)·ε`` and an ε or v target, with SNR-based weightings
(Min-SNR, debiased estimation, v-pred-like). Flow matching (FLUX) is the second: :mod:`library.training.flow_matching`.
"""

from __future__ import annotations

from typing import Protocol

import torch

from library.training.loss import LossSettings, huber_c_per_sample, loss_weights, snr
from library.training.noise import NoiseSettings, sample_timesteps


class Objective(Protocol):
    def sample_timesteps(self, latents: torch.Tensor, generator: torch.Generator,
                         noise: NoiseSettings) -> torch.Tensor:
        """Timesteps (B,) for a batch of ``latents`` (B, C, h, w), drawn from ``generator``."""

    def noisy_input(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The denoiser's input for clean ``latents`` (B, C, h, w) and ``noise`` of the same shape."""

    def prediction(self, raw: torch.Tensor, noisy: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The denoiser's output as the loss compares it with :meth:`target` (identity for DDPM; flow
        matching's ``model_prediction_type``)."""

    def target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the (post-processed) prediction is compared with (B, C, h, w)."""

    def loss_weights(self, timesteps: torch.Tensor, loss: LossSettings) -> torch.Tensor:
        """Per-sample loss weights (B,) of the objective's weighting options."""

    def huber_c(self, timesteps: torch.Tensor, loss: LossSettings) -> torch.Tensor | None:
        """Per-sample Huber c for ``huber`` / ``smooth_l1`` losses (None for l2/l1)."""


class DDPMObjective:
    """DDPM noise prediction (ε) or v-prediction over a diffusers ``DDPMScheduler``."""

    #: the options only this objective uses (the families training with it accept them)
    OPTIONS = frozenset({
        "min_snr_gamma", "scale_v_pred_loss_like_noise_pred", "v_pred_like_loss", "debiased_estimation_loss",
        "zero_terminal_snr", "v_parameterization", "noise_offset", "noise_offset_random_strength",
        "adaptive_noise_scale", "multires_noise_iterations", "multires_noise_discount",
    })

    def __init__(self, scheduler, v_prediction: bool):
        self.scheduler = scheduler
        self.v_prediction = v_prediction
        self.num_train_timesteps = scheduler.config.num_train_timesteps

    def sample_timesteps(self, latents: torch.Tensor, generator: torch.Generator,
                         noise: NoiseSettings) -> torch.Tensor:
        return sample_timesteps(latents.shape[0], self.num_train_timesteps, generator, noise.min_timestep,
                                noise.max_timestep)

    def noisy_input(self, latents, noise, timesteps) -> torch.Tensor:
        return self.scheduler.add_noise(latents, noise, timesteps.to(latents.device))

    def prediction(self, raw, noisy, timesteps) -> torch.Tensor:
        return raw

    def target(self, latents, noise, timesteps) -> torch.Tensor:
        if not self.v_prediction:
            return noise
        return self.scheduler.get_velocity(latents, noise, timesteps.to(latents.device))

    def loss_weights(self, timesteps, loss: LossSettings) -> torch.Tensor:
        return loss_weights(snr(self.scheduler.alphas_cumprod, timesteps), loss, self.v_prediction)

    def huber_c(self, timesteps, loss: LossSettings) -> torch.Tensor | None:
        if loss.loss_type not in ("huber", "smooth_l1"):
            return None
        return huber_c_per_sample(timesteps, loss, self.scheduler.alphas_cumprod, self.num_train_timesteps)
