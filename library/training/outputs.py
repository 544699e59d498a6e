"""Output file names (sd-scripts' scheme) and keeping only the last n saves."""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def epoch_file(output_dir: str | Path, name: str, epoch: int, ext: str) -> Path:
    """``{name}-{epoch:06d}.{ext}``"""
    return Path(output_dir) / f"{name}-{epoch:06d}.{ext}"


def step_file(output_dir: str | Path, name: str, step: int, ext: str) -> Path:
    """``{name}-step{step:08d}.{ext}``"""
    return Path(output_dir) / f"{name}-step{step:08d}.{ext}"


def final_file(output_dir: str | Path, name: str, ext: str) -> Path:
    """``{name}.{ext}``"""
    return Path(output_dir) / f"{name}.{ext}"


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
    if path.exists():
        path.unlink()
        logger.info("removed old save %s", path.name)
