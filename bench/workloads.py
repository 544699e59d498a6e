"""What the benchmark trains on: an SD1.5-sized single file with random weights (built once and cached), a
folder of pictures, and the TOML configs of each row."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import toml

REPO = Path(__file__).resolve().parents[1]


def cache_root() -> Path:
    """``$SDTRAIN_BENCH_CACHE``, else ``<tmp>/sdtrain-bench`` (the model file is ~2 GB; kept between runs)."""
    root = Path(os.environ.get("SDTRAIN_BENCH_CACHE") or Path(tempfile.gettempdir()) / "sdtrain-bench")
    root.mkdir(parents=True, exist_ok=True)
    return root


def sd15_unet_config() -> dict:
    """SD1.5's UNet: channels 320/640/1280/1280, 2 layers per block, cross-attention width 768, 8 heads."""
    return {"sample_size": 64, "cross_attention_dim": 768, "attention_head_dim": 8}


def sd15_vae_config() -> dict:
    """The SD VAE: channels 128/256/512/512, 2 layers per block, 4 latent channels."""
    return {"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "latent_channels": 4,
            "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
            "sample_size": 512}


def sd15_model(root: Path) -> Path:
    """An SD1.5-architecture single file (UNet 860M, CLIP ViT-L/14 text encoder, the SD VAE) with seeded random
    weights, saved in fp16 as most shared SD1.5 checkpoints are (about 2 GB)."""
    path = root / "sd15_random_fp16.safetensors"
    if path.is_file():
        return path
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from library.models.single_file import save_single_file

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**sd15_unet_config())
    vae = AutoencoderKL(**sd15_vae_config())
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                num_attention_heads=12, projection_dim=768,
                                                hidden_act="quick_gelu"))
    return save_single_file(path, unet, vae, text_encoder, "sd1", dtype=torch.float16)


def pictures(root: Path, count: int, size: int = 512) -> Path:
    """``count`` JPEG pictures of ``size`` px (smooth random colour fields, so they compress like photos) with
    captions, in a kohya-style ``1_bench`` folder; returns the train_data_dir."""
    train = root / f"pictures_{count}x{size}"
    folder = train / "1_bench"
    if folder.is_dir() and len(list(folder.glob("*.jpg"))) == count:
        return train
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((size, size), Image.BICUBIC).save(folder / f"{i:03d}.jpg", quality=90)
        (folder / f"{i:03d}.txt").write_text(f"bench, picture {i}, colour field", encoding="utf-8")
    return train


def lora_config(model: str, train_dir: Path, out: Path, steps: int, resolution: int, **extra) -> dict:
    """A LoRA run as the floor compares with: UNet LoRA dim 16, AdamW, batch 1, latents and text-encoder
    outputs cached (the floor is the UNet alone), fp32."""
    return {
        "pretrained_model_name_or_path": model, "train_data_dir": str(train_dir), "output_dir": str(out),
        "output_name": "bench", "resolution": str(resolution), "train_batch_size": 1,
        "max_train_steps": steps, "network_module": "networks.lora", "network_dim": 16, "network_alpha": 16,
        "network_train_unet_only": True, "cache_text_encoder_outputs": True, "cache_latents": True,
        "optimizer_type": "AdamW", "learning_rate": 1e-4, "lr_scheduler": "constant", "seed": 1,
        "mixed_precision": "no", "save_precision": "float", "max_data_loader_n_workers": 0, **extra,
    }


def db_config(model: str, train_dir: Path, out: Path, steps: int, resolution: int, **extra) -> dict:
    """A DreamBooth run: the UNet fully trained (text encoder frozen and its outputs cached), batch 1, fp32."""
    return {
        "pretrained_model_name_or_path": model, "train_data_dir": str(train_dir), "output_dir": str(out),
        "output_name": "bench", "resolution": str(resolution), "train_batch_size": 1,
        "max_train_steps": steps, "train_text_encoder": False, "cache_text_encoder_outputs": True,
        "cache_latents": True, "optimizer_type": "AdamW", "learning_rate": 1e-6, "lr_scheduler": "constant",
        "seed": 1, "mixed_precision": "no", "save_precision": "fp16", "max_data_loader_n_workers": 0, **extra,
    }


def write_config(path: Path, options: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(toml.dumps(options), encoding="utf-8")
    return path
