"""The device a run would use: its kind, the memory it has free, and the matmul rate it reaches."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


@dataclass
class DeviceInfo:
    type: str
    name: str
    #: bytes free for the run (GPU: free device memory; CPU: the system's available memory), None if unknown
    free_bytes: int | None


def training_device() -> DeviceInfo:
    """What accelerate would pick for a one-process run: CUDA, else Apple MPS, else the CPU."""
    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return DeviceInfo("cuda", torch.cuda.get_device_name(), int(free))
    if torch.backends.mps.is_available():
        return DeviceInfo("mps", "Apple GPU", None)
    return DeviceInfo("cpu", "CPU", _available_ram())


def _available_ram() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def matmul_rate(device_type: str, dtype: torch.dtype, seconds: float = 0.3) -> float:
    """FLOP/s of a square matmul on the device in ``dtype`` (best of a few timed runs after a warm-up)."""
    size = 4096 if device_type == "cuda" else 1024
    device = torch.device(device_type)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    best = float("inf")
    deadline = time.perf_counter() + seconds
    for i in range(50):
        _sync(device_type)
        start = time.perf_counter()
        a @ b
        _sync(device_type)
        if i > 0:  # the first run pays for kernel selection and caches
            best = min(best, time.perf_counter() - start)
        if i >= 3 and time.perf_counter() > deadline:
            break
    return 2 * size**3 / best


def _sync(device_type: str) -> None:
    if device_type == "cuda":
        torch.cuda.synchronize()
    elif device_type == "mps":
        torch.mps.synchronize()
