"""Training state for exact resume: the trained weights, optimizer, scheduler, RNG and our position in the
run, written without pickles (safetensors + JSON) so that a state folder from anyone can be resumed safely.

The data plan of an epoch is a pure function of (seed, epoch), and every batch's noise comes from a seed
derived from (seed, epoch, batch index); the state records the run's seed, so a run resumed from a state
continues exactly as the uninterrupted run would have, also when the config sets no seed.

A state folder (``<name>-…-state``) holds:

- ``model.safetensors``: the trainable modules' weights (as accelerate names them);
- ``optimizer.safetensors``, ``custom_checkpoint_<i>.safetensors`` (the scheduler, the moving average),
  ``scaler.safetensors`` (fp16) and ``random_states_<rank>.safetensors``: nested state dicts, see
  :mod:`library.training.safe_tree`;
- ``train_state.json``: the position, the seed and ``format_version``, written last.

Folders written by earlier versions (accelerate's ``save_state``: ``optimizer.bin``, ``*.pkl``) still load
through ``torch.load(weights_only=True)``; their RNG file needs a full unpickle, so it is read only with
``allow_unsafe_pickle`` (see :mod:`library.training.state_files`).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate.utils import DistributedType
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from library.training import safe_tree
from library.training.state_files import StateError, StateReader, rng_state
from library.util.atomic import (
    fsync_folder,
    fsync_tree,
    os_errors_as_oserror,
    replace_folder,
    write_text_atomic,
)

__all__ = ["StateError", "TrainPosition", "load_state", "read_position", "remove_leftovers", "save_state",
           "seed_for_resume"]

logger = logging.getLogger(__name__)

STATE_FILE = "train_state.json"
MODEL_FILE = "model.safetensors"
#: 2: safetensors + JSON, with the seed; absent (1): accelerate's pickles
FORMAT_VERSION = 2
#: engines that shard weights or optimizer: their state is accelerate's (pickled) checkpoint
SHARDED = (DistributedType.DEEPSPEED, DistributedType.FSDP, DistributedType.MEGATRON_LM)


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


def _indexed(stem: str, i: int, ext: str = ".safetensors") -> str:
    return f"{stem}{ext}" if i == 0 else f"{stem}_{i}{ext}"


# -- saving ---------------------------------------------------------------------------------------------------


def save_state(accelerator, directory: Path, position: TrainPosition, seed: int | None = None) -> None:
    """Write the full state (all processes take part: each writes its RNG, the main one the rest)."""
    tmp = directory.with_name(directory.name + ".tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    skipped: list[str] = []
    try:
        with os_errors_as_oserror(directory):  # a full disk is reported as such, the old state kept
            if accelerator.distributed_type in SHARDED:
                accelerator.save_state(str(tmp))
            else:
                tmp.mkdir(parents=True, exist_ok=True)
                safe_tree.save_tree(tmp / f"random_states_{accelerator.process_index}.safetensors", rng_state())
                if accelerator.is_main_process:
                    skipped = _save_parts(accelerator, tmp)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # give the space back
        raise
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        info = {"current_epoch": position.epoch, "current_step": position.step, **asdict(position), "seed": seed,
                "accelerator_step": accelerator.step, "num_processes": accelerator.num_processes,
                "format_version": FORMAT_VERSION if accelerator.distributed_type not in SHARDED else 1,
                "not_saved": skipped}
        # every part is on the disk before train_state.json, the mark of a complete state, is written
        fsync_tree(tmp)
        write_text_atomic(tmp / STATE_FILE, json.dumps(info, indent=1))
        replace_folder(tmp, directory, synced=True)  # a crash never leaves a half state under the real name
        logger.info("saved state %s", directory.name)
    accelerator.wait_for_everyone()


def remove_leftovers(output_dir: str | Path, name: str) -> list[Path]:
    """The ``<state>.tmp`` folders that killed state saves of run ``name`` left in ``output_dir``.

    One holding ``train_state.json`` is complete (that file is written last) and newer than the state of
    its name, so it takes that name; the others are removed. Returns the folders removed or moved.
    """
    pattern = re.compile(rf"^{re.escape(name)}-(?:\d{{6}}-|step\d{{8}}-)?state\.tmp$")
    try:
        entries = sorted(Path(output_dir).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    done = []
    for path in entries:
        if not pattern.match(path.name) or not path.is_dir() or path.is_symlink():
            continue
        if (path / STATE_FILE).is_file():
            replace_folder(path, path.with_name(path.name.removesuffix(".tmp")))
            logger.info("restored state %s, saved completely before the run was killed", path.name[:-4])
        else:
            shutil.rmtree(path)
            fsync_folder(path.parent)
            logger.info("removed leftover temporary file %s", path)
        done.append(path)
    return done


def _save_parts(accelerator, folder: Path) -> list[str]:
    """Weights, optimizers, registered objects and the fp16 scaler; returns the files that could not be written."""
    for i, model in enumerate(accelerator._models):
        weights = accelerator.unwrap_model(model).state_dict()
        save_file(safe_tree.file_tensors(weights), str(folder / _indexed("model", i)), metadata={"format": "pt"})
    parts = [(_indexed("optimizer", i), opt) for i, opt in enumerate(accelerator._optimizers)]
    parts += [(f"custom_checkpoint_{i}.safetensors", obj) for i, obj in enumerate(accelerator._custom_objects)]
    if accelerator.scaler is not None:
        parts.append(("scaler.safetensors", accelerator.scaler))
    skipped = []
    for name, obj in parts:
        try:
            safe_tree.save_tree(folder / name, obj.state_dict())
        except safe_tree.TreeError as error:
            logger.error("state: %s was not saved: %s; resuming from this state will need resume_inexact", name,
                         error)
            skipped.append(name)
    return skipped


# -- reading --------------------------------------------------------------------------------------------------


def read_info(directory: str | Path, inexact: bool = False) -> dict:
    """``train_state.json`` as a dict ({} when it is broken and ``inexact``)."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        hint = ""
        if Path(directory).is_dir() and any(Path(directory).glob("events.out.tfevents*")):
            hint = " This looks like a TensorBoard log folder;"
        raise StateError(
            f"option 'resume': {str(directory)!r} is not a training state folder (no {STATE_FILE}).{hint} Pass a "
            f"folder named like '<output_name>-000004-state' or '<output_name>-step00000500-state' from "
            f"output_dir, written with save_state = true."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"it holds a JSON {type(data).__name__}, not an object")
        return data
    except (OSError, UnicodeDecodeError, ValueError) as error:
        StateReader(Path(directory), inexact=inexact).broken(path, error, "the run's position and seed")
        return {}


