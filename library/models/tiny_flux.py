"""The built-in tiny FLUX.1: FLUX-shaped (double + single blocks, CLIP-L pooled + T5 states, 16-channel VAE with
FLUX's scaling and shift factor), a few MB, fast on CPU, nothing downloaded.

Random float32 weights fixed by a seed. Written in two layouts:

- a diffusers ``FluxPipeline`` folder: transformer/, text_encoder/ (CLIPTextModel), text_encoder_2/
  (T5EncoderModel), tokenizer/ (CLIP BPE, built from the bundled merges), tokenizer_2/ (a small Unigram T5
  tokenizer built here), vae/, scheduler/ (FlowMatchEulerDiscreteScheduler as FLUX.1 dev / schnell ship it);
- sd-scripts' separate files: the transformer in BFL's key layout (``double_blocks.0.img_attn.qkv.weight``),
  ``clip_l.safetensors`` (transformers CLIPTextModel keys, ``text_model.*``), ``t5xxl.safetensors``
  (T5EncoderModel keys, ``shared.weight`` + ``encoder.*``) and ``ae.safetensors`` (BFL's autoencoder keys:
  the LDM VAE layout without ``first_stage_model.`` and without quant convs), each with its module config as
  JSON in the ``sdtrain.config`` metadata (real files have none: their configs are FLUX's fixed ones); the
  t5xxl file also carries the tiny T5 tokenizer in ``sdtrain.tokenizer`` (real files use T5-XXL's).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path

from library.models.flux import META_CONFIG, META_TOKENIZER  # module configs / tokenizer in metadata
from library.models.flux_model import (
    FLUX_LATENT_CHANNELS,
    FLUX_VAE_SCALING_FACTOR,
    FLUX_VAE_SHIFT_FACTOR,
    TINY_FLUX_PARAMS,
    FluxParams,
    FluxTransformer,
)
from library.models.tiny import _seeded, tiny_vae_config
from library.models.tokenizer import clip_tokenizer

logger = logging.getLogger(__name__)

VARIANTS = ("dev", "schnell")
CLIP_HIDDEN = TINY_FLUX_PARAMS.vec_in_dim
T5_D_MODEL = TINY_FLUX_PARAMS.context_in_dim
#: FLUX.1 dev's T5 length (schnell: 256); also the tiny T5 tokenizer's model_max_length
T5_MAX_LENGTH = 512
SEPARATE_FILE_NAMES = {
    "transformer": "flux1-{variant}.safetensors",
    "clip_l": "clip_l.safetensors",
    "t5xxl": "t5xxl.safetensors",
    "ae": "ae.safetensors",
}
#: FlowMatchEulerDiscreteScheduler configs of black-forest-labs/FLUX.1-dev and FLUX.1-schnell
SCHEDULER_CONFIGS = {
    "dev": {"shift": 3.0, "use_dynamic_shifting": True},
    "schnell": {"shift": 1.0, "use_dynamic_shifting": False},
}
_SCHEDULER_COMMON = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
}
# The tiny T5 vocabulary: whole words beat their letters (higher Unigram score), unknown symbols -> <unk>.
_T5_WORDS = (
    "a an the of and with in on at to for is are by from this that it as be or "
    "photo picture image painting drawing portrait style art illustration close up background "
    "red green blue yellow white black orange purple pink brown gray "
    "cat dog man woman girl boy person face hair eyes car house tree sky sea city street flower "
    "sks disc circle square ball big small bright dark high quality detailed"
).split()
_T5_SYMBOLS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;!?'\"()[]{}-_/+*=#&%@<>|~"


def check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"unknown FLUX variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    return variant


def tiny_flux_params(variant: str = "dev") -> FluxParams:
    """The tiny transformer's :class:`FluxParams`: dev has the guidance embedder, schnell not."""
    return replace(TINY_FLUX_PARAMS, guidance_embed=check_variant(variant) == "dev")


def tiny_flux_vae_config() -> dict:
    """AutoencoderKL config: the tiny 8x VAE with 16 latent channels, FLUX's factors, no quant convs."""
    return {
        **tiny_vae_config(),
        "latent_channels": FLUX_LATENT_CHANNELS,
        "scaling_factor": FLUX_VAE_SCALING_FACTOR,
        "shift_factor": FLUX_VAE_SHIFT_FACTOR,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
    }


