"""Qwen3-VL (``Qwen3VLForConditionalGeneration``) through its processor's chat template."""

from __future__ import annotations

from library.tools.dataset.vlm.base import VlmSettings, register
from library.tools.dataset.vlm.hf import ChatTemplateBackend, chat_template_backend, image_only

DEFAULT_MODEL = "Qwen/Qwen3-VL-8B-Instruct"


@register("qwen3-vl", "transformers", "Qwen3-VL instruct models", DEFAULT_MODEL)
def load_qwen3_vl(settings: VlmSettings) -> ChatTemplateBackend:
    from transformers import Qwen3VLForConditionalGeneration, Qwen3VLProcessor

    return chat_template_backend("Qwen3-VL", settings, DEFAULT_MODEL, Qwen3VLForConditionalGeneration,
                                 image_only(Qwen3VLProcessor))
