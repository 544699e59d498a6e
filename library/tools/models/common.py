"""Small helpers shared by the model tools: precision names, sizes, atomic folders, the CLI runner."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch

from library.cli import run_guarded
from library.errors import ConfigError

logger = logging.getLogger(__name__)

#: ``--save_precision`` / ``--precision`` names -> dtypes (None = keep the source's dtype).
PRECISIONS: dict[str, torch.dtype] = {
    "float": torch.float32,
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
PRECISION_CHOICES = ("float", "fp16", "bf16")


def precision_dtype(name: str | None) -> torch.dtype | None:
    """dtype of a precision name ("float", "fp16", "bf16"); None stays None (keep as is)."""
    if name is None:
        return None
    try:
        return PRECISIONS[name.lower()]
    except KeyError:
        raise ConfigError(
            f"Unknown precision {name!r}. Use one of: {', '.join(PRECISION_CHOICES)}."
        ) from None


def cast_floats(tensors: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Cast floating tensors to ``dtype`` (integer tensors and None dtype are left alone)."""
    if dtype is None:
        return dict(tensors)
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}


def dominant_float_dtype(tensors) -> torch.dtype | None:
    """The dtype holding most elements among floating tensors (None when there are none)."""
    counts: dict[torch.dtype, int] = {}
    for value in tensors:
        if value.is_floating_point():
            counts[value.dtype] = counts.get(value.dtype, 0) + value.numel()
    return max(counts, key=counts.get) if counts else None


def path_size(path: str | os.PathLike) -> int:
    """Size in bytes of a file, or of every file under a folder."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def human_size(n_bytes: int) -> str:
    """1536 -> "1.5 KiB"."""
    size = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def run_tool(main: Callable[[], int | None]) -> int:
    """Run a tool's body with the shared error handling of library.cli (user errors exit 2)."""
    return run_guarded(main)
