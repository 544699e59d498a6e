"""WD14 tagging of a folder: preprocessing, tag selection (pure) and the batched, pipelined run.

Tag selection follows sd-scripts' ``tag_images_by_wd14_tagger.py``: general tags (category 0) over
``general_threshold`` then character tags (category 4) over ``character_threshold``, both in the
order of ``selected_tags.csv``; the rating (category 9) is the argmax of the rating columns. Tables
with v3 categories also give artist, copyright, meta and model tags (each over its own threshold, in
csv order among the general tags) and a quality tag (the argmax of the quality columns).
"""

from __future__ import annotations

import json
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
from library.tools.dataset.pipeline import iter_loaded_batches, raise_none_readable
from library.tools.dataset.tags import dedupe, join_caption, split_caption
from library.tools.dataset.wd14_model import (
    CATEGORY_ARTIST,
    CATEGORY_CHARACTER,
    CATEGORY_COPYRIGHT,
    CATEGORY_GENERAL,
    CATEGORY_META,
    CATEGORY_MODEL,
    CATEGORY_QUALITY,
    CATEGORY_RATING,
    TagTable,
    WD14Model,
)
from library.util.atomic import write_text_atomic

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
    copyright_threshold: float = 0.35
    artist_threshold: float = 0.35
    meta_threshold: float = 0.35
    model_threshold: float = 0.35
    use_quality_tags: bool = False
    use_quality_tags_as_last_tag: bool = False
    character_tag_expand: bool = False


#: categories chosen by a threshold -> the TagSelection field holding it; character tags are kept apart
#: (``character_tags_first``), the others form the general block in csv order.
THRESHOLD_FIELDS = {
    CATEGORY_GENERAL: "general_threshold",
    CATEGORY_ARTIST: "artist_threshold",
    CATEGORY_COPYRIGHT: "copyright_threshold",
    CATEGORY_META: "meta_threshold",
    CATEGORY_MODEL: "model_threshold",
    CATEGORY_CHARACTER: "character_threshold",
}


def display_name(name: str, selection: TagSelection, length_of: str | None = None) -> str:
    """A tag as written: underscores -> spaces for tags longer than 3 characters (so ``^_^`` stays;
    the length is that of ``length_of`` when given), then the first matching ``tag_replacement``."""
    if selection.remove_underscore and len(name if length_of is None else length_of) > 3:
        name = name.replace("_", " ")
    for source, target in selection.tag_replacement:
        if name == source:
            return target
    return name


def expand_character_tag(name: str) -> list[str]:
    """``--character_tag_expand``: ``chara_name_(series)`` -> ``["chara_name", "series"]``.

    As sd-scripts: only a tag ending in ``)`` is split, at its last ``(``; one ``_`` before that ``(``
    is dropped and the ``)`` removed, so ``chara_(costume)_(series)`` -> ``["chara_(costume)",
    "series"]``. Other tags (and a tag with no ``(``) come back unchanged; empty parts are dropped.
    """
    cut = name.rfind("(")
    if not name.endswith(")") or cut < 0:
        return [name]
    head = name[:cut]
    head = head[:-1] if head.endswith("_") else head
    return [part for part in (head, name[cut + 1 :].replace(")", "")) if part]


def _written_names(name: str, category: int, selection: TagSelection) -> list[str]:
    """The caption tags one csv row becomes (two with ``character_tag_expand`` on ``name_(series)``)."""
    if category == CATEGORY_CHARACTER and selection.character_tag_expand:
        return [display_name(part, selection, length_of=name) for part in expand_character_tag(name)]
    return [display_name(name, selection)]


def _argmax_tag(probs: np.ndarray, table: TagTable, category: int, selection: TagSelection) -> str | None:
    """The written name of the most probable tag of ``category`` (ratings, quality), or None."""
    idx = np.nonzero(table.categories == category)[0]
    if not len(idx):
        return None
    best = display_name(table.names[idx[np.argmax(probs[idx])]], selection)
    return None if best in set(selection.undesired_tags) else best


