"""Per-picture caption review: a folder's captions as tag lists, edited one picture or a selection at a time,
undone step by step, saved atomically with a backup of every file replaced.

Tag operations are pure functions ``list[str] -> list[str]``; with a ``trigger`` word every edited caption
starts with it (it is added when missing) and an edit that would remove, rename or move it is refused.
Only the first non-empty line of a caption file holds the tags (as the dataset doctor and the tag
statistics read it); other lines are kept as they are.

Backups go where ``edit_captions.py`` puts its own: ``<folder>/.caption_backups/<time>/<name>.txt``, one
timestamped folder per save. A ``<name>.txt.bak`` beside the picture would be overwritten by the second
save (losing the original text) and clutter the training folder; the hidden folder is skipped by the
trainer's and the tools' picture listing, and keeps every version.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from library.data.folders import IMAGE_EXTENSIONS
from library.errors import UserError
from library.tools.dataset.edit import TagEdit
from library.tools.dataset.files import (
    backup_file,
    backup_root,
    caption_path,
    find_images,
    normalise_extension,
    read_text,
)
from library.tools.dataset.stats import FolderTagStats, tag_stats
from library.tools.dataset.tags import dedupe, join_caption, parse_tag_list, replace_tag, split_caption
from library.util.atomic import write_text_atomic

logger = logging.getLogger(__name__)

#: undo steps kept (older ones are dropped)
UNDO_LIMIT = 200


# --- pure tag operations ----------------------------------------------------------------------------


def pin_trigger(tags: Sequence[str], trigger: str | None) -> list[str]:
    """``tags`` with ``trigger`` first (added when missing); unchanged without a trigger."""
    if not trigger:
        return list(tags)
    return [trigger, *(t for t in tags if t != trigger)]


def _refuse_trigger(tag: str, trigger: str | None, what: str) -> None:
    if trigger and tag == trigger:
        raise UserError(
            f"'{tag}' is the trigger word, pinned first in every caption: it cannot be {what}. Clear the "
            "trigger word box to edit it like any other tag."
        )


def add_tag(
    tags: Sequence[str], new: str, position: int | None = None, trigger: str | None = None
) -> list[str]:
    """Insert the tags of ``new`` (``"a, b"`` adds two) at ``position`` (None: at the end; counted from 0 and
    clamped; never before the trigger). Tags already present stay where they are."""
    added = [t for t in parse_tag_list(new) if t not in tags]
    out = pin_trigger(tags, trigger) if added else list(tags)
    low = 1 if trigger else 0
    at = len(out) if position is None else min(max(int(position), low), len(out))
    return pin_trigger(dedupe([*out[:at], *added, *out[at:]]), trigger)


def remove_tag(tags: Sequence[str], unwanted: str, trigger: str | None = None) -> list[str]:
    """Drop the tags of ``unwanted`` (``"a, b"``: both)."""
    drop = set(parse_tag_list(unwanted))
    for tag in drop:
        _refuse_trigger(tag, trigger, "removed")
    if not drop & set(tags):
        return list(tags)
    return pin_trigger([t for t in tags if t not in drop], trigger)


def rename_tag(tags: Sequence[str], old: str, new: str, trigger: str | None = None) -> list[str]:
    """Replace the tag ``old`` by ``new`` in place (an empty ``new`` removes it; no duplicates)."""
    old, new = old.strip(), new.strip()
    _refuse_trigger(old, trigger, "replaced")
    if old not in tags:
        return list(tags)
    return pin_trigger(replace_tag(tags, old, new), trigger)


def move_tag(tags: Sequence[str], tag: str, position: int, trigger: str | None = None) -> list[str]:
    """Move ``tag`` to index ``position`` (clamped; index 0 stays the trigger's). A tag not present is no
    change."""
    tag = tag.strip()
    _refuse_trigger(tag, trigger, "moved")
    if tag not in tags:
        return list(tags)
    rest = [t for t in pin_trigger(tags, trigger) if t != tag]
    low = 1 if trigger else 0
    at = min(max(int(position), low), len(rest))
    return [*rest[:at], tag, *rest[at:]]


def shift_tag(tags: Sequence[str], tag: str, step: int, trigger: str | None = None) -> list[str]:
    """Move ``tag`` ``step`` places (-1: one to the left)."""
    tag = tag.strip()
    if tag not in tags:
        _refuse_trigger(tag, trigger, "moved")
        return list(tags)
    return move_tag(tags, tag, list(tags).index(tag) + step, trigger)


def set_tags(tags: Sequence[str], new: Iterable[str], trigger: str | None = None) -> list[str]:
    """The tag list ``new`` as typed (stripped, no empties, no duplicates), the trigger first."""
    return pin_trigger(dedupe(t.strip() for t in new if t and t.strip()), trigger)


def matches(tags: Sequence[str], has: Iterable[str] = (), lacks: Iterable[str] = ()) -> bool:
    """True when ``tags`` hold every tag of ``has`` and none of ``lacks``."""
    present = set(tags)
    return present.issuperset(has) and not present.intersection(lacks)


# --- a folder under review ---------------------------------------------------------------------------


@dataclass
class Caption:
    """One picture and its caption: ``tags`` as edited, ``disk`` the file's text now (None: no file).

    ``texts`` remembers the exact file text of every tag list seen on disk, so that undoing back to a saved
    state writes the file back byte for byte (its spacing, its other lines), or removes a caption file the
    editor created.
    """

    image: Path
    path: Path
    name: str
    tags: list[str]
    disk: str | None
    texts: dict[tuple[str, ...], str | None] = field(default_factory=dict)

    @property
    def disk_tags(self) -> list[str]:
        return tag_line(self.disk)

    @property
    def dirty(self) -> bool:
        return self.tags != self.disk_tags

    def render(self) -> str | None:
        """The file text of ``tags``: a text seen before for the same tags, else the current file with its
        tag line replaced (None: the picture had no caption file and still has no tags)."""
        key = tuple(self.tags)
        if key in self.texts:
            return self.texts[key]
        line = join_caption(self.tags)
        if not self.disk or not self.disk.strip():
            return line + "\n"
        lines = self.disk.splitlines(keepends=True)
        at = next(i for i, text in enumerate(lines) if text.strip())
        ending = lines[at][len(lines[at].rstrip("\r\n")) :]
        lines[at] = line + ending
        return "".join(lines)


def tag_line(text: str | None) -> list[str]:
    """The tags of a caption file's first non-empty line (``[]`` for None or an empty file)."""
    first = next((line for line in (text or "").splitlines() if line.strip()), "")
    return split_caption(first)


@dataclass(frozen=True)
class SaveReport:
    """Caption files written (or removed), and the folder their previous texts were copied to."""

    written: list[Path]
    backup_dir: Path | None


class CaptionReview:
    """The captions of one folder under review, with an undo stack (one step per edit, single or bulk)."""

    def __init__(self, folder: Path, captions: list[Caption], trigger: str | None = None) -> None:
        self.folder = folder
        self.captions = captions
        self.trigger = (trigger or "").strip() or None
        self.undo_stack: list[list[tuple[int, list[str]]]] = []

    @classmethod
    def load(
        cls,
        folder: str | Path,
        caption_extension: str = ".txt",
        trigger: str | None = None,
        recursive: bool = False,
    ) -> CaptionReview:
        """Read every picture of ``folder`` and its caption (``UserError``: not a folder, no pictures, a
        caption that is not UTF-8)."""
        root = Path(folder).expanduser()
        images = find_images(root, recursive)
        if not images:
            raise UserError(
                f"'{root}' holds no pictures ({' '.join(IMAGE_EXTENSIONS)}). Give the folder "
                "of one concept, e.g. train/10_sks dog."
            )
        ext = normalise_extension(caption_extension or ".txt")
        captions = []
        for image in images:
            path = caption_path(image, ext)
            text = read_text(path) if path.is_file() else None
            tags = tag_line(text)
            captions.append(
                Caption(image, path, image.relative_to(root).as_posix(), tags, text, {tuple(tags): text})
            )
        return cls(root, captions, trigger)

    # --- looking ---

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.captions]

    def indices(self, names: Iterable[str]) -> list[int]:
        """Indices of the pictures called ``names`` (relative paths); ``UserError`` for an unknown name."""
        where = {c.name: i for i, c in enumerate(self.captions)}
        unknown = [n for n in names if n not in where]
        if unknown:
            raise UserError(
                f"no picture named {', '.join(unknown)} in '{self.folder}'; load the folder again."
            )
        return [where[n] for n in names]

    def filtered(self, has: str | Iterable[str] = (), lacks: str | Iterable[str] = ()) -> list[int]:
        """Indices of the pictures whose captions hold every tag of ``has`` and none of ``lacks`` (a string
        is a comma-separated list)."""
        has = parse_tag_list(has) if isinstance(has, str) else list(has)
        lacks = parse_tag_list(lacks) if isinstance(lacks, str) else list(lacks)
        return [i for i, c in enumerate(self.captions) if matches(c.tags, has, lacks)]

    def stats(self, min_share: float = 0.8) -> FolderTagStats:
        """The dataset doctor's tag statistics of the captions as edited (frequency, near-universal tags)."""
        return tag_stats([c.tags for c in self.captions], min_share=min_share)

    def hints(self, min_share: float = 0.8) -> list[str]:
        """Notes for the page: tags in almost every picture (fold them into the trigger?), tags always
        together, pictures without the trigger word."""
        s = self.stats(min_share)
        out = [
            f"'{tag}' is in {share:.0%} of the pictures: fold it into the trigger word, or remove it"
            for tag, share in s.common
            if tag != self.trigger
        ]
        out += [f"'{a}' and '{b}' always come together ({n} pictures, {j:.0%})" for a, b, n, j in s.pairs]
        if self.trigger:
            lacking = sum(1 for c in self.captions if self.trigger not in c.tags)
            if lacking:
                out.append(
                    f"{lacking} of {len(self.captions)} pictures lack the trigger word '{self.trigger}'"
                )
        return out

    # --- editing ---

    def edit(self, indices: Iterable[int], op: TagEdit) -> int:
        """Apply ``op`` to the pictures at ``indices`` as one undo step; returns how many changed."""
        step = []
        for i in dict.fromkeys(indices):
            caption = self.captions[i]
            new = op(list(caption.tags))
            if new != caption.tags:
                step.append((i, caption.tags))
                caption.tags = new
        if step:
            self.undo_stack.append(step)
            del self.undo_stack[:-UNDO_LIMIT]
        return len(step)

    def apply(
        self, indices: Iterable[int], action: str, tag: str, new: str = "", position: int | None = None
    ) -> int:
        """``action`` ("add", "remove", "replace", "move", "left", "right") of ``tag`` on the pictures at
        ``indices``, one undo step; returns how many changed."""
        tag = (tag or "").strip()
        if not tag:
            raise UserError(f"give the tag to {action}.")
        trigger = self.trigger
        ops: dict[str, TagEdit] = {
            "add": lambda t: add_tag(t, tag, position, trigger),
            "remove": lambda t: remove_tag(t, tag, trigger),
            "replace": lambda t: rename_tag(t, tag, new or "", trigger),
            "move": lambda t: move_tag(t, tag, int(position), trigger),
            "left": lambda t: shift_tag(t, tag, -1, trigger),
            "right": lambda t: shift_tag(t, tag, 1, trigger),
        }
        if action not in ops:
            raise UserError(f"unknown caption action {action!r}; use one of {', '.join(ops)}.")
        if action == "move" and position is None:
            raise UserError(f"give the position to move '{tag}' to (1 = first).")
        if action == "replace" and not (new or "").strip():
            raise UserError(f"give the tag that replaces '{tag}' (or use remove).")
        return self.edit(indices, ops[action])

    def set_tags(self, index: int, tags: Iterable[str]) -> int:
        """Give the picture at ``index`` the tag list ``tags`` (as typed in the chips), one undo step."""
        new = set_tags([], tags, self.trigger)
        return self.edit([index], lambda _old: new)

    def undo(self) -> list[str]:
        """Undo the last edit (single or bulk); returns the names of the pictures it restored (``[]``: nothing
        to undo)."""
        if not self.undo_stack:
            return []
        step = self.undo_stack.pop()
        for i, tags in step:
            self.captions[i].tags = tags
        return [self.captions[i].name for i, _ in step]

    # --- saving ---

    def dirty(self) -> list[int]:
        return [i for i, c in enumerate(self.captions) if c.dirty]

    def save(self, when: datetime | None = None) -> SaveReport:
        """Write every changed caption atomically, each replaced file first copied under
        ``.caption_backups/<time>/``. ``UserError`` (and nothing written) when a file changed on disk since it
        was loaded or saved here."""
        changed = [self.captions[i] for i in self.dirty()]
        moved = [c.name for c in changed if (read_text(c.path) if c.path.is_file() else None) != c.disk]
        if moved:
            raise UserError(
                f"caption files changed on disk since they were loaded: {', '.join(moved[:5])}. Nothing was "
                "saved; load the folder again to see them (unsaved edits here are lost)."
            )
        backups = backup_root(self.folder, when) if any(c.disk is not None for c in changed) else None
        written = []
        for caption in changed:
            text = caption.render()
            if caption.disk is not None:
                backup_file(caption.path, self.folder, backups)
            if text is None:
                caption.path.unlink()
            else:
                write_text_atomic(caption.path, text)
            caption.disk = text
            caption.texts.setdefault(tuple(caption.tags), text)
            written.append(caption.path)
        if written:
            logger.info("saved %d caption files; backups in '%s'", len(written), backups)
        return SaveReport(written, backups)
