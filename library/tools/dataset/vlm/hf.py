"""What the transformers backends share: device and dtype, loading (hub id or local folder, offline mode
honoured) and chat-template generation for LLaVA / Qwen-VL style models."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from library.errors import ModelLoadError
from library.tools.dataset.vlm.base import DTYPES, VlmSettings

logger = logging.getLogger(__name__)


def offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` ask for no network: only local files load."""
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def resolve_device(device: str | None) -> str:
    """``device`` as given, or CUDA when present, else CPU (``None`` or ``"auto"``). Under ``accelerate
    launch`` with several processes, plain ``cuda`` means this process's GPU (``cuda:LOCAL_RANK``)."""
    if device and device not in ("auto", "cuda"):
        return device
    import torch

    if not torch.cuda.is_available():
        return device or "cpu"
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0') or 0) % torch.cuda.device_count()}"
    return "cuda"


def resolve_dtype(dtype: str, device: str):
    """The torch dtype of ``--dtype`` (``auto``: bfloat16 on a GPU that supports it, else float32)."""
    import torch

    name = DTYPES[dtype.lower()]
    if name is None:
        gpu_bf16 = device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        name = "bfloat16" if gpu_bf16 else "float32"
    return getattr(torch, name)


def load_pretrained(kind: str, settings: VlmSettings, default_model: str, load: Callable[[str, dict], Any]):
    """``load(model_id, kwargs)`` with ``local_files_only`` set for a local folder or in offline mode; an
    error naming the model and the fix when it cannot load."""
    model_id = settings.model_id or default_model
    local = Path(model_id).expanduser()
    kwargs = {"local_files_only": offline() or local.is_dir()}
    try:
        return load(str(local) if local.is_dir() else model_id, kwargs)
    except ImportError as exc:
        raise ModelLoadError(
            f"The {kind} model '{model_id}' needs a package that is not installed ({exc}). Install it with "
            f"pip (e.g. pip install {exc.name or 'the package named above'}) and run again."
        ) from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if local.is_dir():
            where = "local folder"
        elif kwargs["local_files_only"]:
            where = "hub id from the local cache (HF_HUB_OFFLINE is set, so nothing is downloaded)"
        else:
            where = "hub id (needs the network) or local folder"
        raise ModelLoadError(
            f"The {kind} model '{model_id}' cannot be loaded as a {where}: {exc}. Give a transformers model "
            f"folder (config.json, weights, tokenizer and processor files) or a hub id such as {default_model}."
        ) from exc


def image_only(processor_cls: type) -> type:
    """``processor_cls`` without its video processor: transformers builds video processors only with
    torchvision installed, and captioning never needs one."""

    class ImageOnlyProcessor(processor_cls):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    ImageOnlyProcessor.__name__ = ImageOnlyProcessor.__qualname__ = f"ImageOnly{processor_cls.__name__}"
    return ImageOnlyProcessor


def generate_kwargs(settings: VlmSettings) -> dict[str, Any]:
    """``model.generate`` options: greedy at temperature 0, else sampling at that temperature."""
    kwargs: dict[str, Any] = {"max_new_tokens": settings.max_new_tokens}
    if settings.temperature > 0:
        kwargs.update(do_sample=True, temperature=settings.temperature)
    else:
        kwargs.update(do_sample=False)
    return kwargs


class ChatTemplateBackend:
    """A chat model that sees the picture: messages rendered with the processor's chat template, batched
    with left padding, only the new tokens decoded."""

    fixed_prompt = False

    def __init__(
        self,
        model: Any,
        processor: Any,
        settings: VlmSettings,
        system_prompt: str | None = None,
        text_content: bool = False,
    ):
        """``text_content``: the user message is the prompt as a plain string (chat templates such as
        JoyCaption's place the image token themselves, or :meth:`render` puts it first) instead of the
        ``[{"type": "image"}, {"type": "text"}]`` parts that Qwen-VL templates read."""
        self.device = resolve_device(settings.device)
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.processor.tokenizer.padding_side = "left"
        self.settings = settings
        self.system_prompt = system_prompt
        self.text_content = text_content

    def messages(self, prompt: str) -> list[dict]:
        """The conversation of one picture: an optional system message, then the picture and the prompt."""
        parts = [{"type": "image"}, {"type": "text", "text": prompt}]
        user = {"role": "user", "content": prompt if self.text_content else parts}
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*system, user]

    def render(self, prompt: str) -> str:
        """The prompt text; the image token is put before the instruction when the template leaves it out."""
        text = self.processor.apply_chat_template(
            self.messages(prompt), add_generation_prompt=True, tokenize=False
        )
        token = getattr(self.processor, "image_token", None)
        if token and token not in text:
            text = text.replace(prompt, f"{token}\n{prompt}", 1)
        return text

    def caption(self, images: list[Image.Image], prompt: str) -> list[str | Exception]:
        import torch

        text = self.render(prompt)
        inputs = self.processor(text=[text] * len(images), images=images, return_tensors="pt", padding=True)
        inputs = inputs.to(self.device)
        if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        with torch.inference_mode():
            ids = self.model.generate(**inputs, **generate_kwargs(self.settings))
        new = ids[:, inputs["input_ids"].shape[1] :]
        return [t.strip() for t in self.processor.batch_decode(new, skip_special_tokens=True)]


def chat_template_backend(kind: str, settings: VlmSettings, default_model: str, model_class: type,
                          processor_class: type, **options) -> ChatTemplateBackend:
    """Load ``model_class`` + ``processor_class`` (hub id or folder, in the settings' dtype) as a
    :class:`ChatTemplateBackend`; ``options`` go to the backend (system_prompt, text_content)."""
    dtype = resolve_dtype(settings.dtype, resolve_device(settings.device))
    model, processor = load_pretrained(
        kind,
        settings,
        default_model,
        lambda p, kw: (model_class.from_pretrained(p, dtype=dtype, **kw), processor_class.from_pretrained(p, **kw)),
    )
    return ChatTemplateBackend(model, processor, settings, **options)