def read_position(directory: str | Path, inexact: bool = False, info: dict | None = None) -> TrainPosition:
    """The position recorded in ``train_state.json`` (``info``: that file, already read)."""
    if info is None:
        info = read_info(directory, inexact)
    path = Path(directory) / STATE_FILE
    try:
        values = {k: info[k] for k in ("epoch", "step", "batches_in_epoch")}
        if any(type(v) is not int or v < 0 for v in values.values()) or values["epoch"] < 1:
            raise ValueError(f"epoch, step and batches_in_epoch must be counts, got {values}")
        return TrainPosition(**values)
    except (KeyError, ValueError) as error:
        if info or not inexact:  # a broken file has already been reported
            reason = f"the key {error} is missing" if isinstance(error, KeyError) else error
            StateReader(Path(directory), inexact=inexact).broken(path, reason, "the run's position")
        logger.warning("resume: the position is unknown; counting steps and epochs from the start")
        return TrainPosition(epoch=1, step=0, batches_in_epoch=0)


def seed_for_resume(seed: int | None, directory: str | Path, inexact: bool = False) -> int | None:
    """The seed a resumed run uses: the config's if set, else the one the state recorded (None: draw one)."""
    saved = read_info(directory, inexact).get("seed")
    saved = saved if type(saved) is int else None
    if seed is None:
        if saved is None:
            logger.warning("resume: the state %s does not record the run's seed (written by an older version); a "
                           "new seed is drawn and the run is not bit-exact. Set seed to the first run's seed to "
                           "resume exactly.", Path(directory).name)
        return saved
    if saved is not None and saved != seed:
        logger.warning("resume: seed = %d differs from the seed the state was trained with (%d); the run goes on "
                       "with %d and is not the one it would have been.", seed, saved, seed)
    return seed


