"""``cache_text_encoder_outputs(_to_disk)``: encode every caption once, then train without the text encoders.

sd-scripts' SDXL option: with frozen text encoders and fixed captions, each picture's conditioning is the
same at every step, so it is computed once (hidden states and pooled output, on the CPU) and looked up by
caption. ``_to_disk`` keeps it beside each picture as ``<stem>_te_outputs.npz`` (sd-scripts' name) with the
caption it was made from, reused while the caption and the encoding options are unchanged.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import torch

from library.data.captions import process_caption
from library.errors import ConfigError
from library.models.family import Conditioning
from library.util.atomic import atomic_path

logger = logging.getLogger(__name__)

RANDOM_CAPTION_OPTIONS = ("shuffle_caption", "caption_dropout_rate", "caption_dropout_every_n_epochs",
                          "caption_tag_dropout_rate")


Entry = tuple  # (hidden (L, D), pooled (P,) or None, mask (L,) or None)


class TextEncoderCache:
    """Caption -> (hidden (L, D), pooled (P,) or None, mask (L,) or None), CPU float32 (mask int64);
    :meth:`lookup` batches them."""

    def __init__(self, entries: dict[str, Entry], device: torch.device):
        self.entries = entries
        self.device = device

    def lookup(self, captions: list[str]) -> Conditioning:
        missing = [c for c in captions if c not in self.entries]
        if missing:
            raise RuntimeError(f"caption {missing[0]!r} is not in the text-encoder output cache")
        hidden = torch.stack([self.entries[c][0] for c in captions]).to(self.device)
        pooled = [self.entries[c][1] for c in captions]
        pooled = None if pooled[0] is None else torch.stack(pooled).to(self.device)
        masks = [self._mask(c) for c in captions]
        mask = None if masks[0] is None else torch.stack(masks).to(self.device)
        return Conditioning(hidden, pooled, mask)

    def _mask(self, caption: str):
        entry = self.entries[caption]
        return entry[2] if len(entry) > 2 else None


def fixed_caption(dataset, ref) -> str:
    """The caption a picture gets at every step when no caption option draws at random."""
    return process_caption(dataset.items[ref].caption, dataset.subset_of(ref).caption_options(), random.Random(0), 1)


def check_fixed_captions(dataset) -> None:
    for spec in dataset.specs:
        for subset in spec.subsets:
            options = subset.caption_options()
            used = [name for name in RANDOM_CAPTION_OPTIONS if getattr(options, name)]
            if used:
                raise ConfigError(
                    f"cache_text_encoder_outputs needs fixed captions, but subset '{subset.image_dir}' sets "
                    f"{', '.join(used)}: each step would see another caption. Turn those off or turn "
                    "cache_text_encoder_outputs off."
                )


def cache_file_path(image_path: Path) -> Path:
    return image_path.with_name(f"{image_path.stem}_te_outputs.npz")


def _read(path: Path, caption: str, signature: str):
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["caption"]) != caption or str(data["signature"]) != signature:
                return None
            hidden = torch.from_numpy(data["hidden"].copy())
            pooled = torch.from_numpy(data["pooled"].copy()) if "pooled" in data else None
            mask = torch.from_numpy(data["mask"].copy()) if "mask" in data else None
    except (OSError, KeyError, ValueError) as error:
        logger.warning("text-encoder cache %s is unreadable (%s); encoding again", path, error)
        return None
    return hidden, pooled, mask


def _write(path: Path, caption: str, signature: str, hidden: torch.Tensor, pooled: torch.Tensor | None,
           mask: torch.Tensor | None = None) -> None:
    arrays = {"caption": np.array(caption), "signature": np.array(signature), "hidden": hidden.numpy()}
    if pooled is not None:
        arrays["pooled"] = pooled.numpy()
    if mask is not None:
        arrays["mask"] = mask.numpy()
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        np.savez(f, **arrays)


@torch.no_grad()
def cache_text_encoder_outputs(model, datasets: list, *, clip_skip: int | None, max_token_length: int | None,
                               to_disk: bool, batch_size: int = 8) -> TextEncoderCache:
    """Encode the fixed caption of every used picture of ``datasets``; the model's step then reads the cache
    (``model.extras["text_cache"]``). Returns the cache."""
    signature = (f"{model.family}|{model.name}|clip_skip={clip_skip}|max_token_length={max_token_length}"
                 f"{model.adapter.text_signature(model)}")
    entries: dict[str, Entry] = {}
    pending: dict[str, list[Path]] = {}
    for dataset in (d for d in datasets if d is not None):
        check_fixed_captions(dataset)
        for ref, item in enumerate(dataset.items):
            if not item.repeats:
                continue
            caption = fixed_caption(dataset, ref)
            found = _read(cache_file_path(item.path), caption, signature) if to_disk else None
            if found is not None:
                entries.setdefault(caption, found)
            elif caption not in entries:
                pending.setdefault(caption, []).append(item.path)
    captions = [c for c in pending if c not in entries]
    for start in range(0, len(captions), batch_size):
        chunk = captions[start : start + batch_size]
        cond = model.encode_prompt(chunk, clip_skip, max_token_length)
        for i, caption in enumerate(chunk):
            pooled = None if cond.pooled is None else cond.pooled[i].float().cpu()
            mask = None if cond.mask is None else cond.mask[i].cpu()
            entries[caption] = (cond.hidden[i].float().cpu(), pooled, mask)
    if to_disk:
        for caption, paths in pending.items():
            for path in paths:
                _write(cache_file_path(path), caption, signature, *entries[caption])
    cache = TextEncoderCache(entries, model.unet.device)
    model.extras["text_cache"] = cache
    logger.info("text-encoder outputs cached: %d captions encoded, %d read from disk", len(captions),
                len(entries) - len(captions))
    return cache
