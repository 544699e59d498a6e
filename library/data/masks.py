"""Loss masks (masked_loss): mask pictures from ``conditioning_data_dir``, or the pictures' alpha channel."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from library.data.folders import IMAGE_EXTENSIONS
from library.data.scan import ImageItem
from library.data.specs import DatasetSpec
from library.errors import DatasetError


def check_mask_sources(specs: list[DatasetSpec], masked_loss: bool) -> None:
    """masked_loss needs a mask source; conditioning_data_dir is only for masks here (no ControlNet)."""
    subsets = [sub for spec in specs for sub in spec.subsets]
    with_dir = [sub for sub in subsets if sub.conditioning_data_dir is not None]
    if with_dir and not masked_loss:
        raise DatasetError(
            f"conditioning_data_dir '{with_dir[0].conditioning_data_dir}' is set but masked_loss is not: here "
            "conditioning_data_dir holds loss masks (ControlNet training is not supported). Set masked_loss = "
            "true, or remove conditioning_data_dir."
        )
    if masked_loss and not with_dir and not any(sub.alpha_mask for sub in subsets):
        raise DatasetError(
            "masked_loss = true needs masks: set conditioning_data_dir (mask pictures named like the training "
            "pictures) or alpha_mask = true (each picture's alpha channel is its mask; in a dataset config, "
            "per subset)."
        )
    for sub in with_dir:
        if not sub.conditioning_data_dir.is_dir():
            raise DatasetError(
                f"conditioning_data_dir '{sub.conditioning_data_dir}' is not a folder: give the folder of mask "
                "pictures."
            )


def mask_picture_for(folder: Path, picture: Path) -> Path | None:
    """The mask picture of ``picture`` in ``folder``: the same stem with any image extension."""
    for ext in (*IMAGE_EXTENSIONS, *(e.upper() for e in IMAGE_EXTENSIONS)):
        candidate = folder / f"{picture.stem}{ext}"
        if candidate.is_file():
            return candidate
    return None


def missing_mask_pictures(specs: list[DatasetSpec]) -> list[Path]:
    """Training pictures of subsets with ``conditioning_data_dir`` that have no mask picture there."""
    from library.data.folders import list_images

    missing = []
    for spec in specs:
        for sub in spec.subsets:
            if sub.conditioning_data_dir is None or sub.is_reg or not sub.image_dir.is_dir():
                continue
            missing += [p for p in list_images(sub.image_dir) if mask_picture_for(sub.conditioning_data_dir, p) is None]
    return missing


def attach_mask_pictures(items: list[ImageItem], specs: list[DatasetSpec]) -> list[ImageItem]:
    """Give each training picture of a subset with ``conditioning_data_dir`` the mask picture of the same
    name (any image extension). Regularisation pictures keep no mask (they count everywhere). A training
    picture without its mask is an error naming the first few."""
    out, missing = [], []
    for item in items:
        folder = specs[item.dataset_index].subsets[item.subset_index].conditioning_data_dir
        if folder is None or item.is_reg:
            out.append(item)
            continue
        found = mask_picture_for(folder, item.path)
        if found is None:
            missing.append(item.path.name)
        out.append(dataclasses.replace(item, mask_path=found))
    if missing:
        raise DatasetError(
            f"{len(missing)} training pictures have no mask picture of the same name in conditioning_data_dir "
            f"(e.g. {', '.join(missing[:5])}). Add the masks (white = learned, black = ignored), or turn "
            "masked_loss off."
        )
    return out
