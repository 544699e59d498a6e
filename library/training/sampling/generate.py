"""Generate sample images with the model being trained and save them as PNGs with their prompt."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from library.training.sampling.prompts import SamplePrompt
from library.training.sampling.samplers import make_sampler
from library.util.atomic import atomic_path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleSettings:
    sampler: str
    width: int
    height: int
    clip_skip: int | None
    max_token_length: int | None
    seed: int


def png_parameters(p: SamplePrompt, sampler: str, seed: int, width: int, height: int) -> str:
    """The AUTOMATIC1111-style "parameters" text that image viewers and model sites read."""
    lines = [p.prompt]
    if p.negative_prompt:
        lines.append(f"Negative prompt: {p.negative_prompt}")
    lines.append(f"Steps: {p.steps}, Sampler: {sampler}, CFG scale: {p.scale}, Seed: {seed}, Size: {width}x{height}")
    return "\n".join(lines)


def _pipeline(model, scheduler):
    pipe = model.adapter.pipeline(model, scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _conditioning(model, text: str, settings: SampleSettings):
    return model.encode_prompt([text], settings.clip_skip, settings.max_token_length).to(model.unet.dtype)


@torch.no_grad()
def generate_samples(model, prompts: list[SamplePrompt], settings: SampleSettings, out_dir: Path,
                     file_stem: str) -> list[tuple[Path, Image.Image, str]]:
    """Render each prompt and write ``out_dir/{file_stem}_{i:02d}_{time}_{seed}.png``.

    Returns (path, image, prompt) per sample. Uses its own generators: the training's random state is
    untouched, so sampling never changes what is learnt.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    stamp = time.strftime("%Y%m%d%H%M%S")
    for i, p in enumerate(prompts):
        sampler_name = p.sampler or settings.sampler
        pipe = _pipeline(model, make_sampler(sampler_name, model.noise_scheduler.config))
        seed = p.seed if p.seed is not None else settings.seed + i
        width, height = p.width or settings.width, p.height or settings.height
        inputs = model.adapter.pipeline_inputs(_conditioning(model, p.prompt, settings),
                                               _conditioning(model, p.negative_prompt, settings))
        if p.guidance is not None:
            if not getattr(pipe, "takes_guidance", False):
                from library.errors import ConfigError

                raise ConfigError(f"sample prompt {p.prompt!r}: --g (embedded guidance) is for guidance-distilled "
                                  f"models such as FLUX.1 dev, not {model.family}; use --l for the CFG scale.")
            inputs["guidance"] = p.guidance
        image = pipe(
            **inputs,
            width=width, height=height, num_inference_steps=p.steps, guidance_scale=p.scale,
            generator=torch.Generator().manual_seed(seed), output_type="pil",
        ).images[0]
        info = PngInfo()
        info.add_text("parameters", png_parameters(p, sampler_name, seed, width, height))
        info.add_text("prompt", p.prompt)
        path = out_dir / f"{file_stem}_{i:02d}_{stamp}_{seed}.png"
        with atomic_path(path) as tmp:
            image.save(tmp, format="PNG", pnginfo=info)
        results.append((path, image, p.prompt))
        logger.info("sample %s", path.name)
    return results
