"""The logic of sd-scripts' fine-tuning preparation tools, over the metadata JSON of :mod:`library.data.metadata`.

- :func:`merge_texts`: caption files (``merge_captions_to_metadata.py``, field ``caption``) or tag files
  (``merge_dd_tags_to_metadata.py``, field ``tags``) into the JSON; keys are stems, or paths with ``full_path``.
- :func:`clean_tags` / :func:`clean_caption` / :func:`clean_metadata` (``clean_captions_and_tags.py``):
  sd-scripts' cleaning rules.
- :func:`prepare_buckets_latents` (``prepare_buckets_latents.py``): each picture's bucket into
  ``train_resolution`` and its latents beside it, in the layout the fine-tuning dataset reads.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from library.data.metadata import read_metadata, write_metadata
from library.errors import UserError

logger = logging.getLogger(__name__)


# --- merge caption / tag files ----------------------------------------------------------------------
@dataclass
class MergeReport:
    """What :func:`merge_texts` did."""

    merged: int = 0
    #: pictures without a caption/tag file (left out of the JSON, or keeping what the JSON had)
    without_file: list[Path] = field(default_factory=list)


def _start_metadata(out_json: Path, in_json: str | Path | None) -> dict[str, dict[str, Any]]:
    """The metadata to update: ``in_json``, else an existing ``out_json`` (as sd-scripts does), else empty."""
    source = Path(in_json) if in_json is not None else (out_json if out_json.is_file() else None)
    if source is None:
        logger.info("new metadata will be created")
        return {}
    logger.info("loading existing metadata: %s", source)
    return read_metadata(source, "--in_json")


def image_key(image: Path, full_path: bool) -> str:
    """The metadata key of a picture: its path as found (``full_path``) or its stem (sd-scripts)."""
    return str(image) if full_path else image.stem


def merge_texts(
    train_data_dir: str | Path,
    out_json: str | Path,
    field_name: str,
    caption_extension: str,
    in_json: str | Path | None = None,
    full_path: bool = False,
    recursive: bool = False,
) -> MergeReport:
    """Put each picture's caption (or tag) file into ``field_name`` of its metadata entry and write ``out_json``.

    Existing entries keep their other fields; an existing text in ``field_name`` is overwritten. Pictures
    without a file are reported (sd-scripts stops at the first one). Raises :class:`UserError` for
    ``recursive`` without ``full_path`` (stems of different folders would collide).
    """
    from library.tools.dataset.files import caption_path, find_images, read_text

    if recursive and not full_path:
        raise UserError(
            "--recursive needs --full_path: pictures of different folders may share a stem, so the "
            "metadata keys must be their paths. Add --full_path."
        )
    out_json = Path(out_json)
    images = find_images(train_data_dir, recursive)
    logger.info("found %d images.", len(images))
    metadata = _start_metadata(out_json, in_json)
    report = MergeReport()
    for image in images:
        text_file = caption_path(image, caption_extension)
        if not text_file.is_file():
            report.without_file.append(image)
            continue
        metadata.setdefault(image_key(image, full_path), {})[field_name] = read_text(text_file).strip()
        report.merged += 1
    if report.without_file:
        shown = ", ".join(f"'{p.name}'" for p in report.without_file[:5])
        logger.warning(
            "%d pictures have no %s file and get no %s: %s%s",
            len(report.without_file),
            caption_extension,
            field_name,
            shown,
            " ..." if len(report.without_file) > 5 else "",
        )
    write_metadata(out_json, metadata)
    logger.info("wrote %s (%d entries)", out_json, len(metadata))
    return report


# --- clean captions and tags (sd-scripts' rules) ----------------------------------------------------
_HAIR_LENGTH = re.compile(r", (long|short|medium) hair, ")
_HAIR_CUT = re.compile(r", (bob|hime) cut, ")
_HAIR = re.compile(r", ([\w\-]+) hair, ")
_WORD = re.compile(r", ([\w\-]+|hair ornament), ")
#: with several people in the picture, each of these is removed when it matches more than once
_REMOVE_WHEN_SEVERAL_PEOPLE = (
    _HAIR_LENGTH,
    _HAIR_CUT,
    re.compile(r", [\w\-]+ eyes, "),
    re.compile(r", ([\w\-]+ sleeves|sleeveless), "),
    re.compile(
        r", (ponytail|braid|ahoge|twintails|[\w\-]+ bun|single hair bun|single side bun|two side up|two tails"
        r"|[\w\-]+ braid|sidelocks), "
    ),
)
_HOLD = ", @@@, "

#: caption replacements, applied in order, each repeated until nothing changes (sd-scripts' list)
CAPTION_REPLACEMENTS: tuple[tuple[str, str], ...] = (
    ("anime anime", "anime"),
    ("young ", ""),
    ("anime girl", "girl"),
    ("cartoon female", "girl"),
    ("cartoon lady", "girl"),
    ("cartoon character", "girl"),
    ("cartoon woman", "girl"),
    ("cartoon women", "girls"),
    ("cartoon girl", "girl"),
    ("anime female", "girl"),
    ("anime lady", "girl"),
    ("anime character", "girl"),
    ("anime woman", "girl"),
    ("anime women", "girls"),
    ("lady", "girl"),
    ("female", "girl"),
    ("woman", "girl"),
    ("women", "girls"),
    ("people", "girls"),
    ("person", "girl"),
    ("a cartoon figure", "a figure"),
    ("a cartoon image", "an image"),
    ("a cartoon picture", "a picture"),
    ("an anime cartoon image", "an image"),
    ("a cartoon anime drawing", "a drawing"),
    ("a cartoon drawing", "a drawing"),
    ("girl girl", "girl"),
)


def _drop_conflicting_features(tags: str) -> str:
    """Several people: drop hair lengths/cuts, eye colours, sleeves and hair styles named more than once, and
    hair colours named more than once (one shared hair length survives)."""
    for pattern in _REMOVE_WHEN_SEVERAL_PEOPLE:
        if len(pattern.findall(tags)) > 1:
            tags = pattern.sub("", tags)
    length = _HAIR_LENGTH.search(tags)  # "long hair" also matches the hair-colour pattern: hold it aside
    if length:
        tags = _HAIR_LENGTH.sub(_HOLD, tags)
    if len(_HAIR.findall(tags)) > 1:
        tags = _HAIR.sub("", tags)
    if length:
        tags = tags.replace(_HOLD, length.group())
    return tags


def clean_tags(image_key: str, tags: str) -> str:
    """sd-scripts' tag cleaning (``clean_captions_and_tags.py``), for tags separated by ``", "``:

    1. ``_`` becomes a space (``^_^`` kept); 2. a DeepDanbooru rating (``, rating:...``) and what follows are
    cut; 3. with ``girls``/``boys`` in the tags, features named for several people are dropped
    (:func:`_drop_conflicting_features`); 4. a one-word tag (or ``hair ornament``) that ends a longer tag is
    dropped (``shirt`` beside ``white shirt``).
    """
    tags = tags.replace("^_^", "^@@@^").replace("_", " ").replace("^@@@^", "^_^")
    parts = tags.split(", rating")
    if len(parts) > 1:
        if len(parts) > 2:
            logger.info("multiple ratings: %s %s", image_key, tags)
        tags = parts[0]
    # every tag between ", " and ", " (doubled so that neighbouring tags each keep their own commas)
    tags = ", " + tags.replace(", ", ", , ") + ", "
    if "girls" in tags or "boys" in tags:
        tags = _drop_conflicting_features(tags)
    for word in _WORD.findall(tags):
        if re.search(f", ((\\w+) )+{word}, ", tags):
            tags = tags.replace(f", {word}, ", "")
    tags = tags.replace(", , ", ", ")
    return tags[2:-2]


def clean_caption(caption: str) -> str:
    """sd-scripts' caption cleaning: :data:`CAPTION_REPLACEMENTS` in order, each until nothing changes."""
    for old, new in CAPTION_REPLACEMENTS:
        while old in caption:
            replaced = caption.replace(old, new)
            if replaced == caption:
                break
            caption = replaced
    return caption