def check_state_matches(directory: str | Path, module: torch.nn.Module) -> None:
    """Refuse a state whose trained weights do not fit ``module`` (another rank, dim or network type)."""
    path = Path(directory) / MODEL_FILE
    if not path.is_file():
        return
    own = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    try:
        with safe_open(str(path), "pt") as f:
            saved = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as error:
        raise _model_error(path, error) from None
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
        raise StateError(
            f"option 'resume': the state in {str(directory)!r} was saved by a differently shaped network: "
            f"{'; '.join(parts)}. Resume with the same network_dim, network_alpha, network_args and "
            f"network_module as the saved run."
        )


def _model_error(path: Path, error) -> StateError:
    return StateError(
        f"option 'resume': the trained weights {str(path)!r} cannot be read ({error}); the file is missing, "
        f"truncated or not a safetensors file. The weights cannot be skipped, not even with resume_inexact: "
        f"resume from another state folder (an earlier one, or the last saved file as network_weights)."
    )


def _load_models(accelerator, directory: Path) -> None:
    for i, model in enumerate(accelerator._models):
        path = directory / _indexed("model", i)
        try:
            weights = load_file(str(path))
            accelerator.unwrap_model(model).load_state_dict(weights)
        except (SafetensorError, OSError, RuntimeError) as error:
            raise _model_error(path, error) from None


def load_state(accelerator, directory: str | Path, module: torch.nn.Module, *, allow_unsafe_pickle: bool = False,
               inexact: bool = False) -> TrainPosition:
    """Restore everything :func:`save_state` wrote into the prepared objects; returns the position.

    A part that cannot be read is an error naming its file, or with ``inexact`` a warning (the part keeps
    its fresh state). Pickles are read only with ``weights_only=True`` unless ``allow_unsafe_pickle``.
    """
    directory = Path(directory)
    info = read_info(directory, inexact)
    position = read_position(directory, inexact, info)
    version = info.get("format_version", 1)
    reader = StateReader(directory, allow_unsafe_pickle=allow_unsafe_pickle, inexact=inexact,
                         legacy=(version != FORMAT_VERSION) if info and type(version) is int else None,
                         not_saved=info.get("not_saved", []))
    if accelerator.distributed_type in SHARDED:
        reader.load_accelerate_checkpoint(accelerator)
    else:
        check_state_matches(directory, module)
        _load_models(accelerator, directory)
        _load_parts(accelerator, reader, position)
        step = info.get("accelerator_step")
        if reader.rng_step is not None:
            accelerator.step = reader.rng_step
        elif type(step) is int:
            accelerator.step = step
    reader.report()
    logger.info("resumed from %s at epoch %d, step %d", directory.name, position.epoch, position.step)
    return position


def _load_parts(accelerator, reader: StateReader, position: TrainPosition) -> None:
    for i, opt in enumerate(accelerator._optimizers):
        reader.load_part(_indexed("optimizer", i), _indexed("optimizer", i, ".bin"), opt.load_state_dict,
                         "the optimizer's moments")
    for i, obj in enumerate(accelerator._custom_objects):
        applied = reader.load_part(f"custom_checkpoint_{i}.safetensors", f"custom_checkpoint_{i}.pkl",
                                   obj.load_state_dict, f"the state of {type(obj).__name__}")
        if not applied and hasattr(obj, "get_last_lr"):
            _fast_forward(obj, position.step)
    if accelerator.scaler is not None:
        reader.load_part("scaler.safetensors", "scaler.pt", accelerator.scaler.load_state_dict,
                         "the fp16 loss scale")
    reader.load_part(f"random_states_{accelerator.process_index}.safetensors",
                     f"random_states_{accelerator.process_index}.pkl", reader.apply_rng, "the random generators")


def _fast_forward(scheduler, steps: int) -> None:
    """A scheduler whose state is lost: step it to the position so the learning rate is where it was."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(steps):
            scheduler.step()
    logger.warning("resume: the learning-rate schedule was stepped %d times to reach the state's position", steps)


def prune_state(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
        logger.info("removed old state %s", path.name)

