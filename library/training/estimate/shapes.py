"""Full-size models made of meta tensors, for estimates of configs whose weights are not at hand.

Only shapes and dtypes matter to the estimate (:func:`library.training.estimate.estimate_run` with
``model=``); the modules are built on the meta device from the families' real configs, in no time and no
memory. The tokenizers are the built-in ones: token ids are never looked up, only the sequence lengths count.
"""

from __future__ import annotations

import torch

from library.models.base_model import BaseModel


def flux_dev_shapes(variant: str = "dev") -> BaseModel:
    """FLUX.1 dev (or schnell): the 11.9B transformer, CLIP-L, T5-XXL and the 16-channel autoencoder."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from library.models.family import get_model_family
    from library.models.flux import AE_CONFIG, CLIP_L_CONFIG, T5_XXL_CONFIG, TE_CLIP, TE_T5
    from library.models.flux_model import FLUX_PRESETS, FluxTransformer
    from library.models.tiny_flux import tiny_t5_tokenizer
    from library.models.tokenizer import clip_tokenizer

    with torch.device("meta"):
        parts = {
            "unet": FluxTransformer(FLUX_PRESETS[variant]),
            "vae": AutoencoderKL(**AE_CONFIG),
            TE_CLIP: CLIPTextModel(CLIPTextConfig(**CLIP_L_CONFIG)),
            TE_T5: T5EncoderModel(T5Config(**T5_XXL_CONFIG)),
        }
    for module in parts.values():
        module.eval()
    return BaseModel(family="flux", parts=parts, tokenizers={TE_CLIP: clip_tokenizer(), TE_T5: tiny_t5_tokenizer()},
                     noise_scheduler=get_model_family("flux").noise_scheduler(False), v_parameterization=False,
                     name=f"flux1-{variant} (shapes only)")