def clean_metadata(in_json: str | Path, out_json: str | Path) -> tuple[int, int]:
    """Clean every entry's tags and caption; write ``out_json``. Returns (tags changed, captions changed).
    Entries without tags or caption are named in a warning (sd-scripts logs each as an error)."""
    metadata = read_metadata(in_json, "in_json")
    changed_tags = changed_captions = 0
    no_tags, no_caption = [], []
    for key, entry in metadata.items():
        for name, clean, missing in (
            ("tags", lambda t, k=key: clean_tags(k, t), no_tags),
            ("caption", clean_caption, no_caption),
        ):
            if entry.get(name) is None:
                missing.append(key)
                continue
            cleaned = clean(entry[name])
            if cleaned != entry[name]:
                logger.debug("%s %s: %r -> %r", key, name, entry[name], cleaned)
                changed_tags += name == "tags"
                changed_captions += name == "caption"
            entry[name] = cleaned
    for name, keys in (("tags", no_tags), ("caption", no_caption)):
        if keys:
            logger.warning(
                "%d entries have no %s: %s%s",
                len(keys),
                name,
                ", ".join(keys[:5]),
                " ..." if len(keys) > 5 else "",
            )
    write_metadata(out_json, metadata)
    logger.info("wrote %s (%d tags and %d captions changed)", out_json, changed_tags, changed_captions)
    return changed_tags, changed_captions


