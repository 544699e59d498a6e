"""Florence-2 (transformers' native ``Florence2ForConditionalGeneration``): a task token instead of a prompt."""

from __future__ import annotations

from typing import Any

from PIL import Image

from library.tools.dataset.vlm.base import VlmSettings, register
from library.tools.dataset.vlm.hf import generate_kwargs, load_pretrained, resolve_device, resolve_dtype

#: the caption tasks of ``--task`` (Florence-2's other tasks return boxes or regions, not captions)
FLORENCE_TASKS = ("<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>")
DEFAULT_MODEL = "florence-community/Florence-2-large"


def normalise_task(task: str) -> str | None:
    """``"detailed_caption"`` or ``"<DETAILED_CAPTION>"`` -> ``"<DETAILED_CAPTION>"``; None when not a caption task."""
    token = f"<{task.strip().strip('<>').upper()}>"
    return token if token in FLORENCE_TASKS else None


class Florence2Backend:
    fixed_prompt = True

    def __init__(self, model: Any, processor: Any, settings: VlmSettings):
        self.device = resolve_device(settings.device)
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.settings = settings
        self.task = normalise_task(settings.task) or "<DETAILED_CAPTION>"

    def caption(self, images: list[Image.Image], prompt: str) -> list[str | Exception]:
        import torch

        inputs = self.processor(
            text=[self.task] * len(images), images=images, return_tensors="pt", padding=True
        )
        inputs = inputs.to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        with torch.inference_mode():
            ids = self.model.generate(**inputs, **generate_kwargs(self.settings))
        return [t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True)]


@register("florence2", "transformers", "Microsoft Florence-2 caption tasks", DEFAULT_MODEL)
def load_florence2(settings: VlmSettings) -> Florence2Backend:
    from transformers import Florence2ForConditionalGeneration, Florence2Processor

    dtype = resolve_dtype(settings.dtype, resolve_device(settings.device))
    model, processor = load_pretrained(
        "Florence-2",
        settings,
        DEFAULT_MODEL,
        lambda p, kw: (
            Florence2ForConditionalGeneration.from_pretrained(p, dtype=dtype, **kw),
            Florence2Processor.from_pretrained(p, **kw),
        ),
    )
    return Florence2Backend(model, processor, settings)
