"""Training state for exact resume: accelerate's state (weights, optimizer, scheduler, RNG) plus our
position in the run (``train_state.json``).

The data plan of an epoch is a pure function of (seed, epoch), and every batch's noise comes from a seed
derived from (seed, epoch, batch index), so a run resumed from a state continues exactly as the
uninterrupted run would have.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from library.errors import UserError
from library.util.atomic import write_text_atomic

logger = logging.getLogger(__name__)

STATE_FILE = "train_state.json"


@dataclass(frozen=True)
class TrainPosition:
    """Where a run stands: the current epoch (1-based), optimizer steps done, batches done in that epoch."""

    epoch: int
    step: int
    batches_in_epoch: int


def epoch_state_dir(output_dir, name: str, epoch: int) -> Path:
    return Path(output_dir) / f"{name}-{epoch:06d}-state"


def step_state_dir(output_dir, name: str, step: int) -> Path:
    return Path(output_dir) / f"{name}-step{step:08d}-state"


def final_state_dir(output_dir, name: str) -> Path:
    return Path(output_dir) / f"{name}-state"


def save_state(accelerator, directory: Path, position: TrainPosition) -> None:
    """Write the full state (all processes take part; accelerate writes from the main one)."""
    tmp = directory.with_name(directory.name + ".tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_text_atomic(tmp / STATE_FILE, json.dumps({"current_epoch": position.epoch,
                                                        "current_step": position.step, **asdict(position)}))
        if directory.exists():
            shutil.rmtree(directory)
        tmp.rename(directory)  # a crash mid-save never leaves a half state under the real name
        logger.info("saved state %s", directory.name)
    accelerator.wait_for_everyone()


def read_position(directory: str | Path) -> TrainPosition:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        hint = ""
        if Path(directory).is_dir() and any(Path(directory).glob("events.out.tfevents*")):
            hint = " This looks like a TensorBoard log folder;"
        raise UserError(
            f"option 'resume': {str(directory)!r} is not a training state folder (no {STATE_FILE}).{hint} Pass a "
            f"folder named like '<output_name>-000004-state' or '<output_name>-step00000500-state' from "
            f"output_dir, written with save_state = true."
        )
    data = json.loads(path.read_text(encoding="utf-8"))
    return TrainPosition(epoch=int(data["epoch"]), step=int(data["step"]),
                         batches_in_epoch=int(data["batches_in_epoch"]))


def check_state_matches(directory: str | Path, module: torch.nn.Module) -> None:
    """Refuse a state whose trained weights do not fit ``module`` (another rank, dim or network type)."""
    path = Path(directory) / "model.safetensors"
    if not path.is_file():
        return
    own = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    with safe_open(str(path), "pt") as f:
        saved = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    missing = sorted(set(own) - set(saved))
    extra = sorted(set(saved) - set(own))
    shapes = sorted(k for k in set(own) & set(saved) if own[k] != saved[k])
    if missing or extra or shapes:
        parts = []
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} shapes differ (e.g. {k}: state {saved[k]}, now {own[k]})")
        if missing:
            parts.append(f"{len(missing)} keys only in this run (e.g. {missing[0]})")
        if extra:
            parts.append(f"{len(extra)} keys only in the state (e.g. {extra[0]})")
        raise UserError(
            f"option 'resume': the state in {str(directory)!r} was saved by a differently shaped network: "
            f"{'; '.join(parts)}. Resume with the same network_dim, network_alpha, network_args and "
            f"network_module as the saved run."
        )


def load_state(accelerator, directory: str | Path, module: torch.nn.Module) -> TrainPosition:
    position = read_position(directory)
    check_state_matches(directory, module)
    accelerator.load_state(str(directory))
    logger.info("resumed from %s at epoch %d, step %d", Path(directory).name, position.epoch, position.step)
    return position


def prune_state(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
        logger.info("removed old state %s", path.name)
