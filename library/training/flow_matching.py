"""Rectified-flow training (FLUX.1 and the DiTs after it) as an :class:`~library.training.objective.Objective`.

The noisy input is the straight line between the picture and the noise, ``x_σ = (1 − σ)·x + σ·ε`` with
σ ∈ [0, 1]; the denoiser predicts the velocity ``v = ε − x``. Timesteps are σ·1000 (sd-scripts' and
diffusers' convention: the family divides by 1000 before the transformer).

σ is drawn as sd-scripts' ``timestep_sampling`` names it:

- ``sigma``: diffusers' SD3 density (``weighting_scheme`` ``logit_normal`` with ``logit_mean``/``logit_std``,
  ``mode`` with ``mode_scale``, otherwise uniform) picks an index into the 1000 σ of a
  ``FlowMatchEulerDiscreteScheduler`` with ``shift = discrete_flow_shift``;
- ``uniform``: σ ~ U(0, 1); ``sigmoid``: σ = sigmoid(sigmoid_scale · n), n ~ N(0, 1);
- ``shift``: s = sigmoid(sigmoid_scale · n), σ = shift·s / (1 + (shift − 1)·s);
- ``flux_shift``: s as for ``shift``, σ = e^μ / (e^μ + 1/s − 1) with μ linear in the packed token count
  (0.5 at 256 tokens, 1.15 at 4096), the resolution-dependent shift of FLUX.1's own schedule.

``min_timestep``/``max_timestep`` (on the 0–1000 scale) narrow σ to [min/1000, max/1000] after the draw
(the validation loss uses this to hold σ fixed).

``model_prediction_type``: ``raw`` compares the prediction with ``v``; ``additive`` adds the noisy input
to the prediction first; ``sigma_scaled`` turns the prediction into the clean-picture estimate
``x_σ − σ·v̂`` and compares it with the picture ``x`` (SD3's preconditioning, as sd-scripts' SD3 trainer and
diffusers' SD3 script pair them), weighting each sample with diffusers' ``compute_loss_weighting_for_sd3``
(``sigma_sqrt``: σ⁻², ``cosmap``: 2/(π(1 − 2σ + 2σ²)), otherwise 1). Note: sd-scripts' FLUX trainer keeps
the target ``ε − x`` also for ``sigma_scaled``, a pairing whose minimum is not the flow; we do not copy it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from library.config.options_flux import MODEL_PREDICTION_TYPES, TIMESTEP_SAMPLINGS, WEIGHTING_SCHEMES  # noqa: F401
from library.training.loss import LossSettings
from library.training.noise import NoiseSettings

NUM_TRAIN_TIMESTEPS = 1000


@dataclass(frozen=True)
class FlowSettings:
    """The flow-matching options of a run, with sd-scripts' defaults."""

    timestep_sampling: str = "sigma"
    sigmoid_scale: float = 1.0
    discrete_flow_shift: float = 3.0
    model_prediction_type: str = "sigma_scaled"
    weighting_scheme: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29

    @classmethod
    def from_config(cls, config) -> FlowSettings:
        defaults = cls()
        values = {name: getattr(config, name, None) for name in cls.__dataclass_fields__}
        return cls(**{k: (getattr(defaults, k) if v is None else v) for k, v in values.items()})


