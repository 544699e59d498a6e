"""Atomic file writes: write to a temporary file in the same folder, then rename over the target."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once, at import, while no other thread can create files


def _make_parent(target: Path) -> None:
    """Create ``target``'s folder; a UserError when a file stands where a folder of the path must be."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        from library.errors import UserError

        blocker = next(
            (p for p in [target.parent, *target.parent.parents] if p.exists() and not p.is_dir()),
            target.parent,
        )
        raise UserError(
            f"Cannot save {target}: {blocker} is a file, not a folder. Choose another path."
        ) from None


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it onto ``target``.

    A crash or exception while writing leaves any existing ``target`` untouched and removes the
    temporary file.
    """
    target = Path(target)
    if target.is_dir():
        from library.errors import UserError

        raise UserError(
            f"{target} is an existing folder, so a file cannot be saved under that name. Give a file path "
            f"(e.g. {target / ('model' + (target.suffix or '.safetensors'))}) or remove the folder."
        )
    _make_parent(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes 0600, and so do writers that replace the file themselves (safetensors'
        # save_file): the saved file gets the permissions any new file would get.
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(target: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding=encoding)


def write_bytes_atomic(target: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target``.

    The folder counterpart of :func:`atomic_path`: a failure while writing leaves an existing ``target``
    untouched. An existing target is moved aside, the new folder renamed into place, then the old one
    deleted, so a crash never leaves a half-written folder under the name.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        from library.errors import UserError

        raise UserError(
            f"{target} exists and is a file; a folder cannot be saved under that name. Give "
            "another folder name or remove the file."
        )
    _make_parent(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        old = None
        if target.exists():
            if not target.is_dir():
                from library.errors import UserError

                raise UserError(f"{target} exists and is a file; a folder cannot be saved under that name.")
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
