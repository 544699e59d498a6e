"""Output file names (sd-scripts' scheme) and keeping only the last n saves."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)


def _named(output_dir: str | Path, stem: str, ext: str) -> Path:
    """``stem.ext``, or a folder ``stem`` when ``ext`` is empty (diffusers saves)."""
    return Path(output_dir) / (f"{stem}.{ext}" if ext else stem)


def epoch_file(output_dir: str | Path, name: str, epoch: int, ext: str) -> Path:
    """``{name}-{epoch:06d}.{ext}``"""
    return _named(output_dir, f"{name}-{epoch:06d}", ext)


def step_file(output_dir: str | Path, name: str, step: int, ext: str) -> Path:
    """``{name}-step{step:08d}.{ext}``"""
    return _named(output_dir, f"{name}-step{step:08d}", ext)


def final_file(output_dir: str | Path, name: str, ext: str) -> Path:
    """``{name}.{ext}``"""
    return _named(output_dir, name, ext)


def prune_epoch_saves(output_dir: str | Path, name: str, ext: str, epoch: int, every: int, keep: int | None) -> None:
    """After saving ``epoch``, remove the epoch save that falls out of the last ``keep`` saves."""
    if not keep:
        return
    old_epoch = epoch - every * keep
    if old_epoch > 0:
        _remove(epoch_file(output_dir, name, old_epoch, ext))


def prune_step_saves(output_dir: str | Path, name: str, ext: str, step: int, every: int, keep_steps: int | None) -> None:
    """After saving ``step``, remove step saves older than the last ``keep_steps`` steps (sd-scripts rule)."""
    if not keep_steps:
        return
    old_step = step - every * (keep_steps // every + 1)
    if old_step > 0:
        _remove(step_file(output_dir, name, old_step, ext))


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
        logger.info("removed old save %s", path.name)
    elif path.exists():
        path.unlink()
        logger.info("removed old save %s", path.name)
