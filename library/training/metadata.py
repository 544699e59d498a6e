"""The ``ss_*`` training metadata that sd-scripts writes into network files (read by model sites)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunFacts:
    """What the metadata needs to know about a run besides the config."""

    session_id: str
    started_at: float
    seed: int
    optimizer: str
    num_train_images: int
    num_reg_images: int
    num_batches_per_epoch: int
    num_epochs: int
    max_train_steps: int
    model_name: str
    base_model_version: str
    lr_warmup_steps: int
    tag_frequency: dict = field(default_factory=dict)
    dataset_dirs: dict = field(default_factory=dict)
    reg_dataset_dirs: dict = field(default_factory=dict)
    bucket_info: dict | None = None
    datasets: list | None = None
    num_validation_images: int = 0


def _s(value: Any) -> str:
    """sd-scripts stringifies every value (None -> "None", bool -> "True")."""
    return str(value)


def training_metadata(config, facts: RunFacts) -> dict[str, str]:
    """The full ``ss_*`` dict for a run (without ss_epoch/ss_steps/finished_at, added at each save)."""
    res = config.resolution
    meta = {
        "ss_session_id": facts.session_id,
        "ss_training_started_at": _s(facts.started_at),
        "ss_output_name": _s(config.output_name),
        "ss_learning_rate": _s(config.learning_rate),
        "ss_text_encoder_lr": _s(getattr(config, "text_encoder_lr", None)),
        "ss_unet_lr": _s(getattr(config, "unet_lr", None)),
        "ss_num_train_images": _s(facts.num_train_images),
        "ss_num_reg_images": _s(facts.num_reg_images),
        "ss_num_batches_per_epoch": _s(facts.num_batches_per_epoch),
        "ss_num_epochs": _s(facts.num_epochs),
        "ss_gradient_checkpointing": _s(config.gradient_checkpointing),
        "ss_gradient_accumulation_steps": _s(config.gradient_accumulation_steps),
        "ss_max_train_steps": _s(facts.max_train_steps),
        "ss_lr_warmup_steps": _s(facts.lr_warmup_steps),
        "ss_lr_scheduler": _s(config.lr_scheduler),
        "ss_mixed_precision": _s(config.mixed_precision),
        "ss_full_fp16": "False",
        "ss_v2": _s(config.v2 or facts.base_model_version.startswith("sd_v2")),
        "ss_base_model_version": facts.base_model_version,
        "ss_clip_skip": _s(config.clip_skip),
        "ss_max_token_length": _s(config.max_token_length),
        "ss_cache_latents": _s(config.cache_latents),
        "ss_seed": _s(facts.seed),
        "ss_lowram": "False",
        "ss_noise_offset": _s(config.noise_offset),
        "ss_min_snr_gamma": _s(config.min_snr_gamma),
        "ss_noise_offset_random_strength": _s(config.noise_offset_random_strength),
        "ss_adaptive_noise_scale": _s(config.adaptive_noise_scale),
        "ss_multires_noise_iterations": _s(config.multires_noise_iterations),
        "ss_multires_noise_discount": _s(config.multires_noise_discount),
        "ss_ip_noise_gamma": _s(config.ip_noise_gamma),
        "ss_ip_noise_gamma_random_strength": _s(config.ip_noise_gamma_random_strength),
        "ss_zero_terminal_snr": _s(config.zero_terminal_snr),
        "ss_debiased_estimation": _s(config.debiased_estimation_loss),
        "ss_loss_type": _s(config.loss_type),
        "ss_huber_schedule": _s(config.huber_schedule),
        "ss_huber_c": _s(config.huber_c),
        "ss_huber_scale": _s(config.huber_scale),
        "ss_training_comment": _s(config.training_comment),
        "ss_sd_scripts_commit_hash": "",
        "ss_optimizer": facts.optimizer,
        "ss_max_grad_norm": _s(config.max_grad_norm),
        "ss_scale_weight_norms": _s(getattr(config, "scale_weight_norms", None)),
        "ss_prior_loss_weight": _s(config.prior_loss_weight),
        "ss_ema_decay": _s(config.ema_decay),
        "ss_validation_split": _s(config.validation_split),
        "ss_validation_seed": _s(config.validation_seed),
        "ss_validate_every_n_steps": _s(config.validate_every_n_steps),
        "ss_validate_every_n_epochs": _s(config.validate_every_n_epochs),
        "ss_max_validation_steps": _s(config.max_validation_steps),
        "ss_num_validation_images": _s(facts.num_validation_images),
        "ss_caption_dropout_rate": _s(config.caption_dropout_rate),
        "ss_caption_dropout_every_n_epochs": _s(config.caption_dropout_every_n_epochs),
        "ss_caption_tag_dropout_rate": _s(config.caption_tag_dropout_rate),
        "ss_sd_model_name": facts.model_name,
        "ss_vae_name": _s(config.vae),
        "ss_tag_frequency": json.dumps(facts.tag_frequency),
        "ss_dataset_dirs": json.dumps(facts.dataset_dirs),
    }
    if facts.datasets is not None:
        meta["ss_datasets"] = json.dumps(facts.datasets)
    else:
        meta.update(
            {
                "ss_batch_size_per_device": _s(config.train_batch_size),
                "ss_total_batch_size": _s(config.train_batch_size * config.gradient_accumulation_steps),
                "ss_resolution": _s(tuple(res)),
                "ss_color_aug": _s(config.color_aug),
                "ss_flip_aug": _s(config.flip_aug),
                "ss_random_crop": _s(config.random_crop),
                "ss_shuffle_caption": _s(config.shuffle_caption),
                "ss_enable_bucket": _s(config.enable_bucket),
                "ss_bucket_no_upscale": _s(config.bucket_no_upscale),
                "ss_min_bucket_reso": _s(config.min_bucket_reso),
                "ss_max_bucket_reso": _s(config.max_bucket_reso),
                "ss_keep_tokens": _s(config.keep_tokens),
                "ss_reg_dataset_dirs": json.dumps(facts.reg_dataset_dirs),
                "ss_bucket_info": json.dumps(facts.bucket_info) if facts.bucket_info is not None else "None",
            }
        )
    return meta


#: the keys kept even with ``no_metadata`` (sd-scripts keeps these so clients can still load the file).
MINIMAL_KEYS = ("ss_v2", "ss_base_model_version", "ss_network_module", "ss_network_dim", "ss_network_alpha",
                "ss_network_args")


def minimal(meta: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in meta.items() if k in MINIMAL_KEYS}


#: the longest side of the preview written as ``modelspec.thumbnail`` from a sample image (ModelSpec asks for
#: a small thumbnail; a full sample would add hundreds of KiB to every file's header)
THUMBNAIL_SIDE = 256


def thumbnail_problem(value: str) -> str | None:
    """The check of ``metadata_thumbnail``: a ``data:`` URL or an existing image file."""
    from pathlib import Path

    if value.startswith("data:") or Path(value).is_file():
        return None
    return (f"{value!r} is neither a data: URL nor an existing file. Give the path of a picture (it is stored as a "
            "data URL), or leave it unset to use the first sample image.")


def file_data_url(path) -> str:
    """A file as a ``data:<mime>;base64,…`` URL, unchanged (sd-scripts' ``file_to_data_url``)."""
    import base64
    import mimetypes
    from pathlib import Path

    mime = mimetypes.guess_type(str(path))[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(Path(path).read_bytes()).decode('ascii')}"


def image_thumbnail_url(path, side: int = THUMBNAIL_SIDE) -> str:
    """A picture shrunk to fit ``side`` x ``side`` (aspect kept, never enlarged) as a JPEG data URL."""
    import base64
    import io

    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB")
        small.thumbnail((side, side))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def card_metadata(config, first_sample=None) -> dict[str, str]:
    """The model card's ``modelspec.*`` keys that come from the user or the run rather than from the model:
    ``trigger_phrase`` and ``usage_hint`` (sd-scripts' ``metadata_trigger_phrase`` / ``metadata_usage_hint``) and
    ``thumbnail``: ``metadata_thumbnail`` (a data URL, or a file stored as one, as sd-scripts does), else the
    run's first sample image shrunk to a small JPEG. Unset values are left out."""
    meta = {}
    if getattr(config, "metadata_trigger_phrase", None):
        meta["modelspec.trigger_phrase"] = config.metadata_trigger_phrase
    if getattr(config, "metadata_usage_hint", None):
        meta["modelspec.usage_hint"] = config.metadata_usage_hint
    given = getattr(config, "metadata_thumbnail", None)
    if given:
        meta["modelspec.thumbnail"] = given if given.startswith("data:") else file_data_url(given)
    elif first_sample is not None:
        meta["modelspec.thumbnail"] = image_thumbnail_url(first_sample)
    return meta
