"""sd-scripts' fine-tuning metadata (``--in_json`` / a subset's ``metadata_file``) and its prepared latents.

The metadata file is a JSON object, image key -> entry::

    {"img1": {"caption": "a photo of a girl", "tags": "1girl, solo", "train_resolution": [512, 512]}}

An image key is the picture's stem (``img1``), a path relative to the image folder, or a full path (the
preparation tools' ``--full_path``). ``.jsonl`` files hold one ``{"image_path", "caption", "tags",
"image_size"}`` object per line. The training caption is ``caption + caption_separator + tags``
(sd-scripts' FineTuningDataset; either part may be absent).

``tools/prepare_buckets_latents.py`` writes each picture's latents beside it as
``<stem>_<WWWW>x<HHHH>_<suffix>.npz`` (WWWW x HHHH: the picture's own size, sd-scripts' name; suffix ``sd``
or ``sdxl``) with sd-scripts' keys: ``latents`` (C, h, w) float32 *unscaled* VAE samples (the trainer
multiplies by the VAE's scaling factor), ``original_size`` [w, h], ``crop_ltrb`` [l, t, r, b] of the crop in
the resized-to-cover picture, ``latents_flipped`` with flip_aug; plus ``image_size`` (bytes) and
``image_mtime_ns`` so a changed picture is not trained from stale latents.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from library.data.buckets import Size, cover_size, crop_origin
from library.data.folders import IMAGE_EXTENSIONS
from library.errors import DatasetError

logger = logging.getLogger(__name__)

METADATA_SUFFIXES: tuple[str, ...] = (".json", ".jsonl")
#: the text keys of an entry; the size keys must be [width, height] pairs of positive integers
_TEXT_KEYS = ("caption", "tags")
_SIZE_KEYS = ("train_resolution", "image_size")
_HOW_TO_MAKE = "tools/merge_captions_to_metadata.py (captions) and tools/merge_dd_tags_to_metadata.py (tags) write such a file"


# --- reading and writing ----------------------------------------------------------------------------
def _json_error(path: Path, exc: json.JSONDecodeError, line: int | None = None) -> DatasetError:
    where = f"line {line if line is not None else exc.lineno} column {exc.colno}"
    return DatasetError(
        f"metadata file '{path}' is not valid JSON at {where}: {exc.msg}. Fix the file there (a missing comma "
        f"or quote, a trailing comma) or write it again; {_HOW_TO_MAKE}."
    )


def _read_jsonl(path: Path, text: str) -> dict[str, dict[str, Any]]:
    metadata: dict[str, dict[str, Any]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _json_error(path, exc, number) from None
        if not isinstance(record, dict) or not isinstance(record.get("image_path"), str):
            raise DatasetError(
                f"metadata file '{path}' line {number}: each line must be an object with \"image_path\" (a "
                f'string) and "caption" / "tags", e.g. {{"image_path": "a.png", "caption": "a dog"}}.'
            )
        metadata[record["image_path"]] = {k: v for k, v in record.items() if k != "image_path"}
    return metadata


def _check_entry(path: Path, key: str, entry: Any) -> None:
    if not isinstance(entry, dict):
        raise DatasetError(
            f"metadata file '{path}': key '{key}' maps to {type(entry).__name__} {entry!r}, not an object. Each "
            f'image key maps to an object such as {{"caption": "a photo of a dog", "tags": "dog, grass"}}.'
        )
    for name in _TEXT_KEYS:
        if entry.get(name) is not None and not isinstance(entry[name], str):
            raise DatasetError(
                f"metadata file '{path}': key '{key}': \"{name}\" must be a string, got {entry[name]!r}. Write the "
                f"{name} as one string (tags separated by ', ')."
            )
    for name in _SIZE_KEYS:
        value = entry.get(name)
        if value is not None and not (
            isinstance(value, list)
            and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
        ):
            raise DatasetError(
                f"metadata file '{path}': key '{key}': \"{name}\" must be [width, height] in pixels, got {value!r}. "
                f"Fix or remove it (tools/prepare_buckets_latents.py writes train_resolution)."
            )


def read_metadata(path: str | Path, option: str = "in_json") -> dict[str, dict[str, Any]]:
    """Read and check a metadata file (``.json`` object or ``.jsonl`` lines): image key -> entry.

    ``option`` names the setting in messages (``in_json`` or ``metadata_file``). Raises
    :class:`DatasetError` naming the file (and key or line) for a missing file, bad JSON or a bad entry.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(
            f"{option} '{path}' does not exist{' (it is a folder)' if path.is_dir() else ''}. Give the metadata "
            f"JSON of the fine-tuning pictures; {_HOW_TO_MAKE}."
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"metadata file '{path}' is not UTF-8 text ({exc.reason}); save it as UTF-8."
        ) from None
    if path.suffix.lower() == ".jsonl":
        metadata = _read_jsonl(path, text)
    else:
        try:
            metadata = json.loads(text)
        except json.JSONDecodeError as exc:
            raise _json_error(path, exc) from None
        except RecursionError:
            raise DatasetError(
                f"metadata file '{path}' is nested too deeply to read; it is not a metadata file."
            ) from None
        if not isinstance(metadata, dict):
            raise DatasetError(
                f"metadata file '{path}' holds a JSON {type(metadata).__name__}, not an object of image key -> "
                f'{{"caption", "tags"}}; {_HOW_TO_MAKE}.'
            )
    for key, entry in metadata.items():
        _check_entry(path, key, entry)
    return metadata