def tiny_clip_l_config() -> dict:
    """CLIPTextConfig kwargs: CLIP-L-like (quick_gelu, EOS padding), hidden 32 = the pooled width FLUX takes."""
    return {
        "vocab_size": 49408,
        "hidden_size": CLIP_HIDDEN,
        "intermediate_size": 4 * CLIP_HIDDEN,
        "num_hidden_layers": 2,
        "num_attention_heads": 1,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "projection_dim": CLIP_HIDDEN,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407,
    }


def t5_vocabulary() -> list[tuple[str, float]]:
    """The tiny T5 tokenizer's Unigram pieces with scores, T5's special ids first (<pad> 0, </s> 1, <unk> 2)."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + word, -4.0) for word in _T5_WORDS]
    pieces += [("\u2581" + c, -8.0) for c in _T5_SYMBOLS]
    pieces += [(c, -9.0) for c in _T5_SYMBOLS]
    return pieces


def tiny_t5_tokenizer():
    """A T5 tokenizer (transformers' tokenizers-backed ``T5Tokenizer`` = ``T5TokenizerFast``) over
    :func:`t5_vocabulary`: appends ``</s>``, pads with ``<pad>`` (id 0), max length 512."""
    from transformers import T5Tokenizer

    return T5Tokenizer(vocab=t5_vocabulary(), extra_ids=0, model_max_length=T5_MAX_LENGTH)


def tiny_t5_config(vocab_size: int) -> dict:
    """T5Config kwargs of the tiny T5 encoder: T5-XXL's (gated-gelu, T5 v1.1) at a tiny width, dropout off."""
    from library.models.flux_keys import T5XXL_CONFIG

    return {
        **T5XXL_CONFIG,
        "vocab_size": -(-vocab_size // 64) * 64,
        "d_model": T5_D_MODEL,
        "d_kv": 16,
        "d_ff": 2 * T5_D_MODEL,
        "num_layers": 2,
        "num_decoder_layers": 2,
        "num_heads": 2,
        "dropout_rate": 0.0,
    }


def flow_match_scheduler(variant: str = "dev"):
    """FLUX.1's FlowMatchEulerDiscreteScheduler (dev: dynamic shifting; schnell: shift 1)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**_SCHEDULER_COMMON, **SCHEDULER_CONFIGS[check_variant(variant)])


def tiny_flux_components(variant: str = "dev", seed: int = 0) -> dict:
    """Build the tiny FLUX: ``transformer`` (our :class:`FluxTransformer`), ``vae``, ``text_encoder_1`` (CLIP),
    ``text_encoder_2`` (T5), ``tokenizer_1``, ``tokenizer_2``, ``scheduler``.

    Float32, eval, each module under its own seed derived from ``seed``. Latents are (B, 16, H/8, W/8), packed
    (B, H/16 * W/16, 64); CLIP gives a pooled (B, 32), T5 (B, L, 32).
    """
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    tokenizer_2 = tiny_t5_tokenizer()
    transformer = _seeded(seed * 4 + 0, lambda: FluxTransformer(tiny_flux_params(variant)))
    vae = _seeded(seed * 4 + 1, lambda: AutoencoderKL(**tiny_flux_vae_config()))
    clip = _seeded(seed * 4 + 2, lambda: CLIPTextModel(CLIPTextConfig(**tiny_clip_l_config())))
    t5 = _seeded(seed * 4 + 3, lambda: T5EncoderModel(T5Config(**tiny_t5_config(len(tokenizer_2)))))
    for module in (transformer, vae, clip, t5):
        module.eval()
    return {
        "transformer": transformer,
        "vae": vae,
        "text_encoder_1": clip,
        "text_encoder_2": t5,
        "tokenizer_1": clip_tokenizer(),
        "tokenizer_2": tokenizer_2,
        "scheduler": flow_match_scheduler(variant),
    }


def flux_pipeline(components: dict):
    """A diffusers ``FluxPipeline`` over ``components`` (the transformer converted to diffusers' layout)."""
    from diffusers import FluxPipeline

    from library.models.flux_keys import to_diffusers_transformer

    return FluxPipeline(
        scheduler=components["scheduler"],
        vae=components["vae"],
        text_encoder=components["text_encoder_1"],
        tokenizer=components["tokenizer_1"],
        text_encoder_2=components["text_encoder_2"],
        tokenizer_2=components["tokenizer_2"],
        transformer=to_diffusers_transformer(components["transformer"]),
    )


def save_flux_diffusers_folder(out_dir: str | os.PathLike, components: dict) -> Path:
    """Write ``components`` as a diffusers FluxPipeline folder (safetensors weights)."""
    out = Path(out_dir)
    flux_pipeline(components).save_pretrained(out, safe_serialization=True)
    return out


def _config_json(module) -> str:
    config = module.config
    config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    drop = ("architectures", "transformers_version", "dtype", "torch_dtype")
    return json.dumps(
        {k: v for k, v in config.items() if not k.startswith("_") and k not in drop}, default=str
    )


def save_flux_separate_files(
    out_dir: str | os.PathLike, components: dict, variant: str = "dev"
) -> dict[str, Path]:
    """Write sd-scripts' four FLUX files into ``out_dir``: {"transformer", "clip_l", "t5xxl", "ae"} -> Path."""
    import dataclasses

    from library.models.flux_keys import ae_to_file, clip_l_to_file, t5_to_file
    from library.models.single_file import write_checkpoint

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    transformer = components["transformer"]
    vae = components["vae"]
    states = {
        "transformer": (transformer.state_dict(), json.dumps(dataclasses.asdict(transformer.params))),
        "clip_l": (
            clip_l_to_file(components["text_encoder_1"].state_dict()),
            _config_json(components["text_encoder_1"]),
        ),
        "t5xxl": (
            t5_to_file(components["text_encoder_2"].state_dict()),
            _config_json(components["text_encoder_2"]),
        ),
        "ae": (ae_to_file(vae.state_dict(), vae.config), _config_json(vae)),
    }
    paths = {}
    for part, (state, config) in states.items():
        path = out / SEPARATE_FILE_NAMES[part].format(variant=check_variant(variant))
        metadata = {META_CONFIG: config}
        if part == "t5xxl":  # real t5xxl files carry no tokenizer; the tiny one's vocabulary is ours
            tokenizer = components["tokenizer_2"]
            metadata[META_TOKENIZER] = json.dumps({"tokenizer": tokenizer.backend_tokenizer.to_str(),
                                                   "model_max_length": tokenizer.model_max_length})
        paths[part] = write_checkpoint(path, state, metadata)
    return paths


def save_tiny_flux_diffusers(out_dir: str | os.PathLike, variant: str = "dev", seed: int = 0) -> Path:
    """Write the tiny FLUX as a folder loadable by ``FluxPipeline.from_pretrained``."""
    out = save_flux_diffusers_folder(out_dir, tiny_flux_components(variant, seed))
    logger.info("wrote tiny flux %s diffusers model to %s", variant, out)
    return out


def save_tiny_flux_files(out_dir: str | os.PathLike, variant: str = "dev", seed: int = 0) -> dict[str, Path]:
    """Write the tiny FLUX as sd-scripts' separate files (see :func:`save_flux_separate_files`)."""
    paths = save_flux_separate_files(out_dir, tiny_flux_components(variant, seed), variant)
    logger.info("wrote tiny flux %s separate files to %s", variant, out_dir)
    return paths


def save_tiny_flux(out_dir: str | os.PathLike, variant: str = "dev", seed: int = 0) -> dict:
    """Both layouts from one build: {"folder": Path, "files": {part: Path}} under ``out_dir``."""
    components = tiny_flux_components(variant, seed)
    root = Path(out_dir)
    folder = save_flux_diffusers_folder(root / f"flux-{variant}", components)
    files = save_flux_separate_files(root / f"flux-{variant}-files", components, variant)
    logger.info("wrote tiny flux %s to %s", variant, root)
    return {"folder": folder, "files": files}
