"""Helpers of the dataset-tool tests: solid pictures and tiny captioning models built locally."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from PIL import Image

WORDS = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "[DEC]",
    "a",
    "picture",
    "of",
    "red",
    "blue",
    "disc",
    "the",
    "with",
    "photo",
    "green",
    "on",
    "white",
]


def solid(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (32, 32)) -> Path:
    """Write a solid-colour PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path)
    return path


def _tokenizer(folder: Path):
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(WORDS) + "\n", encoding="utf-8")
    return BertTokenizer(str(vocab), bos_token="[DEC]")


def _vision(image_size: int = 32) -> dict:
    return dict(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        num_hidden_layers=1,
        image_size=image_size,
        patch_size=8,
    )


def build_tiny_blip(folder: Path) -> Path:
    """A random 1-layer BLIP captioner (32x32 pictures, an 18-word vocabulary) saved to ``folder``."""
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    tokenizer = _tokenizer(folder)
    text = dict(
        vocab_size=len(WORDS),
        hidden_size=32,
        encoder_hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        num_hidden_layers=1,
        max_position_embeddings=64,
        bos_token_id=5,
        pad_token_id=0,
        sep_token_id=3,
        eos_token_id=3,
    )
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(
        BlipConfig(text_config=text, vision_config=_vision(), projection_dim=32)
    )
    model.save_pretrained(folder)
    BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer).save_pretrained(folder)
    return folder


def build_tiny_git(folder: Path) -> Path:
    """A random 1-layer GIT captioner (32x32 pictures, an 18-word vocabulary) saved to ``folder``."""
    import torch
    from transformers import AutoModelForCausalLM, CLIPImageProcessor, GitConfig, GitProcessor

    tokenizer = _tokenizer(folder)
    config = GitConfig(
        vision_config={**_vision(), "projection_dim": 32},
        vocab_size=len(WORDS),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    GitProcessor(image_processor, tokenizer).save_pretrained(folder)
    return folder


def textured(path: Path, seed: int, size: tuple[int, int] = (96, 96)) -> Path:
    """A smooth random picture (an 8x8 random colour grid enlarged), distinct per ``seed``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    grid = Image.fromarray((rng.random((8, 8, 3)) * 255).astype("uint8"))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.resize(size, Image.Resampling.BICUBIC).save(path)
    return path


ROOT = Path(__file__).resolve().parents[2]


def load_wd14_tool(module_name: str = "wd14_tool"):
    """tools/tag_images_by_wd14_tagger.py imported as a module (its ``main(argv)`` runs in this process)."""
    spec = importlib.util.spec_from_file_location(module_name, ROOT / "tools" / "tag_images_by_wd14_tagger.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def doctor(*argv) -> int:
    """Run tools/check_dataset.py's main() in this process on ``argv``; its exit code."""
    spec = importlib.util.spec_from_file_location("check_tool", Path(__file__).resolve().parents[2] / "tools"
                                                  / "check_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main([str(a) for a in argv])
