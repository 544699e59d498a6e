"""The SDXL family (SDXL 1.0 and its derivatives: Pony, Illustrious, NoobAI incl. v-prediction).

Two text encoders: CLIP ViT-L (``text_encoder_1``) and OpenCLIP ViT-bigG with projection
(``text_encoder_2``); the UNet takes both encoders' penultimate states concatenated, the second's pooled
projection and six size/crop numbers per sample (``time_ids``: original h, w, crop top, left, target h, w).
Single files are in Stability's SGM layout (``conditioner.embedders.0/1``); LoRA keys name the UNet by its
SGM module paths (``lora_unet_input_blocks_4_1_…``) and the encoders ``lora_te1_`` / ``lora_te2_``, as
sd-scripts writes them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from library.models import clip_text
from library.models.family import UNET_VAE_CLIP_CODE, BlockLayout, Conditioning, ModelFamily, register_family
from library.models.tokenizer import EOS_TOKEN, clip_tokenizer
from library.text.weighting import apply_token_weights, clip_weighted_rows
from library.training.objective import DDPMObjective

logger = logging.getLogger(__name__)

TE1, TE2 = "text_encoder_1", "text_encoder_2"
#: diffusers' own folder names of the parts (the pipeline's attribute names)
DIFFUSERS_NAMES = {TE1: ("text_encoder", "tokenizer"), TE2: ("text_encoder_2", "tokenizer_2")}
PAD_TOKENS = {TE1: EOS_TOKEN, TE2: "!"}

#: sd-scripts' 23 SDXL blocks: 0 time/label embedding, 1-9 input blocks, 10-12 middle, 13-21 output, 22 out
SDXL_BLOCK_NAMES = tuple(["BASE", *(f"IN{i:02d}" for i in range(9)), *(f"M{i:02d}" for i in range(3)),
                          *(f"OUT{i:02d}" for i in range(9)), "OUT"])
_BLOCK_STARTS = (("input_blocks_", 1), ("middle_block_", 10), ("output_blocks_", 13))


def sdxl_block_index(lora_name: str) -> int | None:
    """The 0-22 block of an SDXL UNet module's LoRA name (sd-scripts' ``get_block_index`` for SDXL)."""
    name = lora_name.removeprefix("lora_unet_")
    if name.startswith(("time_embed_", "label_emb_")):
        return 0
    for start, offset in _BLOCK_STARTS:
        if name.startswith(start):
            return offset + int(name[len(start):].split("_")[0])
    if name.startswith("out_"):
        return 22
    return None


def size_time_ids(batch: dict, device, dtype) -> torch.Tensor:
    """SDXL's ``time_ids`` (B, 6): original (h, w), crop (top, left), target (h, w) per sample, as diffusers'
    ``compute_time_ids`` and sd-scripts build them from the batch's ``original_sizes_hw``,
    ``crop_top_lefts`` and ``target_sizes_hw``."""
    rows = [(*o, *c, *t) for o, c, t in zip(batch["original_sizes_hw"], batch["crop_top_lefts"],
                                            batch["target_sizes_hw"], strict=True)]
    return torch.tensor(rows, dtype=dtype, device=device)


class SDXLFamily(ModelFamily):
    name = "sdxl"
    kohya_sdxl_checkbox = True
    description = "Stable Diffusion XL (two text encoders, size conditioning)"
    text_parts = (TE1, TE2)
    lora_prefixes = {TE1: "lora_te1", TE2: "lora_te2", "unet": "lora_unet"}
    base_model_version = "sdxl_base_v1-0"
    default_resolution = 1024
    default_max_bucket_reso = 2048  # room for SDXL's 832x1216-style buckets at 1024 (kohya_ss' SDXL presets)
    latent_cache_suffix = "sdxl"
    v2 = False
    trains_text_encoder_by_default = False  # sd-scripts' sdxl_train.py: --train_text_encoder to train them
    single_file_imports = UNET_VAE_CLIP_CODE
    lora_unet_markers = ("input_blocks_", "middle_block_", "output_blocks_")
    accepted_options = DDPMObjective.OPTIONS | {"clip_skip", "max_token_length"}
    embedding_keys = {TE1: "clip_l", TE2: "clip_g"}

    # --- detection and loading ---
    def detects_diffusers(self, info: dict) -> bool:
        return bool(info.get("has_text_encoder_2")) and info.get("has_unet", True)

    def detects_single_file(self, state_dict) -> bool:
        return any(k.startswith("conditioner.embedders.") for k in state_dict)

    def load_diffusers(self, source: str, local: bool) -> dict:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        kwargs = {"local_files_only": local, "torch_dtype": torch.float32}
        parts = {
            "unet": UNet2DConditionModel.from_pretrained(source, subfolder="unet", **kwargs),
            "vae": AutoencoderKL.from_pretrained(source, subfolder="vae", **kwargs),
            TE1: CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **kwargs),
            TE2: CLIPTextModelWithProjection.from_pretrained(source, subfolder="text_encoder_2", **kwargs),
        }
        tokenizers = {}
        for part, (_, folder) in DIFFUSERS_NAMES.items():
            try:
                tokenizers[part] = CLIPTokenizer.from_pretrained(source, subfolder=folder, local_files_only=local)
            except (OSError, ValueError, TypeError):
                logger.info("%s has no usable %s/ folder; using the built-in CLIP tokenizer", source, folder)
                tokenizers[part] = clip_tokenizer(PAD_TOKENS[part])
        return {**parts, "tokenizers": tokenizers}

    def load_single_file(self, state_dict: dict, metadata: dict | None, source: str,
                         components: dict | None = None) -> dict:
        from library.models.sgm import modules_from_sgm_single_file

        modules, _ = modules_from_sgm_single_file(state_dict, metadata, source)
        return {**modules, "tokenizers": {part: clip_tokenizer(PAD_TOKENS[part]) for part in self.text_parts}}

    def unet_key_path(self, unet):
        from library.models.ldm_keys import unet_prefix_table

        table = unet_prefix_table(dict(unet.config))
        return lambda path: sgm_module_path(path, table)

    # --- text ---
    def tokenize(self, model, captions, max_token_length, pad=True) -> dict[str, torch.Tensor]:
        return {part: clip_text.tokenize_chunks(model.tokenizers[part], captions, max_token_length, pad)
                for part in self.text_parts}

    def tokenize_weighted(self, model, captions, max_token_length):
        rows = {part: clip_weighted_rows(model.tokenizers[part], captions, max_token_length)
                for part in self.text_parts}
        return {part: ids for part, (ids, _) in rows.items()}, {part: w for part, (_, w) in rows.items()}

    def encode(self, model, tokens, clip_skip, weights=None) -> Conditioning:
        if clip_skip not in (None, 1, 2) and not model.extras.get("clip_skip_warned"):
            logger.warning("clip_skip=%s has no effect on SDXL: both encoders' penultimate layers are used, "
                           "as SDXL was trained (sd-scripts ignores it too)", clip_skip)
            model.extras["clip_skip_warned"] = True
        weights = weights or {}
        hidden1, _ = clip_text.encode_penultimate(model.parts[TE1], tokens[TE1])
        hidden2, pooled = clip_text.encode_penultimate(model.parts[TE2], tokens[TE2], with_pooled=True)
        # each encoder's states weighted on their own (the webui's two embedders); the pooled output is not
        hidden1 = apply_token_weights(hidden1, weights.get(TE1), clip_text.WINDOW)
        hidden2 = apply_token_weights(hidden2, weights.get(TE2), clip_text.WINDOW)
        return Conditioning(torch.cat([hidden1, hidden2.to(hidden1.dtype)], dim=-1), pooled)

    # --- the denoiser ---
    def predict(self, model, noisy, timesteps, cond, batch) -> torch.Tensor:
        unet = model.unet
        dtype = self.compute_dtype(unet)
        added = {"text_embeds": cond.pooled.to(dtype), "time_ids": size_time_ids(batch, noisy.device, dtype)}
        return unet(noisy.to(dtype), timesteps, cond.hidden.to(dtype), added_cond_kwargs=added).sample

    # --- sampling and saving ---
    def pipeline_inputs(self, positive: Conditioning, negative: Conditioning) -> dict:
        return {"prompt_embeds": positive.hidden, "pooled_prompt_embeds": positive.pooled,
                "negative_prompt_embeds": negative.hidden, "negative_pooled_prompt_embeds": negative.pooled}

    def diffusers_pipeline(self, modules: dict, tokenizers: dict, scheduler):
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(
            vae=modules["vae"], text_encoder=modules[TE1], text_encoder_2=modules[TE2],
            tokenizer=tokenizers[TE1], tokenizer_2=tokenizers[TE2], unet=modules["unet"], scheduler=scheduler,
            add_watermarker=False,  # samples and saved folders carry no invisible watermark
        )

    def save_single_file(self, model, path, dtype, metadata) -> Path:
        from library.models.sgm import save_sgm_single_file

        return save_sgm_single_file(path, model.parts, dtype=dtype, extra_metadata=metadata)

    # --- metadata and layout ---
    def architecture(self, v_prediction: bool, model=None) -> str:
        from library.networks.metadata import ARCH_SD_XL_V1_BASE

        return ARCH_SD_XL_V1_BASE

    @property
    def block_layout(self) -> BlockLayout:
        return BlockLayout(SDXL_BLOCK_NAMES, 9, sdxl_block_index, mid_count=3, leading=1)


def sgm_module_path(path: str, table: dict[str, str]) -> str:
    """A diffusers UNet module path in SGM naming (``down_blocks.1.attentions.0.proj_in`` ->
    ``input_blocks.4.1.proj_in``) by the longest mapped prefix; unmapped paths are kept."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in table:
            rest = ".".join(parts[cut:])
            return f"{table[prefix]}.{rest}" if rest else table[prefix]
    return path


SDXL = register_family(SDXLFamily())
