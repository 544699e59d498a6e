"""One training step's loss: noise the latents, predict, compare with the target, weight."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from library.training.noise import min_snr_weight, per_sample_mse, sample_noise, sample_timesteps, snr


@dataclass(frozen=True)
class StepSettings:
    """The options the loss needs, taken from the config once."""

    noise_offset: float | None
    min_snr_gamma: float | None
    v_prediction: bool
    clip_skip: int | None
    max_token_length: int | None

    @classmethod
    def from_config(cls, config, model) -> StepSettings:
        return cls(
            noise_offset=config.noise_offset,
            min_snr_gamma=config.min_snr_gamma,
            v_prediction=model.v_parameterization,
            clip_skip=config.clip_skip,
            max_token_length=config.max_token_length,
        )


def batch_latents(model, batch: dict, generator: torch.Generator) -> torch.Tensor:
    """Cached latents, or the VAE's encoding of the batch's pixels (no gradient)."""
    device = model.unet.device
    if batch.get("latents") is not None:
        return batch["latents"].to(device)
    with torch.no_grad():
        return model.encode_images(batch["pixels"].to(device), generator=generator)


def encode_captions(model, captions: list[str], settings: StepSettings, with_grad: bool) -> torch.Tensor:
    ids = model.tokenize(captions, settings.max_token_length).to(model.text_encoder.device)
    with torch.set_grad_enabled(with_grad):
        return model.encode_tokens(ids, settings.clip_skip)


def diffusion_loss(model, batch: dict, settings: StepSettings, generator: torch.Generator,
                   train_text_encoder: bool) -> torch.Tensor:
    """Mean loss of a batch: MSE between the UNet's prediction and ε (or v), weighted per sample by the
    batch's ``loss_weights`` (prior_loss_weight for reg images) and Min-SNR when set. Returns a scalar."""
    latents = batch_latents(model, batch, generator)
    scheduler = model.noise_scheduler
    noise = sample_noise(latents, generator, settings.noise_offset)
    timesteps = sample_timesteps(latents.shape[0], scheduler.config.num_train_timesteps, generator)
    timesteps = timesteps.to(latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    hidden = encode_captions(model, batch["captions"], settings, train_text_encoder)
    unet_dtype = model.unet.dtype
    prediction = model.unet(noisy.to(unet_dtype), timesteps, hidden.to(unet_dtype)).sample
    target = scheduler.get_velocity(latents, noise, timesteps) if settings.v_prediction else noise
    loss = per_sample_mse(prediction, target)
    loss = loss * batch["loss_weights"].to(loss.device)
    if settings.min_snr_gamma:
        weights = min_snr_weight(snr(scheduler.alphas_cumprod, timesteps), settings.min_snr_gamma, settings.v_prediction)
        loss = loss * weights.to(loss.device)
    return loss.mean()
