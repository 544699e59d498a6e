"""The SD1 and SD2 families: one CLIP text encoder, a UNet called as ``unet(noisy, t, hidden)``.

Their static facts (padding token, text layout, attention heads …) are the :class:`FamilySpec` entries of
``families.py``; this module gives them the :class:`ModelFamily` hooks.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from library.models import clip_text
from library.models.families import FAMILIES, FamilySpec
from library.models.family import UNET_VAE_CLIP_CODE, BlockLayout, Conditioning, ModelFamily, register_family
from library.models.tokenizer import clip_tokenizer
from library.text.weighting import apply_token_weights, clip_weighted_rows
from library.training.objective import DDPMObjective

logger = logging.getLogger(__name__)

TEXT_PART = "text_encoder"
SD_BLOCK_NAMES = tuple([f"IN{i:02d}" for i in range(12)] + ["M00"] + [f"OUT{i:02d}" for i in range(12)])


def _sd_block_layout() -> BlockLayout:
    from library.networks import blocks

    return BlockLayout(SD_BLOCK_NAMES, blocks.NUM_BLOCKS, blocks.block_index)


class SDFamily(ModelFamily):
    """SD 1.x (``sd1``) or SD 2.x (``sd2``), told apart by the text encoder (CLIP ViT-L vs OpenCLIP ViT-H)."""

    text_parts = (TEXT_PART,)
    lora_prefixes = {TEXT_PART: "lora_te", "unet": "lora_unet"}
    latent_cache_suffix = "sd"
    lora_unet_markers = ("down_blocks_", "mid_block_", "up_blocks_")
    accepted_options = DDPMObjective.OPTIONS | {"clip_skip", "max_token_length"}
    embedding_keys = {TEXT_PART: "emb_params"}
    single_file_imports = UNET_VAE_CLIP_CODE

    def __init__(self, spec: FamilySpec, description: str, default_resolution: int):
        self.spec = spec
        self.name = spec.name
        self.base_model_version = spec.base_model_version
        self.v2 = spec.te_layout == "open_clip"
        self.description = description
        self.default_resolution = default_resolution
        self.default_prediction_type = spec.default_prediction_type

    # --- detection and loading ---
    def detects_diffusers(self, info: dict) -> bool:
        if info.get("has_text_encoder_2"):
            return False
        return info.get("text_hidden_act", "quick_gelu") == self.spec.text_hidden_act

    def detects_single_file(self, state_dict) -> bool:
        from library.models.ldm_convert import detect_family

        if any(k.startswith("conditioner.embedders.") for k in state_dict):
            return False
        # an LDM UNet (input_blocks), not any model.diffusion_model.* file: ComfyUI saves FLUX with that prefix too
        return (any(k.startswith("model.diffusion_model.input_blocks.") for k in state_dict)
                and detect_family(state_dict) == self.name)

    def load_diffusers(self, source: str, local: bool) -> dict:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        kwargs = {"local_files_only": local, "torch_dtype": torch.float32}
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", **kwargs)
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", **kwargs)
        text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **kwargs)
        try:
            tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", local_files_only=local)
        except (OSError, ValueError, TypeError):
            logger.info("%s has no usable tokenizer/ folder; using the built-in CLIP tokenizer", source)
            tokenizer = clip_tokenizer(self.spec.pad_token)
        return {"unet": unet, "vae": vae, TEXT_PART: text_encoder, "tokenizers": {TEXT_PART: tokenizer}}

    def load_single_file(self, state_dict: dict, metadata: dict | None, source: str,
                         components: dict | None = None) -> dict:
        from library.models.single_file import modules_from_single_file

        modules, _ = modules_from_single_file(state_dict, metadata, source=source)
        return {**modules, "tokenizers": {TEXT_PART: clip_tokenizer(self.spec.pad_token)}}

    # --- text ---
    def tokenize(self, model, captions, max_token_length, pad=True) -> dict[str, torch.Tensor]:
        return {TEXT_PART: clip_text.tokenize_chunks(model.tokenizers[TEXT_PART], captions, max_token_length, pad)}

    def encode(self, model, tokens, clip_skip, weights=None) -> Conditioning:
        states = clip_text.encode_last_layers(model.parts[TEXT_PART], tokens[TEXT_PART], clip_skip)
        return Conditioning(apply_token_weights(states, (weights or {}).get(TEXT_PART), clip_text.WINDOW))

    def tokenize_weighted(self, model, captions, max_token_length):
        ids, weights = clip_weighted_rows(model.tokenizers[TEXT_PART], captions, max_token_length)
        return {TEXT_PART: ids}, {TEXT_PART: weights}

    # --- the denoiser ---
    def predict(self, model, noisy, timesteps, cond, batch) -> torch.Tensor:
        unet = model.unet
        dtype = self.compute_dtype(unet)
        return unet(noisy.to(dtype), timesteps, cond.hidden.to(dtype)).sample

    # --- sampling and saving ---
    def pipeline_inputs(self, positive: Conditioning, negative: Conditioning) -> dict:
        return {"prompt_embeds": positive.hidden, "negative_prompt_embeds": negative.hidden}

    def diffusers_pipeline(self, modules: dict, tokenizers: dict, scheduler):
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(
            vae=modules["vae"], text_encoder=modules[TEXT_PART], tokenizer=tokenizers[TEXT_PART],
            unet=modules["unet"], scheduler=scheduler, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )

    def save_single_file(self, model, path, dtype, metadata) -> Path:
        from library.models.single_file import save_single_file

        return save_single_file(path, model.unet, model.vae, model.parts[TEXT_PART], self.name, dtype=dtype,
                                extra_metadata=metadata)

    # --- metadata and layout ---
    def architecture(self, v_prediction: bool, model=None) -> str:
        from library.networks.metadata import base_architecture

        return base_architecture(self.v2, v_prediction)

    @property
    def block_layout(self) -> BlockLayout:
        return _sd_block_layout()


SD1 = register_family(SDFamily(FAMILIES["sd1"], "Stable Diffusion 1.x", 512))
SD2 = register_family(SDFamily(FAMILIES["sd2"], "Stable Diffusion 2.x (OpenCLIP text encoder)", 512))