def flux_time_shift_mu(image_tokens: int, base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """μ of FLUX.1's resolution-dependent shift: linear from (256 tokens, 0.5) to (4096 tokens, 1.15)."""
    slope = (max_shift - base_shift) / (4096 - 256)
    return slope * image_tokens + (base_shift - slope * 256)


def time_shift(mu: float, sigmas: torch.Tensor) -> torch.Tensor:
    """e^μ / (e^μ + 1/σ − 1)."""
    return math.exp(mu) / (math.exp(mu) + (1.0 / sigmas - 1.0))


def shifted(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """shift·σ / (1 + (shift − 1)·σ): the static shift of FlowMatchEulerDiscreteScheduler."""
    return sigmas * shift / (1.0 + (shift - 1.0) * sigmas)


def scheduler_sigmas(shift: float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """The training σ of diffusers' ``FlowMatchEulerDiscreteScheduler(num_train_timesteps, shift)``, σ[0] = 1."""
    base = torch.linspace(1, num_train_timesteps, num_train_timesteps, dtype=torch.float32).flip(0)
    return shifted(base / num_train_timesteps, shift)


def sample_sigmas(batch_size: int, latent_hw: tuple[int, int], generator: torch.Generator,
                  settings: FlowSettings) -> torch.Tensor:
    """σ (B,) float32 on the CPU for latents of spatial size ``latent_hw``, drawn from ``generator``."""
    mode = settings.timestep_sampling
    if mode in ("uniform",):
        return torch.rand((batch_size,), generator=generator)
    if mode in ("sigmoid", "shift", "flux_shift"):
        s = torch.sigmoid(settings.sigmoid_scale * torch.randn((batch_size,), generator=generator))
        if mode == "sigmoid":
            return s
        if mode == "shift":
            return shifted(s, settings.discrete_flow_shift)
        h, w = latent_hw
        return time_shift(flux_time_shift_mu((h // 2) * (w // 2)), s)
    from diffusers.training_utils import compute_density_for_timestep_sampling

    u = compute_density_for_timestep_sampling(
        settings.weighting_scheme, batch_size, logit_mean=settings.logit_mean, logit_std=settings.logit_std,
        mode_scale=settings.mode_scale, generator=generator)
    indices = (u * NUM_TRAIN_TIMESTEPS).long().clamp(0, NUM_TRAIN_TIMESTEPS - 1)
    return scheduler_sigmas(settings.discrete_flow_shift)[indices]


def _broadcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(device=like.device, dtype=torch.float32).view(-1, *([1] * (like.ndim - 1)))


class FlowMatchingObjective:
    """Velocity prediction on the straight path between picture and noise (see the module docstring)."""

    num_train_timesteps = NUM_TRAIN_TIMESTEPS
    #: the options only this objective uses (the families training with it accept them)
    OPTIONS = frozenset(FlowSettings.__dataclass_fields__)

    def __init__(self, settings: FlowSettings | None = None):
        self.settings = settings or FlowSettings()

    def sample_timesteps(self, latents: torch.Tensor, generator: torch.Generator,
                         noise: NoiseSettings) -> torch.Tensor:
        sigmas = sample_sigmas(latents.shape[0], tuple(latents.shape[-2:]), generator, self.settings)
        if noise.min_timestep is not None or noise.max_timestep is not None:
            low = (noise.min_timestep or 0) / NUM_TRAIN_TIMESTEPS
            high = (NUM_TRAIN_TIMESTEPS if noise.max_timestep is None else noise.max_timestep) / NUM_TRAIN_TIMESTEPS
            sigmas = low + (high - low) * sigmas
        return sigmas * NUM_TRAIN_TIMESTEPS

    @staticmethod
    def sigmas(timesteps: torch.Tensor) -> torch.Tensor:
        return timesteps.to(torch.float32) / NUM_TRAIN_TIMESTEPS

    def noisy_input(self, latents, noise, timesteps) -> torch.Tensor:
        sigma = _broadcast(self.sigmas(timesteps), latents)
        return ((1.0 - sigma) * latents.float() + sigma * noise.float()).to(latents.dtype)

    def prediction(self, raw: torch.Tensor, noisy: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        kind = self.settings.model_prediction_type
        if kind == "additive":
            return raw + noisy
        if kind == "sigma_scaled":
            return noisy - _broadcast(self.sigmas(timesteps), raw).to(raw.dtype) * raw
        return raw

    def target(self, latents, noise, timesteps) -> torch.Tensor:
        if self.settings.model_prediction_type == "sigma_scaled":
            return latents
        return noise - latents

    def loss_weights(self, timesteps, loss: LossSettings) -> torch.Tensor:
        sigmas = self.sigmas(timesteps).cpu()
        if self.settings.model_prediction_type != "sigma_scaled":
            return torch.ones_like(sigmas)
        from diffusers.training_utils import compute_loss_weighting_for_sd3

        return compute_loss_weighting_for_sd3(self.settings.weighting_scheme, sigmas).to(torch.float32)

    def huber_c(self, timesteps, loss: LossSettings) -> torch.Tensor | None:
        """Huber c per sample as for DDPM: constant, ``exponential`` in the timestep, or ``snr`` with the flow
        path's noise-to-signal ratio σ/(1 − σ) in place of DDPM's sqrt((1 − ᾱ)/ᾱ)."""
        if loss.loss_type not in ("huber", "smooth_l1"):
            return None
        t = timesteps.to(torch.float32).cpu()
        c = loss.huber_c
        if loss.huber_schedule == "exponential":
            values = torch.exp(math.log(c) / NUM_TRAIN_TIMESTEPS * t)
        elif loss.huber_schedule == "snr":
            sigma = t / NUM_TRAIN_TIMESTEPS
            ratio = sigma / (1.0 - sigma).clamp(min=1e-6)
            values = (1 - c) / (1 + ratio) ** 2 + c
        else:
            values = torch.full_like(t, c)
        return values * loss.huber_scale
