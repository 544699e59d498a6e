"""WD14 tagging of a folder: preprocessing, tag selection (pure) and the batched, pipelined run.

Tag selection follows sd-scripts' ``tag_images_by_wd14_tagger.py``: general tags (category 0) over
``general_threshold`` then character tags (category 4) over ``character_threshold``, both in the
order of ``selected_tags.csv``; the rating (category 9) is the argmax of the rating columns.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from library.data.images import load_image
from library.tools.dataset.files import caption_path, find_images, read_text, write_caption
from library.tools.dataset.pipeline import iter_loaded_batches
from library.tools.dataset.tags import dedupe, join_caption, split_caption
from library.tools.dataset.wd14_model import (
    CATEGORY_CHARACTER,
    CATEGORY_GENERAL,
    CATEGORY_RATING,
    TagTable,
    WD14Model,
)

logger = logging.getLogger(__name__)


def preprocess_image(img: Image.Image, size: int) -> np.ndarray:
    """An RGB picture -> the tagger input ``(size, size, 3)`` float32 BGR in 0-255.

    The picture is padded to a square with white (the extra ``pad // 2`` on the top/left, the rest on
    the bottom/right), resized to ``size`` (area averaging when shrinking, Lanczos when enlarging, as
    sd-scripts does with cv2 INTER_AREA / INTER_LANCZOS4) and its channels reversed to BGR.
    """
    img = img.convert("RGB")
    side = max(img.size)
    if img.size != (side, side):
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
        img = square
    if side != size:
        method = Image.Resampling.BOX if side > size else Image.Resampling.LANCZOS
        img = img.resize((size, size), method)
    # swapping the channels in PIL gives a contiguous array (a [..., ::-1] view makes batching 4x slower)
    return np.asarray(Image.merge("RGB", img.split()[::-1]), dtype=np.float32)


@dataclass(frozen=True)
class TagSelection:
    """How probabilities become a caption (sd-scripts' option names)."""

    general_threshold: float = 0.35
    character_threshold: float = 0.35
    remove_underscore: bool = False
    undesired_tags: tuple[str, ...] = ()
    always_first_tags: tuple[str, ...] = ()
    character_tags_first: bool = False
    tag_replacement: tuple[tuple[str, str], ...] = ()
    use_rating_tags: bool = False
    use_rating_tags_as_last_tag: bool = False


def display_name(name: str, selection: TagSelection) -> str:
    """A tag as written: underscores -> spaces for tags longer than 3 characters (so ``^_^`` stays), then
    the first matching ``tag_replacement``."""
    if selection.remove_underscore and len(name) > 3:
        name = name.replace("_", " ")
    for source, target in selection.tag_replacement:
        if name == source:
            return target
    return name


def select_tags(probs: np.ndarray, table: TagTable, selection: TagSelection) -> list[str]:
    """The tags of one picture from its ``(n_tags,)`` probabilities, in caption order.

    Order: [rating] + general (csv order) + character (csv order), or character before general with
    ``character_tags_first``; the rating goes last with ``use_rating_tags_as_last_tag``; then the
    ``always_first_tags`` that are present move to the front in the order given. Undesired tags
    (compared after underscore removal and replacement) are dropped.
    """
    undesired = set(selection.undesired_tags)

    def pick(category: int, threshold: float) -> list[str]:
        idx = np.nonzero((table.categories == category) & (probs >= threshold))[0]
        return [n for n in (display_name(table.names[i], selection) for i in idx) if n not in undesired]

    general = pick(CATEGORY_GENERAL, selection.general_threshold)
    character = pick(CATEGORY_CHARACTER, selection.character_threshold)
    tags = character + general if selection.character_tags_first else general + character
    if selection.use_rating_tags or selection.use_rating_tags_as_last_tag:
        rating_idx = np.nonzero(table.categories == CATEGORY_RATING)[0]
        if len(rating_idx):
            rating = display_name(table.names[rating_idx[np.argmax(probs[rating_idx])]], selection)
            if rating not in undesired:
                tags = tags + [rating] if selection.use_rating_tags_as_last_tag else [rating] + tags
    first = [t for t in selection.always_first_tags if t in tags]
    return dedupe(first + [t for t in tags if t not in first])


def merge_with_existing(existing_text: str, new_tags: Sequence[str], separator: str) -> list[str]:
    """``--append_tags``: the tags already in the caption, then the new ones not already there."""
    old = split_caption(existing_text.splitlines()[0] if existing_text.strip() else "", separator)
    return old + [t for t in new_tags if t not in old]


@dataclass
class TaggingReport:
    """What a tagging run did. Times are seconds of wall clock."""

    images: int = 0
    written: list[Path] = field(default_factory=list)
    kept_existing: list[Path] = field(default_factory=list)
    unreadable: list[Path] = field(default_factory=list)
    frequency: Counter[str] = field(default_factory=Counter)
    seconds_total: float = 0.0
    seconds_model: float = 0.0


@dataclass(frozen=True)
class TaggingRun:
    """Where and how to write: caption extension/separator, overwrite policy, batching."""

    caption_extension: str = ".txt"
    caption_separator: str = ", "
    append_tags: bool = False
    overwrite: bool = False
    batch_size: int = 1
    workers: int = 4
    recursive: bool = False


def _write_one(path: Path, tags: list[str], run: TaggingRun, report: TaggingReport) -> None:
    target = caption_path(path, run.caption_extension)
    if target.exists() and run.append_tags:
        tags = merge_with_existing(read_text(target), tags, run.caption_separator)
    if write_caption(target, join_caption(tags, run.caption_separator), run.overwrite or run.append_tags):
        report.written.append(target)
    else:
        report.kept_existing.append(target)


def tag_folder(
    folder: str | Path,
    model: WD14Model,
    selection: TagSelection,
    run: TaggingRun,
    on_image: Callable[[Path, list[str]], None] | None = None,
) -> TaggingReport:
    """Tag every picture of ``folder`` and write its caption; unreadable pictures are skipped.

    An existing caption is kept unless ``run.overwrite`` or ``run.append_tags``.
    """
    started = time.perf_counter()
    paths = find_images(folder, run.recursive)
    report = TaggingReport(images=len(paths))

    def load(path: Path) -> np.ndarray:
        return preprocess_image(load_image(path), model.input_size)

    for batch in iter_loaded_batches(paths, load, run.batch_size, run.workers, report.unreadable):
        t0 = time.perf_counter()
        probs = model.predict(np.stack([array for _, array in batch]))
        report.seconds_model += time.perf_counter() - t0
        for (path, _), row in zip(batch, probs, strict=True):
            tags = select_tags(row, model.tags, selection)
            report.frequency.update(tags)
            if on_image is not None:
                on_image(path, tags)
            _write_one(path, tags, run, report)
    if report.kept_existing:
        logger.warning(
            "%d pictures already had a caption that was kept (use --overwrite to replace or --append_tags "
            "to add to it), e.g. '%s'.",
            len(report.kept_existing),
            report.kept_existing[0],
        )
    report.seconds_total = time.perf_counter() - started
    return report


def format_frequency(frequency: Counter[str]) -> str:
    """The ``--frequency_tags`` table: tags by descending count (ties by name)."""
    rows = sorted(frequency.items(), key=lambda kv: (-kv[1], kv[0]))
    width = max((len(t) for t, _ in rows), default=3)
    return "\n".join([f"{'tag':<{width}}  count"] + [f"{t:<{width}}  {n:>5}" for t, n in rows])