# --- buckets and latents ----------------------------------------------------------------------------
@dataclass
class BucketOptions:
    """prepare_buckets_latents' bucket options (sd-scripts' names); ``max_resolution`` is (width, height)."""

    max_resolution: tuple[int, int] = (512, 512)
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    bucket_no_upscale: bool = False


@dataclass
class PrepareLatentsReport:
    """What :func:`prepare_buckets_latents` did."""

    encoded: int = 0
    skipped_existing: int = 0
    unreadable: list[Path] = field(default_factory=list)
    #: keys added for pictures the input metadata did not list (they have no caption yet)
    new_keys: list[str] = field(default_factory=list)
    #: (width, height) bucket -> pictures
    buckets: dict[tuple[int, int], int] = field(default_factory=dict)


def parse_max_resolution(text: str) -> tuple[int, int]:
    """``"512,768"`` (or ``"512"``) -> (512, 768); :class:`UserError` otherwise."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [int(p) for p in (parts * 2 if len(parts) == 1 else parts)]
        if len(values) != 2 or min(values) <= 0:
            raise ValueError
    except ValueError:
        raise UserError(
            f"--max_resolution {text!r} is not 'width,height' in pixels (e.g. 512,512)."
        ) from None
    return values[0], values[1]


def _bucket_spec(opts: BucketOptions):
    from library.data.specs import DatasetSpec

    if opts.bucket_reso_steps < 1 or opts.min_bucket_reso > opts.max_bucket_reso:
        raise UserError(
            f"bucket options: bucket_reso_steps ({opts.bucket_reso_steps}) must be at least 1 and min_bucket_reso "
            f"({opts.min_bucket_reso}) at most max_bucket_reso ({opts.max_bucket_reso})."
        )
    if opts.bucket_reso_steps % 8:
        logger.warning(
            "bucket_reso_steps %d is not a multiple of 8: latents are 1/8 of the bucket, so buckets are "
            "trained at multiples of 8.",
            opts.bucket_reso_steps,
        )
    return DatasetSpec(
        resolution=opts.max_resolution,
        enable_bucket=True,
        min_bucket_reso=opts.min_bucket_reso,
        max_bucket_reso=opts.max_bucket_reso,
        bucket_reso_steps=opts.bucket_reso_steps,
        bucket_no_upscale=opts.bucket_no_upscale,
    )


def _encode(model, paths_and_buckets: list[tuple[Path, tuple[int, int]]], flip_aug: bool, dtype, generator):
    """Unscaled VAE samples (B, C, h, w) of centre-cropped pictures (and of their mirror images)."""
    import torch

    from library.data.augment import to_tensor
    from library.data.buckets import resize_and_crop
    from library.data.images import load_image

    pixels = torch.stack(
        [to_tensor(resize_and_crop(load_image(p), bucket, None)[0]) for p, bucket in paths_and_buckets]
    )
    vae = model.vae
    with torch.no_grad():
        batches = [pixels] + ([torch.flip(pixels, dims=[-1])] if flip_aug else [])
        out = [
            vae.encode(b.to(vae.device, dtype)).latent_dist.sample(generator=generator).float().cpu()
            for b in batches
        ]
    if any(torch.isnan(t).any() for t in out):
        raise UserError(
            f"the VAE gave NaN latents for one of {[str(p) for p, _ in paths_and_buckets]}: use "
            f"--mixed_precision no (float32), or another VAE."
        )
    return out[0], (out[1] if flip_aug else None)


def prepare_buckets_latents(
    train_data_dir: str | Path,
    in_json: str | Path,
    out_json: str | Path,
    model_name_or_path: str,
    opts: BucketOptions,
    batch_size: int = 1,
    mixed_precision: str = "no",
    full_path: bool = False,
    flip_aug: bool = False,
    skip_existing: bool = False,
    recursive: bool = False,
) -> PrepareLatentsReport:
    """Assign each picture of ``train_data_dir`` its bucket, store it as ``train_resolution`` (multiples of 8)
    in the metadata, encode its centre crop with the model's VAE and save the latents beside the picture
    (:func:`library.data.metadata.write_prepared_latents`, sd-scripts' ``<stem>_<WWWW>x<HHHH>_<sd|sdxl>.npz``).
    Writes ``out_json``. ``skip_existing`` keeps latent files that already fit the bucket."""
    import torch

    from library.data.images import probe_image
    from library.data.metadata import (
        centre_crop_ltrb,
        prepared_latents_path,
        read_prepared_latents,
        write_prepared_latents,
    )
    from library.data.scan import assign_bucket, predefined_buckets
    from library.errors import DatasetError
    from library.models.loading import load_base_model
    from library.tools.dataset.files import find_images

    if recursive and not full_path:
        raise UserError(
            "--recursive needs --full_path: pictures of different folders may share a stem, so the "
            "metadata keys must be their paths. Add --full_path."
        )
    spec = _bucket_spec(opts)
    buckets = predefined_buckets(spec)
    images = find_images(train_data_dir, recursive)
    metadata = read_metadata(in_json, "in_json")
    model = load_base_model(model_name_or_path)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)
    dtype = dtype if device.type == "cuda" else torch.float32
    model.vae.to(device)
    if dtype != torch.float32:
        model.vae.to(dtype=dtype)
    generator = torch.Generator(device).manual_seed(0)
    suffix = model.adapter.latent_cache_suffix
    factor = 2 ** (len(model.vae.config.block_out_channels) - 1)
    report = PrepareLatentsReport()
    todo: dict[tuple[int, int], list[tuple[Path, tuple[int, int]]]] = {}
    for image in images:
        try:
            size = probe_image(image)
            bucket = assign_bucket(size, spec, buckets)
        except (DatasetError, ValueError) as exc:
            logger.warning("skipping '%s': %s", image, exc)
            report.unreadable.append(image)
            continue
        key = image_key(image, full_path)
        if key not in metadata:
            report.new_keys.append(key)
        metadata.setdefault(key, {})["train_resolution"] = [
            bucket[0] - bucket[0] % 8,
            bucket[1] - bucket[1] % 8,
        ]
        report.buckets[bucket] = report.buckets.get(bucket, 0) + 1
        npz = prepared_latents_path(image, size, suffix)
        if skip_existing and read_prepared_latents(npz, image, size, bucket, factor, flip_aug) is not None:
            report.skipped_existing += 1
            continue
        todo.setdefault(bucket, []).append((image, size))
    for bucket, group in sorted(todo.items()):
        for i in range(0, len(group), max(1, batch_size)):
            chunk = group[i : i + max(1, batch_size)]
            latents, flipped = _encode(model, [(p, bucket) for p, _ in chunk], flip_aug, dtype, generator)
            for k, (image, size) in enumerate(chunk):
                write_prepared_latents(
                    prepared_latents_path(image, size, suffix),
                    image,
                    latents[k],
                    None if flipped is None else flipped[k],
                    size,
                    centre_crop_ltrb(size, bucket),
                )
                report.encoded += 1
    if report.new_keys:
        logger.warning(
            "%d pictures were not in %s and have no caption yet (only train_resolution): %s%s",
            len(report.new_keys),
            in_json,
            ", ".join(report.new_keys[:5]),
            " ..." if len(report.new_keys) > 5 else "",
        )
    for bucket, count in sorted(report.buckets.items()):
        logger.info("bucket %dx%d: %d", bucket[0], bucket[1], count)
    write_metadata(out_json, metadata)
    logger.info("wrote %s; latents: %d encoded, %d kept", out_json, report.encoded, report.skipped_existing)
    return report


# -- the two merge tools' command line (tools/merge_captions_to_metadata.py, tools/merge_dd_tags_to_metadata.py) --

#: field -> (default file extension, what the files hold, plural for the report)
MERGE_FIELDS = {"caption": (".caption", "caption", "captions"), "tags": (".txt", "tag", "tag lists")}


def merge_parser(field: str, description: str):
    """sd-scripts' arguments of the merge tool for ``field`` ("caption" or "tags")."""
    import argparse

    extension, kind, _ = MERGE_FIELDS[field]
    p = argparse.ArgumentParser(description=description)
    p.add_argument("train_data_dir", help="folder of the training pictures")
    p.add_argument("out_json", help="metadata file to write")
    replaced = "captions" if field == "caption" else "tags"
    p.add_argument("--in_json", help=f"metadata file to read (unset: OUT_JSON when it exists); its {replaced} are "
                                     "replaced")
    p.add_argument("--caption_extension", default=extension,
                   help=f"extension of the {kind} files (default {extension})")
    if field == "caption":
        p.add_argument("--caption_extention", dest="caption_extension",
                       help=argparse.SUPPRESS)  # sd-scripts' old spelling
    p.add_argument("--full_path", action="store_true",
                   help="keys are the pictures' paths (several folders in one file)")
    p.add_argument("--recursive", action="store_true", help="also the pictures in subfolders (needs --full_path)")
    p.add_argument("--debug", action="store_true")
    return p


def merge_main(field: str, args) -> int:
    """Run the merge tool for ``field`` on parsed ``args``; prints what it merged."""
    report = merge_texts(args.train_data_dir, args.out_json, field, args.caption_extension, args.in_json,
                         args.full_path, args.recursive)
    missing = (f"; {len(report.without_file)} pictures have no {args.caption_extension} file"
               if report.without_file else "")
    print(f"merged {report.merged} {MERGE_FIELDS[field][2]} into {args.out_json}{missing}")
    return 0
