"""Freed heap memory goes back to the system after ``give_back_free_memory`` (glibc's malloc_trim)."""

from __future__ import annotations

import sys

import pytest
import torch

from library.util.host_memory import _malloc_trim, give_back_free_memory


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux") or _malloc_trim() is None, reason="glibc only")
def test_freed_tensors_leave_the_process_after_the_trim():
    big = torch.empty(8_000_000)  # freeing a large block raises malloc's map threshold: the next ones go to the heap
    del big
    kept, freed = [], []
    for i in range(100):
        (kept if i % 2 else freed).append(torch.ones(1_000_000))  # 4 MB each, interleaved: holes in the heap
    before = rss_mib()
    del freed
    assert rss_mib() > before - 50  # malloc keeps the holes
    give_back_free_memory()
    assert rss_mib() < before - 150  # 200 MB freed: most of it is the system's again
    assert all(float(t[0]) == 1.0 for t in kept)  # what is still in use is untouched


def test_without_glibc_it_does_nothing(monkeypatch):
    import library.util.host_memory as host_memory

    monkeypatch.setattr(host_memory, "_malloc_trim", lambda: None)
    assert host_memory.give_back_free_memory() is False
