"""Generate sample images with the model being trained and save them as PNGs with their prompt.

Prompts are read as the AUTOMATIC1111 webui reads them: attention weights (``(tag:1.3)``, ``[tag]``,
``BREAK``; :mod:`library.text.attention`) weight the tokens' text-encoder states, and prompt editing /
alternation (``[a:b:0.5]``, ``[a|b]``; :mod:`library.text.schedule`) switch the conditioning between steps.
A prompt's ``--am`` or the run's ``sample_lora_weights`` render it with the LoRA at each of those weights.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from library.errors import ConfigError
from library.text.schedule import prompt_schedule, schedule_index
from library.training.sampling.prompts import SamplePrompt
from library.training.sampling.samplers import make_sampler
from library.util.atomic import atomic_path

logger = logging.getLogger(__name__)

#: a diffusers pipeline's step-callback tensor -> (positive, negative) keys of ``pipeline_inputs`` it is made of
#: (negative first along the batch when the pipeline runs classifier-free guidance)
_CFG_TENSORS = {"prompt_embeds": ("prompt_embeds", "negative_prompt_embeds"),
                "add_text_embeds": ("pooled_prompt_embeds", "negative_pooled_prompt_embeds")}
_PAIRED = {key for pair in _CFG_TENSORS.values() for key in pair}


@dataclass(frozen=True)
class SampleSettings:
    sampler: str
    width: int
    height: int
    clip_skip: int | None
    max_token_length: int | None
    seed: int
    #: ``sample_lora_weights``: the LoRA weights each prompt is rendered at (None: as trained)
    lora_weights: tuple[float, ...] | None = None


def png_parameters(p: SamplePrompt, sampler: str, seed: int, width: int, height: int,
                   lora_weight: float | None = None) -> str:
    """The AUTOMATIC1111-style "parameters" text that image viewers and model sites read."""
    lines = [p.prompt]
    if p.negative_prompt:
        lines.append(f"Negative prompt: {p.negative_prompt}")
    line = f"Steps: {p.steps}, Sampler: {sampler}, CFG scale: {p.scale}, Seed: {seed}, Size: {width}x{height}"
    lines.append(line if lora_weight is None else f"{line}, Lora weight: {lora_weight:g}")
    return "\n".join(lines)


def sample_file_name(file_stem: str, index: int, stamp: str, seed: int, lora_weight: float | None) -> str:
    """``{stem}_{index:02d}_{stamp}_{seed}.png``; rendered at a requested LoRA weight, ``…_am{weight}.png``
    (``_am0.6``, ``_am1``, ``_am-0.5``): the renders of one prompt differ only in that suffix."""
    suffix = "" if lora_weight is None else f"_am{lora_weight:g}"
    return f"{file_stem}_{index:02d}_{stamp}_{seed}{suffix}.png"


def _pipeline(model, scheduler):
    pipe = model.adapter.pipeline(model, scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _conditioning(model, text: str, settings: SampleSettings):
    """The weighted conditioning of one prompt text (the webui's attention syntax)."""
    return model.encode_prompt([text], settings.clip_skip, settings.max_token_length,
                               weighted=True).to(model.adapter.compute_dtype(model.unet))


def scheduled_conditionings(model, text: str, steps: int, settings: SampleSettings, cache: dict) -> list:
    """[(end_at_step, Conditioning), …] of a prompt's schedule (one entry without prompt editing); each text
    encoded once per render (``cache``: text -> Conditioning)."""
    schedule = []
    for end, part in prompt_schedule(text, steps):
        if part not in cache:
            cache[part] = _conditioning(model, part, settings)
        schedule.append((end, cache[part]))
    return schedule


def _step_tensors(pipe, inputs: dict, like: dict) -> dict:
    """The step-callback tensors (``prompt_embeds`` …) that stand for ``inputs`` (:meth:`pipeline_inputs`), in
    the pipeline's layout (negative and positive stacked under classifier-free guidance) and on the devices
    and dtypes of the tensors they replace (``like``)."""
    out = {}
    for name in like:
        if name in _CFG_TENSORS:
            positive, negative = (inputs[key] for key in _CFG_TENSORS[name])
            out[name] = torch.cat([negative, positive]) if pipe.do_classifier_free_guidance else positive
        else:
            out[name] = inputs[name]
        if isinstance(like[name], torch.Tensor):
            out[name] = out[name].to(like[name].device, like[name].dtype)
    return out


def _switching_callback(model, positive: list, negative: list, steps: int):
    """A diffusers ``callback_on_step_end`` that hands the next step the conditioning its schedule entry holds
    (the webui's ``reconstruct_cond_batch``: step s, counted from 0, takes the first entry ending at or after
    s). A sampler that evaluates the model more than once per step (Heun, DPM2) maps its iterations onto the
    ``steps`` proportionally."""
    current = [(0, 0)]

    def callback(pipe, i, t, tensors):
        timesteps = getattr(getattr(pipe, "scheduler", None), "timesteps", None)
        iterations = len(timesteps) if timesteps is not None else steps
        step = (i + 1) * steps // max(iterations, 1)
        chosen = (schedule_index(positive, step), schedule_index(negative, step))
        if chosen == current[0]:
            return {}
        current[0] = chosen
        inputs = model.adapter.pipeline_inputs(positive[chosen[0]][1], negative[chosen[1]][1])
        return _step_tensors(pipe, inputs, tensors)

    return callback


def _callback_names(pipe, inputs: dict) -> list[str]:
    names = getattr(pipe, "_callback_tensor_inputs", ())
    return [n for n in names if (n in _CFG_TENSORS and _CFG_TENSORS[n][0] in inputs)
            or (n in inputs and n not in _PAIRED)]


def render_prompt(model, p: SamplePrompt, settings: SampleSettings, seed: int, width: int, height: int,
                  sampler_name: str) -> Image.Image:
    """One sample image of ``p`` (weighted, its prompt schedule applied per step) with the model as it is now."""
    pipe = _pipeline(model, make_sampler(sampler_name, model.noise_scheduler.config))
    cache: dict = {}
    positive = scheduled_conditionings(model, p.prompt, p.steps, settings, cache)
    negative = scheduled_conditionings(model, p.negative_prompt, p.steps, settings, cache)
    inputs = model.adapter.pipeline_inputs(positive[0][1], negative[0][1])
    if len(positive) > 1 or len(negative) > 1:
        names = _callback_names(pipe, inputs)
        if not names:
            raise ConfigError(f"sample prompt {p.prompt!r}: prompt editing ([a:b:0.5]) and alternation ([a|b]) are "
                              f"not supported by the {model.family} sampler; write the prompt without them.")
        inputs["callback_on_step_end"] = _switching_callback(model, positive, negative, p.steps)
        inputs["callback_on_step_end_tensor_inputs"] = names
    if p.guidance is not None:
        if not getattr(pipe, "takes_guidance", False):
            raise ConfigError(f"sample prompt {p.prompt!r}: --g (embedded guidance) is for guidance-distilled "
                              f"models such as FLUX.1 dev, not {model.family}; use --l for the CFG scale.")
        inputs["guidance"] = p.guidance
    return pipe(
        **inputs,
        width=width, height=height, num_inference_steps=p.steps, guidance_scale=p.scale,
        generator=torch.Generator().manual_seed(seed), output_type="pil",
    ).images[0]


@torch.no_grad()
def generate_samples(model, prompts: list[SamplePrompt], settings: SampleSettings, out_dir: Path,
                     file_stem: str, target=None) -> list[tuple[Path, Image.Image, str]]:
    """Render each prompt and write ``out_dir/{file_stem}_{i:02d}_{time}_{seed}.png`` (see
    :func:`sample_file_name`; ``_am{weight}`` added for a requested LoRA weight).

    Returns (path, image, prompt) per sample. Uses its own generators: the training's random state is
    untouched, so sampling never changes what is learnt. ``target``: what is trained, whose
    ``network_multiplier`` a prompt's ``--am`` / ``settings.lora_weights`` set for a render and restore after.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    stamp = time.strftime("%Y%m%d%H%M%S")
    trained = None if target is None else target.network_multiplier()
    for i, p in enumerate(prompts):
        sampler_name = p.sampler or settings.sampler
        seed = p.seed if p.seed is not None else settings.seed + i
        width, height = p.width or settings.width, p.height or settings.height
        weights = p.lora_weights or settings.lora_weights
        if weights and trained is None:
            raise ConfigError(f"sample prompt {p.prompt!r}: --am / sample_lora_weights set the weight of a trained "
                              f"LoRA, and this run trains none (train_network.py does). Remove them.")
        for weight in weights or (None,):
            try:
                if weight is not None:
                    target.set_network_multiplier(weight)
                image = render_prompt(model, p, settings, seed, width, height, sampler_name)
            finally:
                if weight is not None:
                    target.set_network_multiplier(trained)
            info = PngInfo()
            info.add_text("parameters", png_parameters(p, sampler_name, seed, width, height, weight))
            info.add_text("prompt", p.prompt)
            if weight is not None:
                info.add_text("lora_weight", f"{weight:g}")
            path = out_dir / sample_file_name(file_stem, i, stamp, seed, weight)
            with atomic_path(path) as tmp:
                image.save(tmp, format="PNG", pnginfo=info)
            results.append((path, image, p.prompt))
            logger.info("sample %s", path.name)
    return results
