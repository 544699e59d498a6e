"""Giving freed host memory back to the system.

glibc's malloc keeps what a process frees for its next allocations, and after the first large block is freed
it raises its memory-map threshold (up to 32 MB), so most of a model's tensors end up in the heap. Memory freed
there (the VAE and text encoders once their outputs are cached, the loader's copies) still counts as the
process's own until the heap is trimmed: the run's peak would stay where loading put it. ``malloc_trim(0)``
returns every free page of the heap to the system at once (a few milliseconds; nothing else changes).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import sys

logger = logging.getLogger(__name__)


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None (not Linux, or another C library such as musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def give_back_free_memory() -> bool:
    """Return the heap's free pages to the system (glibc); True when anything was released. A no-op
    elsewhere."""
    trim = _malloc_trim()
    if trim is None:
        return False
    released = bool(trim(0))
    logger.debug("malloc_trim: %s", "memory released" if released else "nothing to release")
    return released
