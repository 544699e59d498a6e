"""Encode every image once (at its bucket size, centre crop) and optionally keep the latents on disk.

Disk files follow sd-scripts' name ``<image_stem>_<WWWW>x<HHHH>_<suffix>.npz`` beside the image (suffix
``sd`` for SD1/2, ``sdxl`` for SDXL) with keys ``latents`` (C, h, w) float32, ``latents_flipped`` (with
flip_aug), ``original_size`` [w, h], ``crop_ltrb`` [l, t, r, b] (in the resized-to-cover picture), plus
``image_size`` (bytes) and ``image_mtime_ns`` so a changed image is re-encoded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from library.data.buckets import Size, cover_size, crop_origin
from library.data.dataset import ItemRef, TrainDataset
from library.errors import DatasetError
from library.util.atomic import atomic_path
from library.util.prefetch import prefetch

logger = logging.getLogger(__name__)

EncodeFn = Callable[[torch.Tensor], torch.Tensor]


class CachedLatents(NamedTuple):
    """The content of a valid cache file."""

    latents: torch.Tensor
    """(C, h, w) float32"""
    latents_flipped: torch.Tensor | None
    """(C, h, w) float32, when asked for"""
    crop_ltrb: tuple[int, int, int, int]
    """(left, top, right, bottom) of the crop in the resized-to-cover picture, before any flip"""


def cache_file_path(image_path: Path, bucket: Size, suffix: str = "sd") -> Path:
    """``<dir>/<stem>_<WWWW>x<HHHH>_<suffix>.npz`` for an image and its bucket (width, height); sd-scripts
    uses the suffix ``sd`` for SD1/2 and ``sdxl`` for SDXL."""
    return image_path.with_name(f"{image_path.stem}_{bucket[0]:04d}x{bucket[1]:04d}_{suffix}.npz")


def _image_stamp(image_path: Path) -> tuple[int, int]:
    st = image_path.stat()
    return st.st_size, st.st_mtime_ns


def load_cached(npz_path: Path, image_path: Path, need_flipped: bool) -> CachedLatents | None:
    """Latents and crop from a valid cache file, or None when it is missing, unreadable or stale (a file
    without ``crop_ltrb`` counts as stale)."""
    if not npz_path.is_file():
        return None
    try:
        with np.load(npz_path) as data:
            size, mtime = _image_stamp(image_path)
            if int(data["image_size"]) != size or int(data["image_mtime_ns"]) != mtime:
                return None
            if (need_flipped and "latents_flipped" not in data) or "crop_ltrb" not in data:
                return None
            left, top, right, bottom = (int(v) for v in data["crop_ltrb"].reshape(-1).tolist())
            latents = torch.from_numpy(data["latents"].copy())
            flipped = torch.from_numpy(data["latents_flipped"].copy()) if need_flipped else None
    except (OSError, KeyError, ValueError) as exc:
        logger.warning("Latent cache '%s' is unreadable (%s); re-encoding.", npz_path, exc)
        return None
    return CachedLatents(latents, flipped, (left, top, right, bottom))


def save_cached(
    npz_path: Path,
    image_path: Path,
    latents: torch.Tensor,
    flipped: torch.Tensor | None,
    original_size: Size,
    crop_ltrb: tuple[int, int, int, int],
) -> None:
    """Write a cache file atomically (temp file + rename)."""
    size, mtime = _image_stamp(image_path)
    arrays = {
        "latents": latents.detach().float().cpu().numpy(),
        "original_size": np.array(original_size, dtype=np.int64),
        "crop_ltrb": np.array(crop_ltrb, dtype=np.int64),
        "image_size": np.array(size, dtype=np.int64),
        "image_mtime_ns": np.array(mtime, dtype=np.int64),
    }
    if flipped is not None:
        arrays["latents_flipped"] = flipped.detach().float().cpu().numpy()
    with atomic_path(npz_path) as tmp, tmp.open("wb") as f:
        np.savez(f, **arrays)


def _check_options(dataset: TrainDataset) -> None:
    for spec in dataset.specs:
        for subset in spec.subsets:
            if subset.color_aug or subset.random_crop:
                raise DatasetError(
                    f"Subset '{subset.image_dir}': color_aug and random_crop cannot be used with "
                    f"cache_latents (each image is encoded once, centre-cropped). Turn off cache_latents "
                    f"or turn off color_aug / random_crop."
                )


def _centre_crop_ltrb(dataset: TrainDataset, ref: ItemRef) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) of the centre crop an item's latents are encoded from."""
    item = dataset.items[ref]
    left, top = crop_origin(cover_size(item.size[0], item.size[1], item.bucket), item.bucket, None)
    return left, top, left + item.bucket[0], top + item.bucket[1]