def write_metadata(path: str | Path, metadata: dict[str, dict[str, Any]]) -> None:
    """Write a metadata file as sd-scripts does (JSON, indent 2), atomically; ``.jsonl`` paths get lines."""
    from library.util.atomic import write_text_atomic

    path = Path(path)
    if path.suffix.lower() == ".jsonl":
        text = "".join(
            json.dumps({"image_path": k, **v}, ensure_ascii=False) + "\n" for k, v in metadata.items()
        )
    else:
        text = json.dumps(metadata, indent=2, ensure_ascii=False)
    write_text_atomic(path, text)


# --- entries -> training items ----------------------------------------------------------------------
def entry_caption(entry: dict[str, Any], separator: str = ",") -> str | None:
    """The training caption of an entry: ``caption``, then ``separator`` and ``tags`` when both are set
    (sd-scripts' FineTuningDataset). A caption of several lines (``enable_wildcard`` alternatives) gets the
    tags on each line, and line breaks in the tags become separators, as sd-scripts does with wildcards.
    None when the entry has neither."""
    caption, tags = entry.get("caption"), entry.get("tags")
    if caption is None and tags is None:
        return None
    caption = caption or ""
    if not tags:
        return caption
    tags = tags.replace("\n", separator)
    lines = [line for line in caption.split("\n") if line.strip()]
    return "\n".join(f"{line}{separator}{tags}" for line in lines) if lines else tags


def resolve_image(key: str, image_dir: Path | None) -> Path | None:
    """The picture of an image key, or None.

    Tried in order: a full path; ``image_dir/key``; ``image_dir/key<ext>`` for each image extension (stem
    keys); ``key`` relative to the current folder (``--full_path`` keys written from a relative folder).
    """
    candidate = Path(key)
    if candidate.is_absolute():
        return candidate if candidate.is_file() else None
    if image_dir is not None:
        if (image_dir / key).is_file() and (image_dir / key).suffix.lower() in IMAGE_EXTENSIONS:
            return image_dir / key
        for ext in IMAGE_EXTENSIONS:
            for variant in (ext, ext.upper()):
                if (image_dir / (key + variant)).is_file():
                    return image_dir / (key + variant)
    return candidate if candidate.is_file() else None


def _missing_error(path: Path, image_dir: Path | None, missing: list[str]) -> DatasetError:
    shown = ", ".join(f"'{k}'" for k in missing[:5]) + (
        f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    )
    where = (
        f"in image_dir / train_data_dir '{image_dir}'"
        if image_dir is not None
        else "(no image_dir / train_data_dir is set)"
    )
    return DatasetError(
        f"metadata file '{path}': no picture found for {len(missing)} image key(s): {shown}, looked for as a full "
        f"path, as a file {where} and as <key>{'/'.join(IMAGE_EXTENSIONS)}. Set train_data_dir (or the subset's "
        f"image_dir) to the folder that holds the pictures, or remove those keys from the file."
    )


