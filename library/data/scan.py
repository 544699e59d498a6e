"""Scan dataset specs into image items: probe sizes, read captions, assign buckets, balance reg images."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from library.data.buckets import Size, bucket_for_size, bucket_no_upscale, make_bucket_resolutions
from library.data.captions import read_caption, split_tags
from library.data.folders import list_images
from library.data.images import probe_images
from library.data.specs import DatasetSpec, SubsetSpec
from library.errors import DatasetError

logger = logging.getLogger(__name__)


@dataclass
class ImageItem:
    """One image of the dataset. ``size`` is the displayed (EXIF-rotated) size; ``bucket`` the target."""

    path: Path
    dataset_index: int
    subset_index: int
    folder: str
    is_reg: bool
    size: Size
    bucket: Size
    caption: str
    caption_source: str
    repeats: int
    #: the loss mask picture from the subset's conditioning_data_dir (masked_loss), if any
    mask_path: Path | None = None
    latents: torch.Tensor | None = field(default=None, repr=False)
    latents_flipped: torch.Tensor | None = field(default=None, repr=False)


def balance_reg_repeats(reg_repeats: list[int], num_train_items: int) -> list[int]:
    """sd-scripts' regularisation balancing.

    Reg images are visited round-robin: in the first pass each gets its folder's repeats, later passes
    add 1 each, until the reg count reaches ``num_train_items`` (Σ repeats×images of the train
    subsets). Returns the repeats of each reg image; 0 means unused.
    """
    out = [0] * len(reg_repeats)
    if not reg_repeats or num_train_items <= 0:
        return out
    count, first_pass = 0, True
    while count < num_train_items:
        for i, repeats in enumerate(reg_repeats):
            step = repeats if first_pass else 1
            out[i] += step
            count += step
            if count >= num_train_items:
                break
        first_pass = False
    return out


def assign_bucket(size: Size, spec: DatasetSpec, buckets: list[Size] | None) -> Size:
    """The bucket of an image of ``size`` in dataset ``spec`` (``buckets`` = predefined list or None)."""
    if not spec.enable_bucket:
        return spec.resolution
    if spec.bucket_no_upscale:
        max_area = spec.resolution[0] * spec.resolution[1]
        return bucket_no_upscale(size[0], size[1], max_area, spec.bucket_reso_steps)
    assert buckets is not None
    return bucket_for_size(size[0], size[1], buckets)


def predefined_buckets(spec: DatasetSpec) -> list[Size] | None:
    """The predefined bucket list of a dataset, or None when bucketing is off or per-image."""
    if not spec.enable_bucket or spec.bucket_no_upscale:
        return None
    return make_bucket_resolutions(
        spec.resolution, spec.min_bucket_reso, spec.max_bucket_reso, spec.bucket_reso_steps
    )


def _subset_images(subset: SubsetSpec, where: str) -> list[Path]:
    if subset.metadata_file is not None:  # fine-tuning: the metadata file lists the pictures
        from library.data.metadata import metadata_captions

        return list(metadata_captions(subset.metadata_file, subset.image_dir, subset.caption_separator))
    if not subset.image_dir.is_dir():
        raise DatasetError(
            f"{where}: image_dir '{subset.image_dir}' does not exist or is not a folder. Fix image_dir "
            f"(relative paths are resolved against the current directory)."
        )
    images = list_images(subset.image_dir)
    if not images:
        logger.warning("%s: no images in '%s'; the subset is skipped.", where, subset.image_dir)
    return images


def _plan_images(specs: list[DatasetSpec]) -> list[tuple[int, int, Path]]:
    """(dataset index, subset index, image path) of every usable subset; duplicates are skipped."""
    plan: list[tuple[int, int, Path]] = []
    for d, spec in enumerate(specs):
        seen: set[tuple[Path, bool]] = set()
        for s, subset in enumerate(spec.subsets):
            where = f"dataset {d + 1} subset '{subset.image_dir.name}'"
            key = ((subset.metadata_file or subset.image_dir).resolve(), subset.is_reg)
            if key in seen:
                logger.warning(
                    "%s: image_dir '%s' is listed twice; the later subset is skipped.",
                    where,
                    subset.image_dir,
                )
                continue
            seen.add(key)
            if subset.num_repeats < 1:
                logger.warning("%s: num_repeats < 1; the subset is skipped.", where)
                continue
            plan.extend((d, s, p) for p in _subset_images(subset, where))
    return plan


def _warn_missing_captions(items: list[ImageItem]) -> None:
    missing = [it.path for it in items if it.caption_source == "none"]
    if missing:
        shown = ", ".join(f"'{p}'" for p in missing[:5])
        logger.warning(
            "%d images have neither a caption file nor class tokens and train with an empty caption: %s%s",
            len(missing),
            shown,
            " ..." if len(missing) > 5 else "",
        )


def scan_datasets(specs: list[DatasetSpec], max_workers: int = 4) -> list[ImageItem]:
    """Probe, caption and bucket every image of every usable subset (train and reg, repeats unbalanced)."""
    plan = _plan_images(specs)
    sizes, failures = probe_images([p for _, _, p in plan], max_workers=max_workers)
    items: list[ImageItem] = []
    bucket_lists = [predefined_buckets(spec) for spec in specs]
    for d, s, path in plan:
        if path not in sizes:
            continue
        spec, subset = specs[d], specs[d].subsets[s]
        try:
            bucket = assign_bucket(sizes[path], spec, bucket_lists[d])
        except ValueError as exc:
            logger.warning("Skipping image '%s': %s.", path, exc)
            continue
        if subset.metadata_file is not None:  # sd-scripts names fine-tuning subsets by their metadata file
            from library.data.metadata import metadata_captions

            caption = metadata_captions(subset.metadata_file, subset.image_dir, subset.caption_separator)[path]
            source, folder = "metadata", subset.metadata_file.name
        else:
            caption, source = read_caption(path, subset.caption_extension, subset.class_tokens,
                                           all_lines=subset.enable_wildcard)
            folder = subset.image_dir.name
        items.append(
            ImageItem(
                path, d, s, folder, subset.is_reg, sizes[path], bucket, caption, source, subset.num_repeats
            )
        )
    if not any(not it.is_reg for it in items):
        bad = f" ({len(failures)} unreadable images were skipped)" if failures else ""
        raise DatasetError(
            f"No usable training images were found{bad}. Check train_data_dir / image_dir: images "
            f"(.png .jpg .jpeg .webp .bmp) must be inside <repeats>_<class tokens> folders."
        )
    _warn_missing_captions(items)
    return items


def balance_datasets(items: list[ImageItem], num_datasets: int) -> None:
    """Set the repeats of reg items in place, per dataset, with :func:`balance_reg_repeats`."""
    for d in range(num_datasets):
        train = [it for it in items if it.dataset_index == d and not it.is_reg]
        reg = [it for it in items if it.dataset_index == d and it.is_reg]
        if not reg:
            continue
        num_train = sum(it.repeats for it in train)
        if num_train == 0:
            raise DatasetError(
                f"dataset {d + 1} has regularisation images but no training images. Add training "
                f"images or remove is_reg / reg_data_dir."
            )
        new = balance_reg_repeats([it.repeats for it in reg], num_train)
        unused = sum(1 for n in new if n == 0)
        if unused:
            logger.warning(
                "dataset %d: %d of %d regularisation images are not used: only %d reg samples per epoch "
                "are needed to match the training images.",
                d + 1,
                unused,
                len(reg),
                num_train,
            )
        for it, n in zip(reg, new, strict=True):
            it.repeats = n


def tag_frequency(items: list[ImageItem], separator: str = ",") -> dict[str, dict[str, int]]:
    """Folder name -> tag -> number of images whose caption holds the tag (for ``ss_tag_frequency``)."""
    freq: dict[str, Counter[str]] = {}
    for it in items:
        counter = freq.setdefault(it.folder, Counter())
        counter.update(split_tags(it.caption, separator))
    return {folder: dict(counter) for folder, counter in freq.items()}
