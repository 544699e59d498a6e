"""Helpers for the SDXL model-tool tests: a perturbed tiny SDXL ("fine-tune") and LoRA files written by hand."""

from __future__ import annotations

from pathlib import Path

import torch

from library.models.sgm import save_sgm_single_file
from library.models.tiny_sdxl import tiny_sdxl_components
from library.networks import keys
from tests.tools_models.helpers import sd_scripts_lora

SDXL_PARTS = ("unet", "vae", "text_encoder_1", "text_encoder_2")
#: a UNet and a second-encoder module of the tiny SDXL, by contract name and diffusers path
UNET_NAME = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
UNET_PATH = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
OUT_NAME = "lora_unet_output_blocks_0_1_transformer_blocks_0_attn2_to_k"
TE2_NAME = "lora_te2_text_model_encoder_layers_0_self_attn_q_proj"
TE2_PATH = "text_model.encoder.layers.0.self_attn.q_proj"
TE1_NAME = "lora_te1_text_model_encoder_layers_1_mlp_fc1"


def perturbed_sdxl(path: Path, std: float = 0.05, seed: int = 0) -> Path:
    """The tiny SDXL with random changes in every UNet and text-encoder weight, as an SGM single file."""
    parts = tiny_sdxl_components(0)
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name in ("unet", "text_encoder_1", "text_encoder_2"):
            for param in parts[name].parameters():
                param.add_(torch.randn(param.shape, generator=gen) * std)
    return save_sgm_single_file(path, {p: parts[p] for p in SDXL_PARTS})


def random_lora(path: Path, model, *, rank: int = 2, alpha: float = 1.0, seed: int = 0,
                names: tuple[str, ...] | None = None) -> tuple[Path, dict]:
    """A LoRA over the trainer's targets of ``model`` (all, or only ``names``), fp32, non-zero up weights.

    Returns (path, {name: (down, up, alpha)})."""
    gen = torch.Generator().manual_seed(seed)
    modules = {}
    for part in keys.model_parts(model):
        for target in part.targets():
            if names is not None and target.lora_name not in names:
                continue
            weight = target.module.weight
            down = torch.randn(rank, weight.shape[1], generator=gen) * 0.1
            up = torch.randn(weight.shape[0], rank, generator=gen) * 0.1
            if weight.dim() == 4:
                down, up = down[:, :, None, None], up[:, :, None, None]
            modules[target.lora_name] = (down, up, alpha)
    return sd_scripts_lora(path, modules, dtype=torch.float32), modules


def delta(entry, ratio: float = 1.0) -> torch.Tensor:
    """ratio · up @ down · alpha / rank, by hand, for 2-D (Linear) modules."""
    down, up, alpha = entry
    return ratio * (up.flatten(1) @ down.flatten(1)) * (alpha / down.shape[0])
