"""The built-in tiny SDXL model: SDXL-shaped (two text encoders, size conditioning), a few MB, fast on CPU.

Random float32 weights fixed by a seed, bit-identical for the same seed. The layout follows SDXL base:
no attention at the first level, deeper transformers further down (1/2/10 in SDXL, 1/1/2 here),
linear projections, the ``text_time`` addition embedding fed by the second encoder's pooled
projection. The two text encoders have different widths (32 and 48), as SDXL's 768 and 1280 do:
diffusers' single-file reader tells them apart by width. The second one's projection is non-square
(48 -> 16) so that a missing transpose of ``text_projection`` cannot go unnoticed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from library.models.families import heads_dim64, make_noise_scheduler
from library.models.tiny import _seeded, tiny_vae_config
from library.models.tokenizer import clip_tokenizer

logger = logging.getLogger(__name__)

TEXT_1_HIDDEN = 32
TEXT_2_HIDDEN = 48
TEXT_2_PROJECTION = 16
TIME_EMBED_DIM = 8
UNET_CHANNELS = (32, 64, 64)
#: SDXL's VAE latent scale (SD1/SD2: 0.18215).
SDXL_VAE_SCALING_FACTOR = 0.13025


def tiny_sdxl_unet_config() -> dict:
    """Diffusers UNet2DConditionModel config shaped like SDXL base, narrow.

    Context is the two encoders' hidden states concatenated: (B, 77, 32 + 48). The addition embedding
    takes 6 time ids x ``addition_time_embed_dim`` sinusoids plus the pooled (B, 16) projection.
    Heads follow the 64-channels-per-head rule (at least 1) that config inference uses.
    """
    return {
        "sample_size": 32,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "block_out_channels": list(UNET_CHANNELS),
        "layers_per_block": 2,
        "transformer_layers_per_block": [1, 1, 2],
        "cross_attention_dim": TEXT_1_HIDDEN + TEXT_2_HIDDEN,
        "attention_head_dim": [heads_dim64(c) for c in UNET_CHANNELS],
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": TIME_EMBED_DIM,
        "projection_class_embeddings_input_dim": 6 * TIME_EMBED_DIM + TEXT_2_PROJECTION,
        "norm_num_groups": 32,
    }


def tiny_sdxl_vae_config() -> dict:
    """The tiny AutoencoderKL config with SDXL's latent scaling factor."""
    return {**tiny_vae_config(), "scaling_factor": SDXL_VAE_SCALING_FACTOR}


def _clip_kwargs(hidden: int, layers: int, hidden_act: str, pad_token_id: int, projection_dim: int) -> dict:
    return {
        "vocab_size": 49408,
        "hidden_size": hidden,
        "intermediate_size": 4 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, hidden // 64),
        "max_position_embeddings": 77,
        "hidden_act": hidden_act,
        "projection_dim": projection_dim,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": pad_token_id,
    }


def tiny_sdxl_text_encoder_configs() -> tuple[dict, dict]:
    """CLIPTextConfig kwargs of (text_encoder_1, text_encoder_2).

    1: CLIP ViT-L-like, hidden 32, 4 layers, quick_gelu, pads with EOS (49407).
    2: OpenCLIP bigG-like, hidden 48, 5 layers, gelu, pads with "!" (0), projection 48 -> 16.
    """
    te1 = _clip_kwargs(TEXT_1_HIDDEN, 4, "quick_gelu", 49407, TEXT_1_HIDDEN)
    te2 = _clip_kwargs(TEXT_2_HIDDEN, 5, "gelu", 0, TEXT_2_PROJECTION)
    return te1, te2


def tiny_sdxl_components(seed: int = 0) -> dict:
    """Build the tiny SDXL: ``unet``, ``vae``, ``text_encoder_1``, ``text_encoder_2``, ``tokenizer_1``,
    ``tokenizer_2``, ``scheduler``.

    Float32, eval, each module under its own seed derived from ``seed``. Latents are (B, 4, H/8, W/8);
    encoder 1 gives (B, 77, 32), encoder 2 (B, 77, 48) and a pooled (B, 16) ``text_embeds``.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    te1_kwargs, te2_kwargs = tiny_sdxl_text_encoder_configs()
    unet = _seeded(seed * 4 + 0, lambda: UNet2DConditionModel(**tiny_sdxl_unet_config()))
    vae = _seeded(seed * 4 + 1, lambda: AutoencoderKL(**tiny_sdxl_vae_config()))
    te1 = _seeded(seed * 4 + 2, lambda: CLIPTextModel(CLIPTextConfig(**te1_kwargs)))
    te2 = _seeded(seed * 4 + 3, lambda: CLIPTextModelWithProjection(CLIPTextConfig(**te2_kwargs)))
    for module in (unet, vae, te1, te2):
        module.eval()
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder_1": te1,
        "text_encoder_2": te2,
        "tokenizer_1": clip_tokenizer("<|endoftext|>"),
        "tokenizer_2": clip_tokenizer("!"),
        "scheduler": make_noise_scheduler("epsilon"),
    }


def save_sdxl_diffusers_folder(out_dir: str | os.PathLike, components: dict) -> Path:
    """Write ``components`` as a diffusers StableDiffusionXLPipeline folder (safetensors weights).

    Writes model_index.json, unet/, vae/, text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/,
    scheduler/; no watermarker.
    """
    from library.models.family import get_model_family

    out = Path(out_dir)
    parts = {name: components[name] for name in ("unet", "vae", "text_encoder_1", "text_encoder_2")}
    tokenizers = {"text_encoder_1": components["tokenizer_1"], "text_encoder_2": components["tokenizer_2"]}
    pipe = get_model_family("sdxl").diffusers_pipeline(parts, tokenizers, components["scheduler"])
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def save_tiny_sdxl_diffusers(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Write the tiny SDXL as a folder loadable by ``StableDiffusionXLPipeline.from_pretrained``."""
    out = save_sdxl_diffusers_folder(out_dir, tiny_sdxl_components(seed))
    logger.info("wrote tiny sdxl diffusers model to %s", out)
    return out


def save_tiny_sdxl_single_file(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write the tiny SDXL as one SGM-layout file (``.safetensors`` carries the configs in its metadata)."""
    from library.models.sgm import save_sgm_single_file

    out = save_sgm_single_file(path, tiny_sdxl_components(seed))
    logger.info("wrote tiny sdxl single file to %s", out)
    return out
