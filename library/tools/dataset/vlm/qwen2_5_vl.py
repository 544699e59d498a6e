"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``) through its processor's chat template."""

from __future__ import annotations

from library.tools.dataset.vlm.base import VlmSettings, register
from library.tools.dataset.vlm.hf import ChatTemplateBackend, chat_template_backend, image_only

DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"


@register("qwen2.5-vl", "transformers", "Qwen2.5-VL instruct models", DEFAULT_MODEL)
def load_qwen2_5_vl(settings: VlmSettings) -> ChatTemplateBackend:
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    return chat_template_backend("Qwen2.5-VL", settings, DEFAULT_MODEL, Qwen2_5_VLForConditionalGeneration,
                                 image_only(Qwen2_5_VLProcessor))
