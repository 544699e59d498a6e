"""One training step's loss: noise the latents, predict, compare with the target, weight."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from library.models.family import Conditioning
from library.training.loss import LossSettings, per_sample_loss
from library.training.noise import NoiseSettings, input_noise, sample_noise


@dataclass(frozen=True)
class StepSettings:
    """The options the loss needs, taken from the config once."""

    v_prediction: bool
    clip_skip: int | None = None
    max_token_length: int | None = None
    #: False with DreamBooth's ``no_token_padding``: captions padded only to the batch's longest.
    pad_tokens: bool = True
    #: ``weighted_captions``: captions in the webui's attention syntax, their tokens' states weighted
    weighted_captions: bool = False
    noise: NoiseSettings = field(default_factory=NoiseSettings)
    loss: LossSettings = field(default_factory=LossSettings)

    @classmethod
    def from_config(cls, config, model) -> StepSettings:
        noise = NoiseSettings(
            offset=config.noise_offset, offset_random_strength=config.noise_offset_random_strength,
            adaptive_scale=config.adaptive_noise_scale, multires_iterations=config.multires_noise_iterations,
            multires_discount=config.multires_noise_discount, ip_gamma=config.ip_noise_gamma,
            ip_gamma_random_strength=config.ip_noise_gamma_random_strength,
            min_timestep=config.min_timestep, max_timestep=config.max_timestep,
        )
        loss = LossSettings(
            loss_type=config.loss_type, huber_schedule=config.huber_schedule, huber_c=config.huber_c,
            huber_scale=config.huber_scale, min_snr_gamma=config.min_snr_gamma,
            scale_v_pred_loss_like_noise_pred=config.scale_v_pred_loss_like_noise_pred,
            v_pred_like_loss=config.v_pred_like_loss,
            debiased_estimation=config.debiased_estimation_loss,
        )
        return cls(v_prediction=model.v_parameterization, clip_skip=config.clip_skip,
                   max_token_length=config.max_token_length, noise=noise, loss=loss,
                   pad_tokens=not getattr(config, "no_token_padding", False),  # no_token_padding: db only
                   weighted_captions=config.weighted_captions)


def batch_latents(model, batch: dict, generator: torch.Generator) -> torch.Tensor:
    """Cached latents, or the VAE's encoding of the batch's pixels (no gradient)."""
    device = next(model.unet.parameters()).device  # not diffusers' .device: it walks every module each step
    if batch.get("latents") is not None:
        return batch["latents"].to(device)
    with torch.no_grad():
        return model.encode_images(batch["pixels"].to(device), generator=generator)


def encode_captions(model, captions: list[str], settings: StepSettings, with_grad: bool) -> Conditioning:
    """The family's conditioning of the captions; cached text-encoder outputs when the model holds them."""
    cache = model.extras.get("text_cache")
    if cache is not None:
        return cache.lookup(captions)
    with torch.set_grad_enabled(with_grad):
        return model.encode_prompt(captions, settings.clip_skip, settings.max_token_length, settings.pad_tokens,
                                   weighted=settings.weighted_captions)


def diffusion_loss(model, batch: dict, settings: StepSettings, generator: torch.Generator,
                   train_text_encoder: bool) -> torch.Tensor:
    """Mean loss of a batch: the denoiser's prediction against the objective's target (ε, v, …), weighted per
    sample by the batch's ``loss_weights`` (prior_loss_weight for reg images) and the objective's weightings.
    Returns a scalar.

    Random draws, in order, all from ``generator``: the VAE sample (uncached latents), ε, timesteps, then
    the input perturbation — so a batch's loss is a pure function of its generator seed.
    """
    latents = batch_latents(model, batch, generator)
    objective = model.adapter.objective(model)
    noise = sample_noise(latents, generator, settings.noise)
    timesteps = objective.sample_timesteps(latents, generator, settings.noise)
    noisy = objective.noisy_input(latents, input_noise(noise, generator, settings.noise), timesteps)
    cond = encode_captions(model, batch["captions"], settings, train_text_encoder)
    raw = model.adapter.predict(model, noisy, timesteps.to(latents.device), cond, batch)
    prediction = objective.prediction(raw, noisy, timesteps.to(latents.device))
    target = objective.target(latents, noise, timesteps)
    huber_c = objective.huber_c(timesteps, settings.loss)
    loss = per_sample_loss(prediction, target, settings.loss.loss_type, huber_c, batch.get("loss_masks"))
    weights = batch["loss_weights"].to(torch.float32) * objective.loss_weights(timesteps, settings.loss)
    return (loss * weights.to(loss.device)).mean()