@functools.lru_cache(maxsize=32)
def _captions_cached(
    path: Path, stamp: tuple[int, int], image_dir: Path | None, separator: str, option: str
) -> dict[Path, str]:
    metadata = read_metadata(path, option)
    if not metadata:
        logger.warning("%s '%s' has no image entries; the subset is skipped.", option, path)
    captions: dict[Path, str] = {}
    missing, no_text = [], []
    for key, entry in metadata.items():
        caption = entry_caption(entry, separator)
        if caption is None:
            no_text.append(key)
            continue
        image = resolve_image(key, image_dir)
        if image is None:
            missing.append(key)
        elif image in captions:
            logger.warning(
                "%s '%s': key '%s' names picture '%s' again; the first entry is used.",
                option,
                path,
                key,
                image,
            )
        else:
            captions[image] = caption
    if no_text:
        shown = ", ".join(f"'{k}'" for k in no_text[:5]) + (" ..." if len(no_text) > 5 else "")
        raise DatasetError(
            f'metadata file \'{path}\': {len(no_text)} image key(s) have neither "caption" nor "tags": {shown}. '
            f"Add them ({_HOW_TO_MAKE}; tools/prepare_buckets_latents.py adds only train_resolution) or remove "
            f"those keys."
        )
    if missing:
        raise _missing_error(path, image_dir, missing)
    return captions


def metadata_captions(
    metadata_file: Path, image_dir: Path | None, separator: str = ",", option: str = "metadata_file"
) -> dict[Path, str]:
    """Picture path -> training caption for every entry of a metadata file (read once per file version).

    Raises :class:`DatasetError` naming the file and keys for entries without text or without a picture.
    """
    metadata_file = Path(metadata_file)
    try:
        st = metadata_file.stat()
        stamp = (st.st_size, st.st_mtime_ns)
    except OSError:
        stamp = (-1, -1)  # read_metadata reports the missing file
    return _captions_cached(metadata_file, stamp, image_dir, separator, option)


def check_fine_tuning_subsets(subsets: list, where: str) -> None:
    """sd-scripts' rules for ``metadata_file`` subsets: a dataset is all fine-tuning or all DreamBooth, and
    fine-tuning subsets have no regularisation pictures. Raises :class:`DatasetError`."""
    tuned = [s for s in subsets if s.metadata_file is not None]
    if tuned and len(tuned) != len(subsets):
        raise DatasetError(
            f"{where}: some subsets have 'metadata_file' (fine-tuning) and others do not (DreamBooth folders); one "
            f"dataset cannot mix the two (as in sd-scripts). Put the metadata_file subsets in a [[datasets]] of "
            f"their own."
        )
    for subset in tuned:
        if subset.is_reg:
            raise DatasetError(
                f"{where}: the subset with metadata_file '{subset.metadata_file}' sets is_reg = true, but "
                f"fine-tuning subsets have no regularisation pictures. Remove is_reg, or put the regularisation "
                f"pictures in a DreamBooth dataset (image_dir + is_reg) of their own."
            )


# --- prepared latents (tools/prepare_buckets_latents.py) ---------------------------------------------
def prepared_latents_path(image_path: Path, size: Size, suffix: str = "sd") -> Path:
    """``<dir>/<stem>_<WWWW>x<HHHH>_<suffix>.npz``: sd-scripts' latent file name (the picture's own size)."""
    return image_path.with_name(f"{image_path.stem}_{size[0]:04d}x{size[1]:04d}_{suffix}.npz")


