"""Atomic, durable file writes: write to a temporary file in the same folder, ``fsync`` it, rename it over
the target, then ``fsync`` the folder, so that after a crash or power loss the name holds either the old
complete file or the new complete one.

Temporary names carry the writer's process id (``.<name>.<pid>-<random>.tmp``; a folder is swapped with its
replacement in one step on Linux, elsewhere moved aside as ``.<name>.old-<pid>`` for the moment of the
swap), so that :func:`remove_leftovers` can remove
what killed saves left behind without touching the saves of a process still running.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

#: ``.<name>.<pid>-<8 random chars>.tmp`` (mkstemp/mkdtemp); earlier versions wrote no ``<pid>-``
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?:(?P<pid>\d+)-)?[a-z0-9_]{8}\.tmp$")
#: an existing folder moved aside while its replacement is renamed into place
_OLD_NAME = re.compile(r"^\.(?P<name>.+)\.old-(?P<pid>\d+)$")
#: safetensors' writer (Rust's tempfile) writes ``.tmp<6 chars>`` beside the target and renames it
_SAFETENSORS_TEMP = re.compile(r"^\.tmp[A-Za-z0-9]{6}$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once, at import, while no other thread can create files


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a written file's data to the disk (through a new descriptor: fsync acts on the inode)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(path: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename into it) to the disk; a no-op where folders cannot be synced."""
    if not hasattr(os, "O_DIRECTORY"):  # Windows: folders cannot be opened
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # EINVAL: a file system without folder sync
        pass
    finally:
        os.close(fd)


def fsync_tree(folder: str | os.PathLike) -> None:
    """fsync every file under ``folder`` once, then every folder (deepest first)."""
    for root, _dirs, files in os.walk(folder, topdown=False):
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                fsync_file(path)
        fsync_folder(root)


#: how safetensors' writer (Rust) reports an OS error: "... I/O error: No space left on device (os error 28)"
_OS_ERROR_TEXT = re.compile(r"\(os error (\d+)\)")


@contextlib.contextmanager
def os_errors_as_oserror(target: str | os.PathLike) -> Iterator[None]:
    """Writers that report a failed write in their own exception (safetensors: ``SafetensorError`` "... No
    space left on device (os error 28)") raise it here as the ``OSError`` it is, naming ``target``, so the
    entry points report a full or read-only disk like any other OS error."""
    try:
        yield
    except OSError:
        raise
    except Exception as error:
        match = _OS_ERROR_TEXT.search(str(error))
        if match is None:
            raise
        code = int(match[1])
        raise OSError(code, os.strerror(code), str(target)) from error


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


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}-"


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success fsync it and rename it onto ``target``.

    A crash or exception while writing leaves any existing ``target`` untouched and removes the
    temporary file (a killed process leaves it for :func:`remove_leftovers`).
    """
    target = Path(target)
    if target.is_dir():
        from library.errors import UserError

        raise UserError(
            f"{target} is an existing folder, so a file cannot be saved under that name. Give a file path "
            f"(e.g. {target / ('model' + (target.suffix or '.safetensors'))}) or remove the folder."
        )
    _make_parent(target)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with os_errors_as_oserror(target):
            yield tmp_path
        # mkstemp makes 0600, and so do writers that replace the file themselves (safetensors'
        # save_file): the saved file gets the permissions any new file would get.
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        fsync_file(tmp_path)  # the data is on the disk before the name points at it
        os.replace(tmp_path, target)
        fsync_folder(target.parent)  # and the rename is, too
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


_RENAME_EXCHANGE = 2  # renameat2's flag (Linux 3.15+, glibc 2.28+): swap two names in one step
_AT_FDCWD = -100


@functools.cache
def _renameat2():
    """libc's ``renameat2``, or None where there is none (not Linux, an old libc)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        func = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


def exchange(a: Path, b: Path) -> bool:
    """Swap the entries ``a`` and ``b`` (same filesystem) in one step; False where the system or the
    filesystem cannot (nothing is changed then)."""
    func = _renameat2()
    if func is None:
        return False
    if func(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV, errno.EPERM):
        return False  # a filesystem or kernel without RENAME_EXCHANGE (EPERM: a seccomp filter)
    raise OSError(err, os.strerror(err), str(b))


