"""Build the DreamBooth folder layout from raw pictures: ``OUT/train/<repeats>_<trigger> <class>/`` and
``OUT/reg/<repeats>_<class>/``, copying or linking pictures and captions, with optional resize/crop and
aspect-ratio grouping.

Grouping (as kohya_ss' "group images"): pictures sorted by aspect ratio are cut into groups of
``group_size``; every picture of a group is cropped to the group's mean aspect ratio (and to one size
when a resolution is given), so a batch of that size holds pictures of one shape.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from library.config.values import file_name_problem
from library.data.buckets import Size, resize_and_crop
from library.data.folders import REPEATS_MAX
from library.data.images import load_image, probe_image
from library.errors import DatasetError, UserError
from library.tools.dataset.files import caption_path, find_images
from library.util.atomic import atomic_path

logger = logging.getLogger(__name__)

SAVE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}
LINK_MODES = ("copy", "hardlink", "symlink")
RESIZE_MODES = ("keep", "crop")


@dataclass(frozen=True)
class PrepareOptions:
    """How to build the layout. ``resolution`` None keeps the pictures' sizes."""

    trigger: str
    class_name: str
    repeats: int = 10
    reg_repeats: int = 1
    caption_extension: str = ".txt"
    link: str = "copy"
    resolution: int | None = None
    resize_mode: str = "keep"
    group_size: int | None = None
    steps: int = 64
    overwrite: bool = False
    recursive: bool = False


@dataclass
class PrepareReport:
    """Folders written, pictures placed, pictures skipped."""

    train_dir: Path | None = None
    reg_dir: Path | None = None
    placed: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)