def _load_group(dataset: TrainDataset, refs: list[ItemRef]) -> tuple[list[bool], torch.Tensor, list[tuple[int, int]]]:
    """The pixels of images that share one bucket (a flipped copy after each ``flip_aug`` one) and their crops."""
    need_flip = [dataset.subset_of(r).flip_aug for r in refs]
    pixels, crops = [], []
    for ref, flip in zip(refs, need_flip, strict=True):
        tensor, crop = dataset.load_pixels(ref, None, False)
        pixels.append(tensor)
        crops.append(crop)
        if flip:
            pixels.append(torch.flip(tensor, dims=[-1]))
    return need_flip, torch.stack(pixels), crops


def _encode_group(
    dataset: TrainDataset, refs: list[ItemRef], loaded, encode_fn: EncodeFn, to_disk: bool, suffix: str
) -> None:
    """Encode one group's pixels (``loaded``: :func:`_load_group`'s result); store the latents in the items
    (and on disk)."""
    need_flip, pixels, crops = loaded
    with torch.no_grad():
        latents = encode_fn(pixels).detach().float().cpu()
    k = 0
    for ref, flip, (left, top) in zip(refs, need_flip, crops, strict=True):
        item = dataset.items[ref]
        item.latents = latents[k].clone()
        item.latents_flipped = latents[k + 1].clone() if flip else None
        dataset.latent_crops[ref] = (left, top)
        k += 2 if flip else 1
        if to_disk:
            ltrb = (left, top, left + item.bucket[0], top + item.bucket[1])
            save_cached(
                cache_file_path(item.path, item.bucket, suffix),
                item.path,
                item.latents,
                item.latents_flipped,
                item.size,
                ltrb,
            )


def cache_latents(
    dataset: TrainDataset, encode_fn: EncodeFn, to_disk: bool, batch_size: int = 1, suffix: str = "sd"
) -> int:
    """Encode each used image once at its bucket size and switch the dataset to latents.

    Each item's crop (left, top) is kept in ``dataset.latent_crops`` for the size conditioning.

    Args:
        encode_fn: pixels (B, 3, H, W) in [-1, 1] -> latents (B, C, H/f, W/f) (the VAE, scaled).
        to_disk: read/write ``<stem>_<WWWW>x<HHHH>_<suffix>.npz`` beside each image; valid files are
            reused (a file whose crop is not the centre crop the dataset would take is re-encoded).
        batch_size: images per ``encode_fn`` call (twice as many tensors when flip_aug adds flipped copies).
        suffix: the model family's cache file suffix (``sd`` for SD1/2, ``sdxl`` for SDXL).

    Returns:
        The number of images encoded (reused cache files excluded).
    """
    _check_options(dataset)
    todo: dict[Size, list[ItemRef]] = {}
    for ref, item in enumerate(dataset.items):
        if item.repeats == 0 or (item.latents is not None and ref in dataset.latent_crops):
            continue  # unused, or latents given already (fine-tuning: prepare_buckets_latents' files)
        need_flip = dataset.subset_of(ref).flip_aug
        path = cache_file_path(item.path, item.bucket, suffix)
        cached = load_cached(path, item.path, need_flip) if to_disk else None
        if cached is not None and cached.crop_ltrb != _centre_crop_ltrb(dataset, ref):
            # the masks (and the mirrored crops) assume the centre crop of today's resize rules
            logger.info("Latent cache '%s' has crop %s, not the centre crop; re-encoding.", path,
                        cached.crop_ltrb)
            cached = None
        if cached is not None:
            item.latents, item.latents_flipped = cached.latents, cached.latents_flipped
            dataset.latent_crops[ref] = cached.crop_ltrb[:2]
        else:
            todo.setdefault(item.bucket, []).append(ref)
    step = max(1, batch_size)
    groups = [refs[i : i + step] for _, refs in sorted(todo.items()) for i in range(0, len(refs), step)]
    # the next groups' pictures are decoded and resized in threads while the VAE encodes this one
    loads = prefetch(((lambda g=group: _load_group(dataset, g)) for group in groups), workers=1, depth=2)
    for group, loaded in zip(groups, loads, strict=True):
        _encode_group(dataset, group, loaded, encode_fn, to_disk, suffix)
    encoded = sum(len(g) for g in groups)
    dataset.latents_cached = True
    logger.info(
        "Latents cached: %d encoded, %d reused.",
        encoded,
        sum(1 for it in dataset.items if it.repeats) - encoded,
    )
    return encoded
