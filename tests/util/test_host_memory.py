"""Freed heap memory goes back to the system after ``give_back_free_memory`` (glibc's malloc_trim)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


def test_huge_pages_are_asked_for_unless_the_user_said_no(monkeypatch):
    import library.util.host_memory as host_memory

    monkeypatch.delenv(host_memory.HUGE_PAGES_ENV, raising=False)
    monkeypatch.setattr(host_memory.sys, "platform", "linux")
    assert host_memory.use_huge_pages() is True
    assert os.environ[host_memory.HUGE_PAGES_ENV] == "1"
    monkeypatch.setenv(host_memory.HUGE_PAGES_ENV, "0")  # the user's choice is kept
    assert host_memory.use_huge_pages() is False
    assert os.environ[host_memory.HUGE_PAGES_ENV] == "0"
    monkeypatch.delenv(host_memory.HUGE_PAGES_ENV)
    monkeypatch.setattr(host_memory.sys, "platform", "darwin")
    assert host_memory.use_huge_pages() is False
    assert host_memory.HUGE_PAGES_ENV not in os.environ


def _thp_available() -> bool:
    try:
        return "[never]" not in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


_FAULTS = """
import resource
from library.training.lora_target import LoRATarget  # train_network.py's first import: it allocates tensors
import torch
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    x = torch.ones(16 << 20)  # 64 MiB: mapped afresh each time
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux") or not _thp_available(), reason="needs Linux THP")
def test_trainers_get_huge_pages_for_large_tensors():
    repo = Path(__file__).resolve().parents[2]

    def faults(setting: str | None) -> int:
        env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
        env["PYTHONPATH"] = str(repo)
        if setting is not None:
            env["THP_MEM_ALLOC_ENABLE"] = setting
        out = subprocess.run([sys.executable, "-c", _FAULTS], env=env, capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1])

    off, default = faults("0"), faults(None)
    assert off > 10 * 16384 * 0.9  # 640 MiB in 4 KiB pages: one fault each
    assert default < off / 10


_STEP_FAULTS = """
import resource
import torch
from library.util.host_memory import keep_freed_memory

def steps():
    faults = []
    for _ in range(9):  # a training step's pattern: activations allocated, kept for the backward, then all freed
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        activations = [torch.ones(10 << 20)]  # 40 MiB each: glibc maps blocks this large afresh, by default
        for _ in range(3):
            activations.append(activations[-1] * 1.5)
        del activations
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return faults

print(*steps())
assert keep_freed_memory()
print(*steps())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or _malloc_trim() is None, reason="glibc only")
def test_the_loops_heap_keeps_freed_blocks_for_the_next_step():
    repo = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    env.update(PYTHONPATH=str(repo), THP_MEM_ALLOC_ENABLE="0")  # 4 KiB pages: one fault per page
    out = subprocess.run([sys.executable, "-c", _STEP_FAULTS], env=env, capture_output=True, text=True, check=True)
    fresh, kept = ([int(n) for n in line.split()] for line in out.stdout.splitlines())
    block = 10 * 2**20 * 4 // 4096  # one activation's pages
    assert all(n > 4 * block * 0.9 for n in fresh[3:])  # by default every step faults all its 160 MiB in again
    # kept: from the fourth step on the pages are found in the heap (now and then one block is placed afresh,
    # where a small allocation took part of its old place)
    assert sum(kept[3:]) < sum(fresh[3:]) / 10


class _FakeMallopt:
    def __init__(self):
        self.calls = []

    def __call__(self, option, value):
        self.calls.append((option, value))
        return 1


def test_keeping_freed_memory_sets_the_heaps_two_thresholds(monkeypatch):
    import library.util.host_memory as host_memory

    fake = _FakeMallopt()
    monkeypatch.setattr(host_memory, "_mallopt", lambda: fake)
    for name in (*host_memory._MALLOC_ENV, "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    assert host_memory.keep_freed_memory() is True
    assert fake.calls == [(host_memory.M_MMAP_THRESHOLD, 1 << 30), (host_memory.M_TRIM_THRESHOLD, 2**31 - 1)]


@pytest.mark.parametrize("name, value", [("MALLOC_TRIM_THRESHOLD_", "131072"), ("MALLOC_MMAP_THRESHOLD_", "65536"),
                                         ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=131072")])
def test_a_users_own_malloc_settings_are_kept(monkeypatch, name, value):
    import library.util.host_memory as host_memory

    fake = _FakeMallopt()
    monkeypatch.setattr(host_memory, "_mallopt", lambda: fake)
    for other in (*host_memory._MALLOC_ENV, "GLIBC_TUNABLES"):
        monkeypatch.delenv(other, raising=False)
    monkeypatch.setenv(name, value)
    assert host_memory.keep_freed_memory() is False
    assert fake.calls == []


def test_keeping_freed_memory_without_glibc_does_nothing(monkeypatch):
    import library.util.host_memory as host_memory

    monkeypatch.setattr(host_memory, "_mallopt", lambda: None)
    for name in (*host_memory._MALLOC_ENV, "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    assert host_memory.keep_freed_memory() is False
