"""The built-in tiny model: SD-shaped, random weights from a seed, a few MB, fast on CPU.

Addressed by ``pretrained_model_name_or_path = "builtin:tiny"`` (SD1, epsilon) and
``"builtin:tiny-sd2"`` (SD2 layout, v-prediction). Every call with the same family and seed gives
bit-identical float32 weights.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from library.models.families import get_family, make_noise_scheduler
from library.models.tokenizer import clip_tokenizer

logger = logging.getLogger(__name__)

BUILTIN_NAMES = {"builtin:tiny": "sd1", "builtin:tiny-sd2": "sd2", "builtin:tiny-sdxl": "sdxl"}

TEXT_HIDDEN = 32
TEXT_LAYERS = 4
UNET_CHANNELS = (32, 32, 64, 64)
VAE_CHANNELS = (32, 32, 64, 64)


def tiny_unet_config(family: str = "sd1") -> dict:
    """Diffusers UNet2DConditionModel config of the tiny model (SD's 4-block layout, narrow)."""
    spec = get_family(family)
    return {
        "sample_size": 16,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        "block_out_channels": list(UNET_CHANNELS),
        "layers_per_block": 1,
        "cross_attention_dim": TEXT_HIDDEN,
        "attention_head_dim": [spec.unet_heads(c) for c in UNET_CHANNELS],
        "use_linear_projection": spec.use_linear_projection,
        "norm_num_groups": 32,
    }


def tiny_vae_config() -> dict:
    """Diffusers AutoencoderKL config: 4 blocks (8x downsampling), 4 latent channels."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": list(VAE_CHANNELS),
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 128,
        "scaling_factor": 0.18215,
    }


def tiny_text_encoder_config(family: str = "sd1") -> dict:
    """transformers CLIPTextConfig kwargs: hidden 32, 4 layers, CLIP's 49408 vocab and 77 positions."""
    spec = get_family(family)
    return {
        "vocab_size": 49408,
        "hidden_size": TEXT_HIDDEN,
        "intermediate_size": 4 * TEXT_HIDDEN,
        "num_hidden_layers": TEXT_LAYERS,
        "num_attention_heads": max(1, TEXT_HIDDEN // 64),
        "max_position_embeddings": 77,
        "hidden_act": spec.text_hidden_act,
        "projection_dim": TEXT_HIDDEN,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407 if family == "sd1" else 0,
    }


def _seeded(seed: int, build):
    """Run ``build()`` with torch's global RNG set to ``seed``, restoring the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def tiny_components(family: str = "sd1", seed: int = 0) -> dict:
    """Build the tiny model: dict with ``unet``, ``vae``, ``text_encoder``, ``tokenizer``, ``scheduler``.

    Weights are float32, random, fixed by ``seed`` (each module under its own derived seed).
    Latents are (B, 4, H/8, W/8); the text encoder gives (B, 77, 32).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    spec = get_family(family)
    unet = _seeded(seed * 3 + 0, lambda: UNet2DConditionModel(**tiny_unet_config(family)))
    vae = _seeded(seed * 3 + 1, lambda: AutoencoderKL(**tiny_vae_config()))
    te_config = CLIPTextConfig(**tiny_text_encoder_config(family))
    text_encoder = _seeded(seed * 3 + 2, lambda: CLIPTextModel(te_config))
    for module in (unet, vae, text_encoder):
        module.eval()
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": clip_tokenizer(spec.pad_token),
        "scheduler": make_noise_scheduler(spec.default_prediction_type),
    }


def _sd_builtin(family: str, seed: int) -> dict:
    parts = tiny_components(family, seed)
    parts.pop("scheduler")
    tokenizers = {"text_encoder": parts.pop("tokenizer")}
    return {**parts, "tokenizers": tokenizers}


def _sdxl_builtin(family: str, seed: int) -> dict:
    from library.models.tiny_sdxl import tiny_sdxl_components

    parts = tiny_sdxl_components(seed)
    parts.pop("scheduler")
    tokenizers = {"text_encoder_1": parts.pop("tokenizer_1"), "text_encoder_2": parts.pop("tokenizer_2")}
    return {**parts, "tokenizers": tokenizers}


#: family -> builder of its tiny model as {part: module, "tokenizers": {text part: tokenizer}}
TINY_BUILDERS = {"sd1": _sd_builtin, "sd2": _sd_builtin, "sdxl": _sdxl_builtin}


def builtin_components(family: str, seed: int = 0) -> dict:
    """The built-in tiny model of ``family`` as {part: module, "tokenizers": {text part: tokenizer}}."""
    return TINY_BUILDERS[family](family, seed)


def save_diffusers_folder(out_dir: str | os.PathLike, components: dict) -> Path:
    """Write ``components`` as a diffusers StableDiffusionPipeline folder (safetensors weights).

    Writes model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/; no safety checker.
    """
    from library.models.family import get_model_family

    out = Path(out_dir)
    parts = {name: components[name] for name in ("unet", "vae", "text_encoder")}
    pipe = get_model_family("sd1").diffusers_pipeline(parts, {"text_encoder": components["tokenizer"]},
                                                      components["scheduler"])  # SD1 and SD2: one pipeline class
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def save_tiny_diffusers(out_dir: str | os.PathLike, family: str = "sd1", seed: int = 0) -> Path:
    """Write the tiny model as a diffusers folder loadable by ``StableDiffusionPipeline.from_pretrained``."""
    out = save_diffusers_folder(out_dir, tiny_components(family, seed))
    logger.info("wrote tiny %s diffusers model to %s", family, out)
    return out


def save_tiny_single_file(path: str | os.PathLike, family: str = "sd1", seed: int = 0) -> Path:
    """Write the tiny model as one LDM-layout ``.safetensors`` file (configs in its metadata)."""
    from library.models.single_file import save_single_file

    parts = tiny_components(family, seed)
    out = save_single_file(path, parts["unet"], parts["vae"], parts["text_encoder"], family)
    logger.info("wrote tiny %s single file to %s", family, out)
    return out


def describe_components(components: dict) -> str:
    """One-line summary (parameter counts) for logs and the CLI."""
    counts = {
        name: sum(p.numel() for p in components[name].parameters())
        for name in ("unet", "vae", "text_encoder")
    }
    return json.dumps(counts)
