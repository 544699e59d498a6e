"""JoyCaption (LLaVA: SigLIP + Llama 3.1, ``LlavaForConditionalGeneration``) with its captioner system prompt."""

from __future__ import annotations

from library.tools.dataset.vlm.base import VlmSettings, register
from library.tools.dataset.vlm.hf import ChatTemplateBackend, chat_template_backend

DEFAULT_MODEL = "fancyfeast/llama-joycaption-beta-one-hf-llava"
SYSTEM_PROMPT = "You are a helpful image captioner."


@register("joycaption", "transformers", "JoyCaption (LLaVA) captions and tags", DEFAULT_MODEL)
def load_joycaption(settings: VlmSettings) -> ChatTemplateBackend:
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    return chat_template_backend("JoyCaption", settings, DEFAULT_MODEL, LlavaForConditionalGeneration, AutoProcessor,
                                 system_prompt=SYSTEM_PROMPT, text_content=True)
