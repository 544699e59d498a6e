"""SAI model-spec (``modelspec.*``) metadata for LoRA files, as sd-scripts writes it.

Spec: https://github.com/Stability-AI/ModelSpec (version 1.0.1). The trainer assembles the ``ss_*``
keys itself and merges both dicts before :meth:`Network.save`.
"""

from __future__ import annotations

import datetime

SAI_MODEL_SPEC_VERSION = "1.0.1"

ARCH_SD_V1 = "stable-diffusion-v1"
ARCH_SD_V2_512 = "stable-diffusion-v2-512"
ARCH_SD_V2_768_V = "stable-diffusion-v2-768-v"
ARCH_SD_XL_V1_BASE = "stable-diffusion-xl-v1-base"
ADAPTER_LORA = "lora"

IMPL_STABILITY_AI = "https://github.com/Stability-AI/generative-models"
IMPL_DIFFUSERS = "diffusers"

PREDICTION_TYPES = ("epsilon", "v")


def base_architecture(v2: bool, v_parameterization: bool, sdxl: bool = False) -> str:
    """sd-scripts' rule: SDXL base, SD2 768-v (v2 + v-prediction), SD2 512, else SD1."""
    if sdxl:
        return ARCH_SD_XL_V1_BASE
    if v2:
        return ARCH_SD_V2_768_V if v_parameterization else ARCH_SD_V2_512
    return ARCH_SD_V1


def lora_architecture(v2: bool, v_parameterization: bool, sdxl: bool = False) -> str:
    """E.g. "stable-diffusion-v1/lora", "stable-diffusion-v2-768-v/lora"."""
    return f"{base_architecture(v2, v_parameterization, sdxl)}/{ADAPTER_LORA}"


def format_resolution(resolution: int | tuple[int, int] | list[int]) -> str:
    """512 -> "512x512"; (768, 512) as (width, height) -> "768x512"."""
    if isinstance(resolution, int):
        return f"{resolution}x{resolution}"
    width, height = resolution
    return f"{width}x{height}"


def modelspec_metadata(
    architecture: str,
    title: str,
    resolution: int | tuple[int, int] | list[int],
    prediction_type: str,
    *,
    date: datetime.datetime | None = None,
    implementation: str | None = None,
    author: str | None = None,
    description: str | None = None,
    license: str | None = None,
    tags: str | None = None,
    trigger_phrase: str | None = None,
) -> dict[str, str]:
    """``modelspec.*`` string metadata.

    ``implementation`` defaults as sd-scripts: the Stability repository for SDXL LoRAs, "diffusers"
    for SD1/SD2 LoRAs (trained on the diffusers UNet). ``date`` defaults to now (ISO 8601, seconds).
    Optional fields that are None are left out.
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    if implementation is None:
        implementation = IMPL_STABILITY_AI if architecture.startswith(ARCH_SD_XL_V1_BASE) else IMPL_DIFFUSERS
    date = date or datetime.datetime.now()
    meta = {
        "modelspec.sai_model_spec": SAI_MODEL_SPEC_VERSION,
        "modelspec.architecture": architecture,
        "modelspec.implementation": implementation,
        "modelspec.title": title,
        "modelspec.date": date.replace(microsecond=0).isoformat(),
        "modelspec.resolution": format_resolution(resolution),
        "modelspec.prediction_type": prediction_type,
    }
    optional = {
        "author": author,
        "description": description,
        "license": license,
        "tags": tags,
        "trigger_phrase": trigger_phrase,
    }
    meta.update({f"modelspec.{k}": v for k, v in optional.items() if v is not None})
    return meta
