"""Background loading: images are decoded and preprocessed in a thread pool while the model runs.

PIL decoding, resizing and numpy work release the GIL, and so does onnxruntime / torch inference, so
loading the next batches overlaps with running the current one.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from library.errors import DatasetError, UserError

logger = logging.getLogger(__name__)

T = TypeVar("T")


def iter_loaded_batches(
    paths: Sequence[Path],
    load: Callable[[Path], T],
    batch_size: int,
    workers: int = 4,
    skipped: list[Path] | None = None,
) -> Iterator[list[tuple[Path, T]]]:
    """Yield batches of ``(path, load(path))`` in the order of ``paths``.

    At most ``2 * batch_size + workers`` loads are in flight. A path whose ``load`` raises
    ``UserError`` or ``OSError`` is skipped with a warning naming it (and appended to ``skipped``);
    the run goes on.
    """
    batch_size = max(1, batch_size)
    ahead = 2 * batch_size + max(1, workers)
    pending: deque[tuple[Path, Future[T]]] = deque()
    batch: list[tuple[Path, T]] = []
    todo = iter(paths)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="load") as pool:
        for path in todo:
            pending.append((path, pool.submit(load, path)))
            if len(pending) >= ahead:
                break
        while pending:
            path, future = pending.popleft()
            following = next(todo, None)
            if following is not None:
                pending.append((following, pool.submit(load, following)))
            try:
                batch.append((path, future.result()))
            except (UserError, OSError, ValueError) as exc:
                logger.warning("Skipping '%s': %s", path, exc)
                if skipped is not None:
                    skipped.append(path)
                continue
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch


def raise_none_readable(folder, unreadable: Sequence[Path]) -> None:
    """DatasetError when every picture of ``folder`` was skipped (each one is named in a warning already)."""
    raise DatasetError(
        f"None of the {len(unreadable)} pictures in '{folder}' can be read (e.g. '{unreadable[0]}'; each is named "
        "in a warning above: unreadable, truncated or over the decompression-bomb size limit). Re-export them as "
        "PNG or JPEG."
    )
