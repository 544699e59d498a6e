"""Run loading jobs (batches while the model trains, pictures while the VAE encodes) in background threads."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def prefetch(jobs: Iterable[Callable[[], T]], workers: int = 2, depth: int = 4) -> Iterator[T]:
    """Run ``jobs`` in a thread pool, yielding results in order with up to ``depth`` in flight.

    Image decoding and resizing release the GIL (PIL, numpy), so threads overlap them with training.
    """
    jobs = iter(jobs)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: deque = deque()
        for job in jobs:
            pending.append(pool.submit(job))
            if len(pending) >= depth:
                break
        while pending:
            result = pending.popleft().result()
            next_job = next(jobs, None)
            if next_job is not None:
                pending.append(pool.submit(next_job))
            yield result