def keep_aspect_size(size: Size, resolution: int, steps: int = 1) -> Size:
    """Scale ``size`` down (never up) so that its area is at most ``resolution²``; round down to ``steps``."""
    w, h = size
    scale = min(1.0, resolution / math.sqrt(w * h))
    return max(steps, int(w * scale) // steps * steps), max(steps, int(h * scale) // steps * steps)


def group_target(aspects: list[float], resolution: int | None, steps: int, sizes: list[Size]) -> list[Size]:
    """The common size of a group: the mean aspect ratio at area ``resolution²`` (multiples of
    ``steps``), or without a resolution, the largest crop of each picture at that ratio."""
    ratio = sum(aspects) / len(aspects)
    if resolution:
        w = max(steps, int(math.sqrt(resolution * resolution * ratio)) // steps * steps)
        h = max(steps, int(resolution * resolution / w) // steps * steps)
        return [(w, h)] * len(sizes)
    return [(min(w, round(h * ratio)), min(h, round(w / ratio))) for w, h in sizes]


def _targets(paths: list[Path], sizes: dict[Path, Size], opts: PrepareOptions) -> dict[Path, Size | None]:
    """Per picture the output size, or None to place the file unchanged."""
    if opts.group_size:
        order = sorted(paths, key=lambda p: sizes[p][0] / sizes[p][1])
        out: dict[Path, Size | None] = {}
        for start in range(0, len(order), opts.group_size):
            group = order[start : start + opts.group_size]
            aspects = [sizes[p][0] / sizes[p][1] for p in group]
            out.update(
                zip(
                    group,
                    group_target(aspects, opts.resolution, opts.steps, [sizes[p] for p in group]),
                    strict=True,
                )
            )
        return out
    if not opts.resolution:
        return dict.fromkeys(paths)
    if opts.resize_mode == "crop":
        return dict.fromkeys(paths, (opts.resolution, opts.resolution))
    return {p: keep_aspect_size(sizes[p], opts.resolution) for p in paths}


def _place_file(source: Path, target: Path, link: str) -> None:
    if link != "copy" and (target.exists() or target.is_symlink()):
        target.unlink()
    if link == "hardlink":
        os.link(source, target)
    elif link == "symlink":
        target.symlink_to(source.resolve())
    else:
        with atomic_path(target) as tmp:
            shutil.copy2(source, tmp)


def _write_resized(source: Path, target: Path, size: Size) -> None:
    img = load_image(source)
    if img.size != size:
        if img.width * size[1] == img.height * size[0]:
            img = img.resize(size, Image.Resampling.LANCZOS)
        else:
            img = resize_and_crop(img, size)[0]
    save_format = SAVE_FORMATS[target.suffix.lower()]
    with atomic_path(target) as tmp:
        img.save(tmp, format=save_format, **({"quality": 95} if save_format in ("JPEG", "WEBP") else {}))


def _check_out(folder: Path, overwrite: bool) -> None:
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise UserError(
            f"Output folder '{folder}' already holds files. Choose another output folder or pass "
            f"--overwrite to replace files of the same name."
        )


def flat_names(source: Path, paths: list[Path]) -> dict[Path, str]:
    """The file name of each picture in the flat output folder: its path below ``source`` with the
    folders joined by ``_`` (``sub/deeper/a.png`` -> ``sub_deeper_a.png``; ``a.png`` stays).

    Raises :class:`UserError` naming both pictures when two end up with the same name.
    """
    names: dict[Path, str] = {}
    owner: dict[str, Path] = {}
    for path in paths:
        name = "_".join(path.relative_to(source).parts)
        if name.lower() in owner:
            raise UserError(
                f"'{owner[name.lower()]}' and '{path}' would both be placed as '{name}'. Rename one of "
                f"them (pictures of subfolders are named <subfolder>_<name>)."
            )
        owner[name.lower()] = path
        names[path] = name
    return names


def place_pictures(source: Path, out: Path, opts: PrepareOptions, report: PrepareReport) -> None:
    """Place the readable pictures of ``source`` (of its subfolders too with ``opts.recursive``, named
    by :func:`flat_names`) and their captions into ``out``."""
    _check_out(out, opts.overwrite)
    paths, sizes, skipped = [], {}, 0
    inside_out = out.resolve()
    for path in find_images(source, opts.recursive):
        if inside_out in path.resolve().parents:  # the output folder may sit inside the raw folder
            continue
        try:
            sizes[path] = probe_image(path)
            paths.append(path)
        except DatasetError as exc:
            logger.warning("Skipping: %s", exc)
            report.skipped.append(path)
            skipped += 1
    if skipped and not paths:
        raise DatasetError(
            f"None of the {skipped} pictures in '{source}' can be read (each is named in a warning above: "
            "unreadable, truncated or over the decompression-bomb size limit). Re-export them as PNG or JPEG."
        )
    names = flat_names(source, paths)
    out.mkdir(parents=True, exist_ok=True)
    for path, size in _targets(paths, sizes, opts).items():
        target = out / names[path]
        if size is None:
            _place_file(path, target, opts.link)
        else:
            _write_resized(path, target, size)
        report.placed.append(target)
        cap = caption_path(path, opts.caption_extension)
        if cap.is_file():
            _place_file(cap, caption_path(target, opts.caption_extension), "copy")


def concept_folder_name(repeats: int, *tokens: str) -> str:
    """``10, "sks", "dog"`` -> ``"10_sks dog"`` (empty tokens left out)."""
    return f"{repeats}_{' '.join(t.strip() for t in tokens if t and t.strip())}"


#: the largest --resolution: 8192² pixels stay below PIL's decompression-bomb limit
RESOLUTION_MAX = 8192


def check_options(opts: PrepareOptions) -> None:
    """Raise ``UserError`` naming the command-line flag of the first option that cannot work."""
    if opts.link not in LINK_MODES or opts.resize_mode not in RESIZE_MODES:
        raise UserError(
            f"--link must be one of {', '.join(LINK_MODES)} and --resize_mode one of "
            f"{', '.join(RESIZE_MODES)}."
        )
    if not opts.class_name.strip():
        raise UserError("--class_name is empty: give the class word of the pictures, e.g. dog.")
    for flag, value in (("--repeats", opts.repeats), ("--reg_repeats", opts.reg_repeats)):
        if not 1 <= value <= REPEATS_MAX:
            raise UserError(
                f"{flag} {value} is out of range: it must be 1 to {REPEATS_MAX} (the number of times "
                "each picture is used per epoch; 10 is usual for a LoRA)."
            )
    for flag, value, top in (
        ("--resolution", opts.resolution, RESOLUTION_MAX),
        ("--group_size", opts.group_size, None),
        ("--bucket_reso_steps", opts.steps, RESOLUTION_MAX),
    ):
        if value is not None and (value < 1 or (top is not None and value > top)):
            bound = f"1 to {top}" if top else "at least 1"
            raise UserError(f"{flag} {value} is out of range: it must be {bound}.")
    ext = opts.caption_extension
    problem = file_name_problem(ext) if ext.strip(".") else "is empty; give one such as .txt"
    if problem:
        raise UserError(
            f"--caption_extension {ext!r} {problem}: captions are written beside the pictures, "
            "e.g. --caption_extension .txt."
        )
    check_concept_words(opts)


def check_concept_words(opts: PrepareOptions) -> None:
    """Raise ``UserError`` when the trigger or class word could not be part of one folder name inside the
    output (``../../x``, a separator, a control character such as a newline)."""
    for flag, word in (("--trigger", opts.trigger), ("--class_name", opts.class_name)):
        if not word.strip():
            continue
        problem = file_name_problem(word)
        if problem:
            raise UserError(
                f"{flag} {word!r} {problem}: it becomes part of a folder name inside the output folder. "
                "Give a plain word such as 'dog' (spaces are fine)."
            )


def prepare_dataset(
    images_dir: str | Path,
    out_dir: str | Path,
    opts: PrepareOptions,
    reg_images_dir: str | Path | None = None,
) -> PrepareReport:
    """Build ``out_dir/train/<repeats>_<trigger> <class>`` (and ``out_dir/reg/<reg_repeats>_<class>``)."""
    check_options(opts)
    for flag, folder in (("images_dir", images_dir), ("--reg_dir", reg_images_dir)):
        if folder is not None and not Path(folder).is_dir():  # both before anything is written
            raise UserError(f"{flag} '{folder}' is not a folder. Give the folder that holds the pictures.")
    out_dir = Path(out_dir)
    report = PrepareReport()
    report.train_dir = out_dir / "train" / concept_folder_name(opts.repeats, opts.trigger, opts.class_name)
    place_pictures(Path(images_dir), report.train_dir, opts, report)
    if reg_images_dir is not None:
        report.reg_dir = out_dir / "reg" / concept_folder_name(opts.reg_repeats, opts.class_name)
        place_pictures(Path(reg_images_dir), report.reg_dir, opts, report)
    return report
