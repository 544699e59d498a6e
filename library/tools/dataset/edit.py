"""Caption edits over a folder: every change shown as a diff in a dry run, backed up in a real run.

An edit is a pure function ``list[str] -> list[str]`` over the tags of one caption line (see
:mod:`library.tools.dataset.tags`); :data:`EDITS` maps each ``edit_captions.py`` subcommand to an
:class:`EditCommand` (its arguments, and how they build the edit): adding a subcommand touches only here.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from library.tools.dataset.files import (
    backup_file,
    backup_root,
    caption_path,
    find_images,
    read_text,
    write_caption,
)
from library.tools.dataset.tags import (
    add_tags,
    dedupe,
    fold_tags,
    join_caption,
    parse_tag_list,
    remove_tags,
    replace_tag,
    split_caption,
)
from library.util.registry import Registry

logger = logging.getLogger(__name__)

TagEdit = Callable[[list[str]], list[str]]
EDITS = Registry("caption edit")


@dataclass(frozen=True)
class EditCommand:
    """One ``edit_captions.py`` subcommand: its arguments and how they become a :data:`TagEdit`."""

    add_arguments: Callable[[Any], Any]
    build: Callable[[Any], TagEdit]


def _fold(args: Any) -> TagEdit:
    features = set(args.tags)
    if args.only_matching:
        return lambda tags: fold_tags(tags, args.trigger, features) if features & set(tags) else list(tags)
    return lambda tags: fold_tags(tags, args.trigger, features)


def _add(args: Any) -> TagEdit:
    prefix = ([args.trigger] if args.trigger else []) + parse_tag_list(args.prefix)
    suffix = parse_tag_list(args.suffix)
    return lambda tags: add_tags(tags, prefix, suffix)


EDITS.register("add", description="put tags first (--trigger, --prefix) or last (--suffix), no duplicates")(
    EditCommand(
        lambda p: (
            p.add_argument("--trigger", help="trigger word, put first"),
            p.add_argument("--prefix", help="comma-separated tags put first"),
            p.add_argument("--suffix", help="comma-separated tags put last"),
        ),
        _add,
    )
)
EDITS.register("replace", description="replace the tag OLD by NEW (an empty NEW removes it)")(
    EditCommand(
        lambda p: (p.add_argument("old"), p.add_argument("new")),
        lambda args: lambda tags: replace_tag(tags, args.old, args.new),
    )
)
EDITS.register("remove", description="remove tags")(
    EditCommand(
        lambda p: p.add_argument("tags", nargs="+", metavar="TAG"),
        lambda args: lambda tags: remove_tags(tags, args.tags),
    )
)
EDITS.register("fold", description="replace feature tags by a trigger word, put first")(
    EditCommand(
        lambda p: (
            p.add_argument("trigger"),
            p.add_argument("tags", nargs="+", metavar="TAG"),
            p.add_argument(
                "--only_matching",
                action="store_true",
                help="only captions that hold at least one of the tags",
            ),
        ),
        _fold,
    )
)
EDITS.register("dedupe", description="remove repeated tags, keeping the first")(
    EditCommand(lambda p: None, lambda args: dedupe)
)


def edit_text(text: str, edit: TagEdit, separator: str = ", ") -> str:
    """Apply ``edit`` to every non-empty line of a caption file's text (other lines kept as they are).

    An empty file counts as one caption without tags: it changes only if the edit adds tags.
    """
    if not text.strip():
        tags = edit([])
        return join_caption(tags, separator) + "\n" if tags else text
    lines = [
        join_caption(edit(split_caption(line, separator)), separator) if line.strip() else line
        for line in text.splitlines()
    ]
    return "\n".join(lines) + ("\n" if text.endswith("\n") else "")


@dataclass(frozen=True)
class Change:
    """One caption file whose text an edit changes."""

    path: Path
    old: str
    new: str


@dataclass
class EditReport:
    """Files looked at, files changed (or that would change in a dry run), and where backups went."""

    captions: int = 0
    missing: list[Path] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    backup_dir: Path | None = None


def edit_folder(
    folder: str | Path,
    edit: TagEdit,
    caption_extension: str = ".txt",
    recursive: bool = False,
    dry_run: bool = False,
    backup: bool = True,
    separator: str = ", ",
) -> EditReport:
    """Apply ``edit`` to the caption file of every picture in ``folder``.

    Nothing is written with ``dry_run``. Otherwise each changed file is first copied under
    ``<folder>/.caption_backups/<time>/`` (unless ``backup`` is False), then replaced atomically.
    Pictures without a caption file are listed in ``missing``.
    """
    folder = Path(folder)
    report = EditReport()
    for image in find_images(folder, recursive):
        path = caption_path(image, caption_extension)
        if not path.is_file():
            report.missing.append(path)
            continue
        report.captions += 1
        old = read_text(path)
        new = edit_text(old, edit, separator)
        if new != old:
            report.changes.append(Change(path, old, new))
    if dry_run or not report.changes:
        return report
    if backup:
        report.backup_dir = backup_root(folder)
    for change in report.changes:
        if report.backup_dir is not None:
            backup_file(change.path, folder, report.backup_dir)
        write_caption(change.path, change.new, overwrite=True)
    logger.info(
        "changed %d caption files%s",
        len(report.changes),
        f"; backups in '{report.backup_dir}'" if report.backup_dir else "",
    )
    return report


def format_diff(changes: list[Change], root: Path) -> str:
    """A unified diff of the changes, paths relative to ``root``."""
    chunks = []
    for change in changes:
        name = str(change.path.relative_to(root))
        chunks.extend(
            difflib.unified_diff(
                change.old.splitlines(), change.new.splitlines(), f"a/{name}", f"b/{name}", lineterm="", n=0
            )
        )
    return "\n".join(chunks)