def select_tags(probs: np.ndarray, table: TagTable, selection: TagSelection) -> list[str]:
    """The tags of one picture from its ``(n_tags,)`` probabilities, in caption order.

    Order: [rating] [quality] + general block + character (csv order), or character before the
    general block with ``character_tags_first``. The general block holds, in csv order, the general,
    artist, copyright, meta and model tags over their thresholds (a threshold > 1 disables a
    category). The quality tag goes last with ``use_quality_tags_as_last_tag`` and the rating after it
    with ``use_rating_tags_as_last_tag``; then the ``always_first_tags`` that are present move to the
    front in the order given. Undesired tags (compared after underscore removal and replacement) are
    dropped.
    """
    undesired = set(selection.undesired_tags)
    thresholds = np.full(len(table.names), np.inf)
    for category, field_name in THRESHOLD_FIELDS.items():
        thresholds[table.categories == category] = getattr(selection, field_name)
    general: list[str] = []
    character: list[str] = []
    for i in np.nonzero(probs >= thresholds)[0]:
        category = int(table.categories[i])
        names = _written_names(table.names[i], category, selection)
        (character if category == CATEGORY_CHARACTER else general).extend(
            n for n in names if n not in undesired
        )
    tags = character + general if selection.character_tags_first else general + character
    head, tail = [], []
    for category, first, last in (
        (CATEGORY_RATING, selection.use_rating_tags, selection.use_rating_tags_as_last_tag),
        (CATEGORY_QUALITY, selection.use_quality_tags, selection.use_quality_tags_as_last_tag),
    ):
        best = _argmax_tag(probs, table, category, selection) if first or last else None
        if best is not None:
            (tail if last else head).append(best)
    tags = head + tags + tail[::-1]
    first_tags = [t for t in selection.always_first_tags if t in tags]
    return dedupe(first_tags + [t for t in tags if t not in first_tags])


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
    output_path: Path | None = None


def write_tags_file(output_path: str | Path, entries: dict[str, dict]) -> Path:
    """``--output_path``: all captions in one file, written atomically, as sd-scripts writes them.

    ``.jsonl``: one line per picture ``{"image_path": p, "caption": tags, "image_size": [w, h]}``;
    any other name: one JSON object ``{image path: {"tags": "a, b", "image_size": [w, h]}}`` (indent 4,
    UTF-8 kept as is). ``entries`` maps the picture path to ``{"tags": ..., "image_size": ...}``.
    """
    output_path = Path(output_path)
    if output_path.suffix.lower() == ".jsonl":
        lines = [
            json.dumps({"image_path": p, "caption": e["tags"], "image_size": e["image_size"]})
            for p, e in entries.items()
        ]
        text = "".join(line + "\n" for line in lines)
    else:
        text = json.dumps(entries, ensure_ascii=False, indent=4) + "\n"
    output_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output_path, text)
    return output_path


def _caption_text(path: Path, tags: list[str], run: TaggingRun) -> str:
    target = caption_path(path, run.caption_extension)
    if target.exists() and run.append_tags:
        tags = merge_with_existing(read_text(target), tags, run.caption_separator)
    return join_caption(tags, run.caption_separator)


def _write_one(path: Path, tags: list[str], run: TaggingRun, report: TaggingReport) -> None:
    target = caption_path(path, run.caption_extension)
    if write_caption(target, _caption_text(path, tags, run), run.overwrite or run.append_tags):
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

    An existing caption is kept unless ``run.overwrite`` or ``run.append_tags``. With
    ``run.output_path`` no caption file is written: all captions go to that one JSON/JSONL file
    (:func:`write_tags_file`; with ``append_tags`` an existing caption file's tags come first).
    """
    started = time.perf_counter()
    paths = find_images(folder, run.recursive)
    report = TaggingReport(images=len(paths))
    entries: dict[str, dict] = {}

    def load(path: Path) -> tuple[np.ndarray, tuple[int, int]]:
        img = load_image(path)
        return preprocess_image(img, model.input_size), img.size

    for batch in iter_loaded_batches(paths, load, run.batch_size, run.workers, report.unreadable):
        t0 = time.perf_counter()
        probs = model.predict(np.stack([array for _, (array, _) in batch]))
        report.seconds_model += time.perf_counter() - t0
        for (path, (_, size)), row in zip(batch, probs, strict=True):
            tags = select_tags(row, model.tags, selection)
            report.frequency.update(tags)
            if on_image is not None:
                on_image(path, tags)
            if run.output_path is None:
                _write_one(path, tags, run, report)
            else:
                entries[str(path)] = {"tags": _caption_text(path, tags, run), "image_size": list(size)}
    if paths and len(report.unreadable) == len(paths):
        raise_none_readable(folder, report.unreadable)
    if run.output_path is not None:
        report.written.append(write_tags_file(run.output_path, entries))
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
