"""Helpers for the FLUX.1 model-tool tests, written without the code under test: LoRA names from the files'
own keys (sd-scripts' rule: ``lora_unet_`` / ``lora_te1_`` / ``lora_te3_`` + key minus ``.weight``, "." -> "_"),
random LoRAs over them, a hand-made miniature BFL transformer file, a perturbed ("fine-tuned") transformer."""

from __future__ import annotations

import re
from pathlib import Path

import safetensors.torch
import torch
from safetensors import safe_open

from tests.tools_models.helpers import sd_scripts_lora

#: the tiny FLUX's width (hidden size): q, k, v of a fused qkv are ``HIDDEN`` rows each
HIDDEN = 64
BLOCK_WEIGHT = re.compile(r"(double|single)_blocks\.\d+\..*\.weight$")


def read(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def trainer_names(transformer_file) -> dict[str, str]:
    """{LoRA name: key} for every 2-D weight inside a double or single block (what sd-scripts' lora_flux and
    flux_extract_lora.py adapt)."""
    tensors, _ = read(transformer_file)
    return {
        "lora_unet_" + k.removesuffix(".weight").replace(".", "_"): k
        for k, v in tensors.items()
        if BLOCK_WEIGHT.match(k) and v.dim() == 2
    }


def text_names(file, prefix: str, pattern: str) -> dict[str, str]:
    """{LoRA name: key} for the 2-D weights of a text-encoder file whose key matches ``pattern``."""
    tensors, _ = read(file)
    return {
        f"{prefix}_" + k.removesuffix(".weight").replace(".", "_"): k
        for k, v in tensors.items()
        if re.search(pattern, k) and v.dim() == 2
    }


def random_modules(
    shapes: dict[str, tuple[int, int]], *, rank: int = 2, alpha: float = 1.0, seed: int = 0, std: float = 0.1
) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """{name: (down (rank, in), up (out, rank), alpha)} for {name: (out, in)}, fp32, non-zero."""
    gen = torch.Generator().manual_seed(seed)
    return {
        name: (
            torch.randn(rank, inp, generator=gen) * std,
            torch.randn(out, rank, generator=gen) * std,
            alpha,
        )
        for name, (out, inp) in shapes.items()
    }


def shapes_of(file, names: dict[str, str]) -> dict[str, tuple[int, int]]:
    tensors, _ = read(file)
    return {name: tuple(tensors[key].shape) for name, key in names.items()}


def write_lora(path: Path, modules: dict, *, metadata: dict | None = None, dtype=torch.float32) -> Path:
    meta = {
        "ss_base_model_version": "flux1",
        "ss_network_module": "networks.lora_flux",
        "modelspec.architecture": "flux-1-dev/lora",
        "ss_network_dim": "2",
        "ss_network_alpha": "1",
    }
    meta.update(metadata or {})
    return sd_scripts_lora(path, modules, dtype=dtype, metadata=meta)


def delta(entry, ratio: float = 1.0) -> torch.Tensor:
    """ratio · up @ down · alpha / rank, by hand."""
    down, up, alpha = entry
    return ratio * (up.float() @ down.float()) * (alpha / down.shape[0])


def mini_transformer_file(
    path: Path, *, hidden: int = 4, dtype=torch.bfloat16, prefix: str = "", seed: int = 0
) -> Path:
    """A miniature file in BFL's transformer layout (one double and one single block, a few keys): fused qkv
    (3·hidden, hidden) and a single block's linear1 (3·hidden + 4·hidden, hidden) in ``dtype``, biases and norm
    scales in float32, with metadata. Enough for the key-by-key tools; not a loadable model."""
    gen = torch.Generator().manual_seed(seed)
    h = hidden
    shapes = {
        "double_blocks.0.img_attn.qkv.weight": (3 * h, h),
        "double_blocks.0.img_attn.qkv.bias": (3 * h,),
        "double_blocks.0.img_attn.proj.weight": (h, h),
        "double_blocks.0.img_attn.norm.query_norm.scale": (h // 2,),
        "double_blocks.0.txt_attn.qkv.weight": (3 * h, h),
        "single_blocks.0.linear1.weight": (7 * h, h),
        "single_blocks.0.linear1.bias": (7 * h,),
        "single_blocks.0.linear2.weight": (h, 5 * h),
        "img_in.weight": (h, 16),
    }
    tensors = {}
    for key, shape in shapes.items():
        value = torch.randn(shape, generator=gen)
        tensors[prefix + key] = value.to(dtype) if key.endswith(".weight") else value
    safetensors.torch.save_file(
        tensors, str(path), metadata={"note": "mini", "modelspec.architecture": "flux-1-dev"}
    )
    return path


def perturbed_transformer(base_file, path: Path, *, std: float = 0.02, seed: int = 1) -> Path:
    """The transformer file with random changes in every floating tensor (a "fine-tune"), same metadata."""
    tensors, metadata = read(base_file)
    gen = torch.Generator().manual_seed(seed)
    tuned = {k: v + torch.randn(v.shape, generator=gen) * std for k, v in tensors.items()}
    safetensors.torch.save_file(tuned, str(path), metadata=metadata)
    return path
