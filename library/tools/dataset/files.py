"""Image listing and safe caption writing shared by the dataset tools.

Captions are written atomically; an existing caption is only replaced when the caller says so, and a
backup can be kept of every file changed.
"""

from __future__ import annotations

import logging
import shutil
from datetime import datetime
from pathlib import Path

from library.data.folders import IMAGE_EXTENSIONS, is_image_file
from library.errors import UserError
from library.util.atomic import atomic_path, write_text_atomic

logger = logging.getLogger(__name__)

BACKUP_DIR_NAME = ".caption_backups"


def _visible(path: Path, root: Path) -> bool:
    """False for files inside hidden folders (``.caption_backups``, ``.git``) below ``root``."""
    return not any(part.startswith(".") for part in path.relative_to(root).parts[:-1])


def find_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """The image files of ``folder`` (and its subfolders with ``recursive``), sorted by path.

    Hidden folders are skipped. Files with other extensions are ignored, with one warning naming them
    (caption and cache files excepted). Raises :class:`UserError` when ``folder`` is not a folder.
    """
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"'{root}' is not a folder. Give the folder that holds the pictures.")
    candidates = root.rglob("*") if recursive else root.iterdir()
    images, others = [], []
    for path in candidates:
        if path.name.startswith(".") or not path.is_file() or not _visible(path, root):
            continue
        if is_image_file(path):
            images.append(path)
        elif path.suffix.lower() not in (".txt", ".caption", ".npz", ".json", ".toml", ".tmp"):
            others.append(path.name)
    if others:
        shown = ", ".join(sorted(others)[:5]) + (" ..." if len(others) > 5 else "")
        logger.warning(
            "'%s': %d files are not images (%s) and are skipped: %s",
            root,
            len(others),
            " ".join(IMAGE_EXTENSIONS),
            shown,
        )
    return sorted(images)


def normalise_extension(ext: str) -> str:
    """``"txt"`` -> ``".txt"``; ``".caption"`` unchanged. :class:`UserError` for an extension that is empty or
    would leave the picture's folder (``"../x"``, ``"a/b"``, control characters)."""
    from library.config.values import file_name_problem

    problem = file_name_problem(ext) if ext.strip(".") else "is empty; give one such as .txt"
    if problem:
        raise UserError(
            f"--caption_extension {ext!r} {problem}: captions sit beside the pictures, e.g. --caption_extension .txt."
        )
    return ext if ext.startswith(".") else "." + ext


def caption_path(image: Path, caption_extension: str) -> Path:
    """The caption file of ``image``: same folder and stem, ``caption_extension``."""
    return image.with_suffix(normalise_extension(caption_extension))


def read_text(path: Path) -> str:
    """A caption file's text (UTF-8, BOM accepted); :class:`UserError` naming the file otherwise."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"Caption file '{path}' is not valid UTF-8 ({exc.reason}); re-save it as UTF-8."
        ) from exc


def write_caption(path: Path, text: str, overwrite: bool) -> bool:
    """Write ``text`` (plus a newline) to ``path`` atomically.

    Returns False, and writes nothing, when the file exists and ``overwrite`` is False.
    """
    if path.exists() and not overwrite:
        return False
    write_text_atomic(path, text.rstrip("\n") + "\n")
    return True


def backup_root(folder: Path, when: datetime | None = None) -> Path:
    """The backup folder of one run: ``<folder>/.caption_backups/<YYYYmmdd-HHMMSS-ffffff>``."""
    stamp = (when or datetime.now()).strftime("%Y%m%d-%H%M%S-%f")
    return folder / BACKUP_DIR_NAME / stamp


def backup_file(path: Path, folder: Path, backup_dir: Path) -> Path:
    """Copy ``path`` (inside ``folder``) to the same relative place under ``backup_dir``."""
    target = backup_dir / path.relative_to(folder)
    with atomic_path(target) as tmp:
        shutil.copy2(path, tmp)
    return target