def replace_folder(written: Path, target: Path, synced: bool = False) -> None:
    """Put the complete folder ``written`` (beside ``target``) in place of ``target``, durably.

    Its files are fsynced first (unless ``synced``: the caller did). When ``written`` has a temporary name
    of :func:`atomic_folder` and the system can, the two folders are swapped in one step (``renameat2``'s
    ``RENAME_EXCHANGE``): the name always holds one complete folder, and the old one, now under the
    temporary name, is deleted (or, after a crash, removed by :func:`remove_leftovers`). Otherwise an
    existing ``target`` is moved aside (``.<name>.old-<pid>``), the new folder renamed into place, the
    folder entry fsynced, then the old one deleted; a crash between those two renames leaves no folder
    under the name but both complete ones beside it, which :func:`remove_leftovers` puts back in order.
    (Other temporary names, such as the training states' ``<state>.tmp``, take the two renames: their
    own clean-up would take a complete old state under that name for a newer one.)
    """
    if not synced:
        fsync_tree(written)
    if target.is_dir() and not target.is_symlink() and _TEMP_NAME.match(written.name) and exchange(written, target):
        fsync_folder(target.parent)
        shutil.rmtree(written, ignore_errors=True)  # the old folder, now under the temporary name
        return
    old = None
    if target.exists() or target.is_symlink():
        if not target.is_dir():
            from library.errors import UserError

            raise UserError(f"{target} exists and is a file; a folder cannot be saved under that name.")
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(target, old)
    os.replace(written, target)
    fsync_folder(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target``.

    The folder counterpart of :func:`atomic_path`: a failure while writing leaves an existing ``target``
    untouched, and a crash never leaves a half-written folder under the name (see :func:`replace_folder`).
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        from library.errors import UserError

        raise UserError(
            f"{target} exists and is a file; a folder cannot be saved under that name. Give "
            "another folder name or remove the file."
        )
    _make_parent(target)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=".tmp", dir=target.parent))
    try:
        with os_errors_as_oserror(target):
            yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp's 0700, as a folder made with mkdir would be
        replace_folder(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (one we may not signal counts as running)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid < 2**31
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
    logger.info("removed leftover temporary file %s", path)


def remove_leftovers(folder: str | os.PathLike) -> list[Path]:
    """Clean up after saves that were killed in ``folder`` (not below it); returns the paths removed.

    Removes the temporary files and folders of :func:`atomic_path` / :func:`atomic_folder` and folders moved
    aside by :func:`replace_folder`, only those whose process has ended, and the partial safetensors files
    that safetensors' own writer leaves (``.tmpXXXXXX``) when no process holds them open. A save killed
    between its two renames has its new, complete folder put under the real name. Nothing else is touched:
    a name must match those patterns exactly.
    """
    folder = Path(folder)
    try:
        entries = sorted(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed: list[Path] = []
    for path in entries:  # folders moved aside first: they may have to go back
        match = _OLD_NAME.match(path.name)
        if match is None or not path.is_dir() or _alive(int(match["pid"])):
            continue
        target = folder / match["name"]
        if not (target.exists() or target.is_symlink()):
            # killed between the two renames: the new folder is complete, else the old one goes back
            back = next((p for p in entries if p.is_dir() and _is_temp_of(p.name, match["name"], match["pid"])),
                        path)
            os.replace(back, target)
            fsync_folder(folder)
            logger.info("restored %s from an interrupted save", target)
            if back is path:
                continue
        _remove(path)
        removed.append(path)
    for path in entries:
        match = _TEMP_NAME.match(path.name)
        if match is None or not (path.exists() or path.is_symlink()):
            continue
        if match["pid"] is not None and _alive(int(match["pid"])):
            continue  # a save in progress in another process
        _remove(path)
        removed.append(path)
    partial = [p for p in entries if _SAFETENSORS_TEMP.match(p.name) and _is_partial_safetensors(p)]
    if partial:
        busy = _open_files()
        for path in partial:
            if str(path.resolve()) not in busy:
                _remove(path)
                removed.append(path)
    return removed


def _is_partial_safetensors(path: Path) -> bool:
    """A regular file that starts as a safetensors file does (an 8-byte header length, then ``{``), or one
    killed before its first 9 bytes were written (empty, shorter, or still zeros: nothing a user could lose)."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with path.open("rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9 or head == bytes(9):  # not yet written, or preallocated and not yet filled
        return True
    return head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100 * 1024 * 1024


def _open_files() -> set[str]:
    """The files any process we can see holds open (Linux ``/proc``; empty elsewhere)."""
    held: set[str] = set()
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            for fd in fd_dir.iterdir():
                with contextlib.suppress(OSError):
                    held.add(os.readlink(fd))
        except OSError:
            continue
    return held


def _is_temp_of(name: str, target: str, pid: str) -> bool:
    match = _TEMP_NAME.match(name)
    return match is not None and match["name"] == target and match["pid"] == pid
