"""SDXL single files (Stability's SGM layout) <-> diffusers modules, exact in both directions.

An SGM file holds the UNet under ``model.diffusion_model.`` and the VAE under ``first_stage_model.``
(the same key layouts as SD1/SD2), the first text encoder (CLIP ViT-L, HF layout) under
``conditioner.embedders.0.transformer.text_model.`` and the second (OpenCLIP ViT-bigG) under
``conditioner.embedders.1.model.``. The file's ``text_projection`` is (hidden, projection_dim), the
transpose of ``CLIPTextModelWithProjection.text_projection.weight``, as diffusers' single-file reader
and ComfyUI read it. Files we write carry the diffusers configs as ``sdtrain.*`` metadata; a foreign
file gets its configs inferred from the tensors.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from library.errors import ModelLoadError
from library.models import ldm_text
from library.models.ldm_convert import (
    META_TEXT,
    META_UNET,
    META_VAE,
    UNET_PREFIX,
    VAE_PREFIX,
    configs_from_metadata,
    single_file_metadata,
    unet_from_ldm,
    unet_to_ldm,
    vae_from_ldm,
    vae_to_ldm,
)
from library.models.ldm_infer import infer_sdxl_unet_config, infer_vae_config
from library.models.single_file import _load_exact, write_checkpoint

FAMILY = "sdxl"
TEXT_1_PREFIX = "conditioner.embedders.0.transformer.text_model."
TEXT_2_PREFIX = "conditioner.embedders.1.model."
META_TEXT_2 = "sdtrain.text_encoder_2_config"
PARTS = ("unet", "vae", "text_encoder_1", "text_encoder_2")
#: SDXL's VAE latent scale, for inferred configs (the tensors cannot tell it).
SDXL_VAE_SCALING_FACTOR = 0.13025
# CLIPTextModelWithProjection keeps a ``text_model.`` level (CLIPTextModel has none in transformers 5).
_WRAPPER = "text_model."

_MISSING = {
    "unet": (UNET_PREFIX, "the UNet"),
    "vae": (VAE_PREFIX, "the VAE"),
    "text_encoder_1": (TEXT_1_PREFIX, "the first text encoder, CLIP ViT-L"),
    "text_encoder_2": (TEXT_2_PREFIX, "the second text encoder, OpenCLIP ViT-bigG"),
}


def is_sgm_single_file(state_dict: dict[str, torch.Tensor]) -> bool:
    """True when the keys hold an SGM (SDXL) UNet and ``conditioner.embedders.*`` text encoders."""
    has_conditioner = any(k.startswith("conditioner.embedders.") for k in state_dict)
    return has_conditioner and any(k.startswith(UNET_PREFIX) for k in state_dict)


def _strip(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _wrap_text_model(te_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Flat CLIP text keys -> ``CLIPTextModelWithProjection`` keys (``text_projection.weight`` stays on top)."""
    return {(k if k == ldm_text.PROJECTION_KEY else _WRAPPER + k): v for k, v in te_state.items()}


def _unwrap_text_model(te_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix(_WRAPPER): v for k, v in te_state.items()}


def _missing_error(part: str) -> ModelLoadError:
    prefix, what = _MISSING[part]
    return ModelLoadError(
        f"no {prefix}* keys ({what}). An SDXL (SGM) single file holds the UNet, the VAE and both text "
        "encoders; a refiner, a UNet-only or a pruned file cannot be loaded as an SDXL base model."
    )


def _configs_from_metadata(metadata: dict[str, str]) -> dict | None:
    return configs_from_metadata(metadata, {"unet": META_UNET, "vae": META_VAE, "text_encoder_1": META_TEXT,
                                            "text_encoder_2": META_TEXT_2})


def _infer_configs(ldm_parts: dict[str, dict], te1_sd: dict, te2_sd: dict) -> dict:
    """Configs from the tensors; ``te*_sd`` are flat CLIP text keys (te2 with ``text_projection.weight``)."""
    te2_config = ldm_text.infer_clip_config(te2_sd, "gelu")
    vae_config = infer_vae_config(ldm_parts["vae"], sample_size=1024)
    vae_config["scaling_factor"] = SDXL_VAE_SCALING_FACTOR
    return {
        "family": FAMILY,
        "unet": infer_sdxl_unet_config(ldm_parts["unet"], pooled_dim=te2_config["projection_dim"]),
        "vae": vae_config,
        "text_encoder_1": ldm_text.infer_clip_config(te1_sd, "quick_gelu"),
        "text_encoder_2": te2_config,
        "inferred": True,
    }


