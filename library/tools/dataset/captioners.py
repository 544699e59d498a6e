"""BLIP and GIT captioning through transformers, with a registry of captioners and a batched folder run.

A captioner turns a batch of RGB pictures into one caption each. Pictures are loaded in a background
thread pool (:mod:`library.tools.dataset.pipeline`) while the model generates.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from library.data.images import load_image
from library.errors import ModelLoadError, UserError
from library.tools.dataset.files import caption_path, find_images, write_caption
from library.tools.dataset.pipeline import iter_loaded_batches, raise_none_readable
from library.util.registry import Registry

logger = logging.getLogger(__name__)

CAPTIONERS = Registry("captioner")


@dataclass(frozen=True)
class GenerationOptions:
    """Decoding: beam search (``num_beams``) or nucleus sampling (``top_p``); lengths in tokens."""

    beam_search: bool = False
    num_beams: int = 1
    top_p: float = 0.9
    max_length: int = 75
    min_length: int = 5

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``model.generate``."""
        kwargs: dict[str, Any] = {"max_length": self.max_length, "min_length": self.min_length}
        if self.beam_search:
            kwargs.update(num_beams=max(1, self.num_beams), do_sample=False)
        else:
            kwargs.update(do_sample=True, top_p=self.top_p, num_beams=1)
        return kwargs


class Captioner:
    """A transformers vision-to-text model and its processor."""

    def __init__(self, model: Any, processor: Any, device: str):
        self.model = model.to(device).eval()
        self.processor = processor
        self.device = device

    def caption(self, images: list[Image.Image], options: GenerationOptions) -> list[str]:
        """One caption per picture (special tokens removed, whitespace stripped)."""
        import torch

        inputs = self.processor(images=images, return_tensors="pt")
        with torch.inference_mode():
            pixels = inputs["pixel_values"].to(self.device)
            ids = self.model.generate(pixel_values=pixels, **options.generate_kwargs())
        return [text.strip() for text in self.processor.batch_decode(ids, skip_special_tokens=True)]


def _load(kind: str, name_or_path: str, load: Callable[[str], tuple[Any, Any]]) -> tuple[Any, Any]:
    try:
        return load(name_or_path)
    except (OSError, ValueError, KeyError) as exc:
        where = (
            "local folder" if Path(name_or_path).exists() else "hub id (needs the network) or local folder"
        )
        raise ModelLoadError(
            f"The {kind} captioning model '{name_or_path}' cannot be loaded as a {where}: {exc}. Give a "
            f"transformers model folder (config.json, weights and processor files) or a hub id."
        ) from exc


@CAPTIONERS.register("blip", package="transformers", description="Salesforce BLIP image captioning")
def load_blip(name_or_path: str, device: str) -> Captioner:
    from transformers import BlipForConditionalGeneration, BlipProcessor

    model, processor = _load(
        "BLIP",
        name_or_path,
        lambda p: (BlipForConditionalGeneration.from_pretrained(p), BlipProcessor.from_pretrained(p)),
    )
    return Captioner(model, processor, device)


@CAPTIONERS.register("git", package="transformers", description="Microsoft GIT image captioning")
def load_git(name_or_path: str, device: str) -> Captioner:
    from transformers import AutoModelForCausalLM, AutoProcessor

    model, processor = _load(
        "GIT",
        name_or_path,
        lambda p: (AutoModelForCausalLM.from_pretrained(p), AutoProcessor.from_pretrained(p)),
    )
    return Captioner(model, processor, device)


def looks_like_local_path(name: str) -> bool:
    """True for names that cannot be hub ids (``owner/name``): absolute, ``./``, ``~``, deeper paths."""
    return Path(name).is_absolute() or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name


def load_captioner(kind: str, name_or_path: str, device: str | None = None) -> Captioner:
    """Load a registered captioner (``"blip"`` or ``"git"``) on ``device`` (default: CUDA if present)."""
    entry = CAPTIONERS.find(kind)
    if entry is None:
        raise UserError(CAPTIONERS.unknown_message(kind))
    if looks_like_local_path(name_or_path) and not Path(name_or_path).expanduser().exists():
        raise ModelLoadError(
            f"The {kind.upper()} captioning model folder '{name_or_path}' does not exist. Give a transformers "
            f"model folder (config.json, weights and processor files) or a hub id such as "
            f"Salesforce/blip-image-captioning-large."
        )
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return entry.factory(name_or_path, device)


#: phrases GIT (TextCaps) adds about text in the picture: 'with the words "x"', 'that says x'.
_TEXT_PHRASES = (
    re.compile(
        r"\s*\b(?:has|with|and) the (?:words?|letters?|name) (?:\"[^\"]*\"|\w+)(?: (?:on|in) (?:the |her |his |their )?\w+)?"
    ),
    re.compile(r"\s*\b(?:with a sign )?that says (?:\"[^\"]*\"|\w+)(?: on it)?"),
)


def remove_text_phrases(caption: str) -> str:
    """GIT's ``--remove_words``: drop the phrases that quote text seen in the picture."""
    for pattern in _TEXT_PHRASES:
        caption = pattern.sub("", caption)
    return caption.strip()


@dataclass(frozen=True)
class CaptionRun:
    """Where and how captions are written."""

    caption_extension: str = ".caption"
    prefix: str = ""
    suffix: str = ""
    overwrite: bool = False
    batch_size: int = 1
    workers: int = 4
    recursive: bool = False
    postprocess: Callable[[str], str] | None = None


@dataclass
class CaptionReport:
    """What a captioning run did."""

    images: int = 0
    written: list[Path] = field(default_factory=list)
    kept_existing: list[Path] = field(default_factory=list)
    unreadable: list[Path] = field(default_factory=list)


def caption_folder(
    folder: str | Path,
    captioner: Captioner,
    options: GenerationOptions,
    run: CaptionRun,
    on_image: Callable[[Path, str], None] | None = None,
) -> CaptionReport:
    """Caption every picture of ``folder``; existing captions are kept unless ``run.overwrite``."""
    paths = find_images(folder, run.recursive)
    report = CaptionReport(images=len(paths))
    existing = {p for p in paths if caption_path(p, run.caption_extension).exists()}
    todo = [p for p in paths if run.overwrite or p not in existing]
    report.kept_existing = [caption_path(p, run.caption_extension) for p in sorted(set(paths) - set(todo))]
    for batch in iter_loaded_batches(todo, load_image, run.batch_size, run.workers, report.unreadable):
        texts = captioner.caption([img for _, img in batch], options)
        for (path, _), text in zip(batch, texts, strict=True):
            if run.postprocess is not None:
                text = run.postprocess(text)
            text = f"{run.prefix}{text}{run.suffix}"
            if on_image is not None:
                on_image(path, text)
            write_caption(caption_path(path, run.caption_extension), text, overwrite=True)
            report.written.append(caption_path(path, run.caption_extension))
    if todo and len(report.unreadable) == len(todo):
        raise_none_readable(folder, report.unreadable)
    if report.kept_existing:
        logger.warning(
            "%d pictures already had a caption that was kept (use --overwrite to replace it).",
            len(report.kept_existing),
        )
    return report