def centre_crop_ltrb(size: Size, bucket: Size) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the centre crop of a picture of ``size`` resized to cover ``bucket``."""
    left, top = crop_origin(cover_size(size[0], size[1], bucket), bucket, None)
    return left, top, left + bucket[0], top + bucket[1]


def write_prepared_latents(
    path: Path,
    image_path: Path,
    latents: torch.Tensor,
    flipped: torch.Tensor | None,
    size: Size,
    crop_ltrb: tuple[int, int, int, int],
) -> None:
    """Write one picture's unscaled latents (C, h, w) in sd-scripts' layout (plus the picture's stamp)."""
    from library.util.atomic import atomic_path

    st = image_path.stat()
    arrays = {
        "latents": latents.detach().float().cpu().numpy(),
        "original_size": np.array(size, dtype=np.int64),
        "crop_ltrb": np.array(crop_ltrb, dtype=np.int64),
        "image_size": np.array(st.st_size, dtype=np.int64),
        "image_mtime_ns": np.array(st.st_mtime_ns, dtype=np.int64),
    }
    if flipped is not None:
        arrays["latents_flipped"] = flipped.detach().float().cpu().numpy()
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        np.savez(f, **arrays)


def read_prepared_latents(
    path: Path, image_path: Path, size: Size, bucket: Size, factor: int, need_flipped: bool
) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The (latents, flipped latents) of a prepared file when it fits the picture and the bucket, else None.

    It fits when its latents are (C, bucket_h/factor, bucket_w/factor), its crop is the centre crop the
    trainer takes, its original_size is the picture's, it has flipped latents where needed and, when it
    carries the picture's stamp (files of our tool), the picture is unchanged.
    """
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            if any(k not in data for k in ("latents", "original_size", "crop_ltrb")):
                return None
            if "image_size" in data and "image_mtime_ns" in data:
                st = image_path.stat()
                if int(data["image_size"]) != st.st_size or int(data["image_mtime_ns"]) != st.st_mtime_ns:
                    return None
            latents = data["latents"]
            expected = (bucket[1] // factor, bucket[0] // factor)
            if latents.ndim != 3 or tuple(latents.shape[1:]) != expected:
                return None
            if tuple(int(v) for v in data["original_size"].reshape(-1)) != tuple(size):
                return None
            if tuple(int(v) for v in data["crop_ltrb"].reshape(-1)) != centre_crop_ltrb(size, bucket):
                return None
            flipped = data["latents_flipped"] if need_flipped and "latents_flipped" in data else None
            if need_flipped and flipped is None:
                return None
            return latents.copy(), (flipped.copy() if flipped is not None else None)
    except (OSError, ValueError, KeyError) as exc:
        logger.warning("Prepared latents '%s' are unreadable (%s); the picture is encoded again.", path, exc)
        return None


def attach_prepared_latents(dataset, model) -> int:
    """Give the pictures of metadata subsets the latents ``prepare_buckets_latents`` left beside them.

    Latents are scaled as ``model.encode_images`` scales them. Nothing is attached when a subset has color_aug or
    random_crop (its pictures change at every step, so latents cannot be cached). Returns how many pictures got prepared latents; the
    others are encoded by the latent cache as usual.
    """
    subsets = [s for spec in dataset.specs for s in spec.subsets]
    if not any(s.metadata_file is not None for s in subsets):
        return 0
    if any(s.color_aug or s.random_crop for s in subsets):
        logger.info(
            "Prepared latents are not used: color_aug / random_crop change the pictures at every step."
        )
        return 0
    suffix = model.adapter.latent_cache_suffix
    factor = 2 ** (len(model.vae.config.block_out_channels) - 1)
    scale, shift = model.latent_scale, model.latent_shift
    found = 0
    for ref, item in enumerate(dataset.items):
        subset = dataset.subset_of(ref)
        if subset.metadata_file is None or item.repeats == 0:
            continue
        path = prepared_latents_path(item.path, item.size, suffix)
        loaded = read_prepared_latents(path, item.path, item.size, item.bucket, factor, subset.flip_aug)
        if loaded is None:
            continue
        latents, flipped = (None if a is None else (torch.from_numpy(a) - shift) * scale for a in loaded)
        item.latents, item.latents_flipped = latents, flipped
        dataset.latent_crops[ref] = centre_crop_ltrb(item.size, item.bucket)[:2]
        found += 1
    if found:
        logger.info("Using the latents of tools/prepare_buckets_latents.py for %d pictures.", found)
    return found
