"""The DreamBooth folder convention: ``train_data_dir/<repeats>_<class tokens>/*.png``.

Each direct subfolder of ``train_data_dir`` (or ``reg_data_dir``) is one concept; its name gives the
number of repeats (the integer before the first ``_``) and the class tokens (the rest).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from library.errors import DatasetError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

_REPEATS_RE = re.compile(r"[0-9]+")


#: each repeat adds every picture of a folder once more to each epoch's list of draws (8 bytes per draw).
REPEATS_MAX = 10_000


@dataclass(frozen=True)
class ConceptFolder:
    """One ``<repeats>_<class tokens>`` folder found under a data directory."""

    path: Path
    repeats: int
    class_tokens: str
    images: tuple[Path, ...]


def parse_folder_name(name: str) -> tuple[int, str] | None:
    """Split a folder name ``"<repeats>_<class tokens>"`` on its first ``_``.

    ``"10_sls 1girl"`` -> ``(10, "sls 1girl")``; ``"40_black_mamba"`` -> ``(40, "black_mamba")``;
    ``"foo"``, ``"x_foo"`` -> ``None``. The repeats part must be ASCII digits only.
    """
    head, sep, rest = name.partition("_")
    if not sep or not _REPEATS_RE.fullmatch(head):
        return None
    return int(head), rest


def is_image_file(path: Path) -> bool:
    """True for a regular file whose extension (any case) is one of :data:`IMAGE_EXTENSIONS`."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def list_images(folder: str | Path) -> list[Path]:
    """The image files directly inside ``folder`` (not recursive), sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if is_image_file(p))


def _leaf_folder_error(root: Path, option: str) -> DatasetError:
    return DatasetError(
        f"{option} '{root}' looks like a concept folder itself (it holds images directly or its name "
        f"has the <repeats>_<class tokens> form). {option} must be the PARENT of folders named "
        f"<repeats>_<class tokens>, e.g. set {option} to '{root.parent}' instead of '{root}'. "
        f"If '{root.name}' is not a concept folder, move its images into a subfolder such as "
        f"'{root / ('10_' + root.name)}'."
    )


def _check_root(root: Path, option: str) -> None:
    if not root.exists():
        raise DatasetError(
            f"{option} '{root}' does not exist. Set {option} to an existing folder that contains "
            f"subfolders named <repeats>_<class tokens> (for example '10_sks dog')."
        )
    if not root.is_dir():
        raise DatasetError(
            f"{option} '{root}' is a file, not a folder. Set {option} to the folder that contains "
            f"subfolders named <repeats>_<class tokens> (for example '10_sks dog')."
        )


def discover_concept_folders(root: str | Path, option: str = "train_data_dir") -> list[ConceptFolder]:
    """Find the ``<repeats>_<class tokens>`` subfolders of ``root`` and their images.

    Folders without the prefix, with 0 repeats or without images are skipped with a warning when
    other folders are valid. Raises :class:`DatasetError` with the fix when nothing usable is found
    (``option`` names the setting in the message: ``train_data_dir`` or ``reg_data_dir``).
    """
    root = Path(root)
    _check_root(root, option)
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    valid: list[ConceptFolder] = []
    unprefixed: list[Path] = []
    unusable: list[str] = []
    for sub in subdirs:
        parsed = parse_folder_name(sub.name)
        if parsed is None:
            unprefixed.append(sub)
            continue
        repeats, class_tokens = parsed
        images = tuple(list_images(sub))
        if repeats < 1:
            unusable.append(f"'{sub.name}' (0 repeats)")
        elif not images:
            unusable.append(f"'{sub.name}' (no images with extensions {', '.join(IMAGE_EXTENSIONS)})")
        else:
            valid.append(ConceptFolder(sub, repeats, class_tokens, images))
    if not valid:
        _raise_nothing_found(root, option, unprefixed, unusable)
    for sub in unprefixed:
        logger.warning(
            "%s: skipping folder '%s' because its name does not start with <repeats>_ "
            "(rename it to e.g. '10_%s' to use it).",
            option,
            sub,
            sub.name,
        )
    for text in unusable:
        logger.warning("%s: skipping folder %s in '%s'.", option, text, root)
    if any(is_image_file(p) for p in root.iterdir()):
        logger.warning(
            "%s: images placed directly in '%s' are ignored; only images inside <repeats>_<class tokens> "
            "subfolders are used.",
            option,
            root,
        )
    return valid


def _raise_nothing_found(root: Path, option: str, unprefixed: list[Path], unusable: list[str]) -> None:
    has_images = any(is_image_file(p) for p in root.iterdir())
    if has_images or (parse_folder_name(root.name) is not None and not unprefixed):
        raise _leaf_folder_error(root, option)
    if unprefixed:
        renames = ", ".join(f"'{p.name}' -> '10_{p.name}'" for p in unprefixed[:5])
        more = f" (and {len(unprefixed) - 5} more)" if len(unprefixed) > 5 else ""
        raise DatasetError(
            f"{option} '{root}': no usable concept folder. These folders were skipped because their "
            f"names do not start with <repeats>_: {renames}{more}. Each subfolder of {option} must be "
            f"named <repeats>_<class tokens>, where <repeats> is how many times its images are used "
            f"per epoch; rename them accordingly, e.g. 10_<name>."
        )
    if unusable:
        raise DatasetError(
            f"{option} '{root}': no usable concept folder: {', '.join(unusable)}. Put images "
            f"({', '.join(IMAGE_EXTENSIONS)}) in the <repeats>_<class tokens> folders and use repeats >= 1."
        )
    raise DatasetError(
        f"{option} '{root}' is empty. It must contain subfolders named <repeats>_<class tokens> "
        f"(for example '10_sks dog') that hold the images."
    )