def split_sgm_single_file(
    state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """Split an SGM single file into diffusers state dicts and their configs.

    Returns (parts, configs): ``parts`` has ``unet``, ``vae``, ``text_encoder_1`` (CLIPTextModel keys)
    and ``text_encoder_2`` (CLIPTextModelWithProjection keys); ``configs`` has the same keys plus
    ``family`` ("sdxl") and ``inferred``. Configs come from our ``sdtrain.*`` metadata when present,
    otherwise from the tensors. Other keys (``model_ema.*``, ``logit_scale``...) are ignored.
    Raises ModelLoadError naming the prefix of a missing part.
    """
    ldm_parts = {"unet": _strip(state_dict, UNET_PREFIX), "vae": _strip(state_dict, VAE_PREFIX)}
    te1_sd = ldm_text.hf_clip_from_ldm(state_dict, TEXT_1_PREFIX)
    te2_sd = ldm_text.open_clip_from_ldm(state_dict, TEXT_2_PREFIX, keep_projection=True)
    for part, found in (*ldm_parts.items(), ("text_encoder_1", te1_sd), ("text_encoder_2", te2_sd)):
        if not found:
            raise _missing_error(part)
    configs = _configs_from_metadata(metadata or {})
    if configs is None:
        configs = _infer_configs(ldm_parts, te1_sd, te2_sd)
    parts = {
        "unet": unet_from_ldm(ldm_parts["unet"], configs["unet"]),
        "vae": vae_from_ldm(ldm_parts["vae"], configs["vae"]),
        "text_encoder_1": te1_sd,
        "text_encoder_2": _wrap_text_model(te2_sd),
    }
    return parts, configs


def modules_from_sgm_single_file(
    state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None, source: str = "single file"
) -> tuple[dict, dict]:
    """Return ({"unet", "vae", "text_encoder_1", "text_encoder_2"} float32 eval modules, configs).

    Every tensor must fit the module built from its config exactly (ModelLoadError otherwise).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    try:
        parts, configs = split_sgm_single_file(state_dict, metadata)
    except ModelLoadError as error:
        raise ModelLoadError(f"{source}: {error}") from error
    try:
        modules = {
            "unet": UNet2DConditionModel(**configs["unet"]),
            "vae": AutoencoderKL(**configs["vae"]),
            "text_encoder_1": CLIPTextModel(CLIPTextConfig(**configs["text_encoder_1"])),
            "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder_2"])),
        }
    except (TypeError, ValueError) as error:
        raise ModelLoadError(f"{source}: could not build the model from its config ({error}).") from error
    for part, module in modules.items():
        _load_exact(module, parts[part], part.replace("_", " "), source)
        torch.nn.Module.to(module, torch.float32).eval()  # diffusers' own .to() warns about fp32 modules
    return modules, configs


def to_sgm_single_file(modules: dict) -> dict[str, torch.Tensor]:
    """``{"unet", "vae", "text_encoder_1", "text_encoder_2"}`` diffusers modules -> one SGM state dict.

    Tensors keep their dtype; cast before calling (or pass ``dtype`` to :func:`save_sgm_single_file`).
    """
    unet, vae = modules["unet"], modules["vae"]
    out = {}
    for key, value in unet_to_ldm(unet.state_dict(), dict(unet.config)).items():
        out[UNET_PREFIX + key] = value
    for key, value in vae_to_ldm(vae.state_dict(), dict(vae.config)).items():
        out[VAE_PREFIX + key] = value
    out.update(ldm_text.hf_clip_to_ldm(modules["text_encoder_1"].state_dict(), TEXT_1_PREFIX))
    te2_state = _unwrap_text_model(modules["text_encoder_2"].state_dict())
    out.update(ldm_text.open_clip_to_ldm(te2_state, TEXT_2_PREFIX, keep_projection=True))
    return out


def sgm_single_file_metadata(modules: dict) -> dict[str, str]:
    """The ``sdtrain.*`` metadata strings that let :func:`split_sgm_single_file` reload exactly."""
    metadata = single_file_metadata(modules["unet"], modules["vae"], modules["text_encoder_1"], FAMILY)
    te2_config = modules["text_encoder_2"].config.to_dict()
    drop = ("architectures", "transformers_version")
    te2_config = {k: v for k, v in te2_config.items() if not k.startswith("_") and k not in drop}
    metadata[META_TEXT_2] = json.dumps(te2_config, default=str)
    return metadata


def save_sgm_single_file(
    path: str | os.PathLike,
    modules: dict,
    *,
    dtype: torch.dtype | None = None,
    extra_metadata: dict[str, str] | None = None,
) -> Path:
    """Save the four SDXL modules as one SGM-layout file (atomically).

    ``.safetensors`` carries the ``sdtrain.*`` configs plus ``extra_metadata``; ``.ckpt``/``.pt``
    is a ``{"state_dict": ...}`` pickle of tensors only. ``dtype`` casts floating tensors.
    """
    return write_checkpoint(path, to_sgm_single_file(modules), sgm_single_file_metadata(modules), extra_metadata,
                            dtype)
