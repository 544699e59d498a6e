"""Reading the files of a state folder safely: safetensors trees, older pickles with ``weights_only=True``
only, and one clear message (or, with ``resume_inexact``, a warning) for a file that is missing, broken or
would need a full unpickle.
"""

from __future__ import annotations

import logging
import pickle
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError

from library.errors import UserError
from library.training import safe_tree

logger = logging.getLogger(__name__)

_INEXACT_HINT = "pass --resume_inexact (resume_inexact = true) to go on without it; the run is then no longer bit-exact"


class StateError(UserError):
    """A resume folder that is not a usable training state."""


class _Unreadable(Exception):
    def __init__(self, path: Path, reason: str, unsafe: bool = False):
        super().__init__(reason)
        self.path, self.reason, self.unsafe = path, reason, unsafe


def rng_state() -> dict[str, Any]:
    """This process's random generators (Python, NumPy, torch CPU and CUDA) as a safe tree."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng(python, numpy_state, cpu, cuda) -> None:
    random.setstate(python)
    if isinstance(numpy_state[1], torch.Tensor):
        numpy_state = (numpy_state[0], numpy_state[1].numpy().astype(np.uint32), *numpy_state[2:])
    np.random.set_state(numpy_state)
    torch.set_rng_state(cpu)
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


class StateReader:
    """Reads the parts of one state folder; collects what ``inexact`` let it skip."""

    def __init__(self, directory: Path, *, allow_unsafe_pickle: bool = False, inexact: bool = False,
                 legacy: bool | None = False, not_saved=()):
        self.directory, self.allow_unsafe_pickle, self.inexact = directory, allow_unsafe_pickle, inexact
        #: True: accelerate's files of earlier versions; False: ours; None: unknown, try ours then theirs
        self.legacy = legacy
        self.not_saved = set(not_saved) if isinstance(not_saved, list) else set()
        self.skipped: list[str] = []
        #: accelerate's step counter from an earlier version's RNG file
        self.rng_step: int | None = None

    def broken(self, path: Path, reason, what: str) -> None:
        """A part that cannot be used: an error, or with ``inexact`` a warning."""
        if not self.inexact:
            raise StateError(
                f"option 'resume': {str(path)!r} cannot be read: {reason}. It holds {what}; the state folder is "
                f"corrupt or incomplete (an interrupted save or copy?). Resume from another state folder, or "
                f"{_INEXACT_HINT}."
            )
        logger.warning("resume_inexact: %s cannot be read (%s); going on without %s: the run is no longer "
                       "bit-exact", path, reason, what)
        self.skipped.append(path.name)

    def _refuse_unsafe(self, path: Path, reason: str, what: str) -> None:
        if not self.inexact:
            raise StateError(
                f"option 'resume': refused to load {str(path)!r}: it is a pickle holding more than tensors, and "
                f"unpickling it may run code from the file. States saved by this version hold no pickles; this "
                f"one was written by an earlier version or comes from elsewhere. Only if you trust where the "
                f"folder comes from, pass --allow_unsafe_pickle (allow_unsafe_pickle = true); or "
                f"{_INEXACT_HINT} ({what} start afresh). (torch said: {reason})"
            )
        logger.warning("resume_inexact: %s was not loaded (a pickle that may run code); going on without %s: the "
                       "run is no longer bit-exact", path, what)
        self.skipped.append(path.name)

    def load_part(self, name: str, legacy_name: str, apply: Callable[[Any], Any], what: str) -> bool:
        """Read ``name`` (or an earlier version's ``legacy_name``) and ``apply`` it; False when skipped."""
        try:
            value, path = self._read(name, legacy_name)
        except _Unreadable as error:
            (self._refuse_unsafe if error.unsafe else self.broken)(error.path, error.reason, what)
            return False
        try:
            apply(value)
        except (KeyError, IndexError, ValueError, TypeError, RuntimeError, AttributeError) as error:
            self.broken(path, f"it does not fit this run ({type(error).__name__}: {error})", what)
            return False
        return True

    def _read(self, name: str, legacy_name: str) -> tuple[Any, Path]:
        names = {True: [legacy_name], False: [name], None: [name, legacy_name]}[self.legacy]
        if name in self.not_saved:
            raise _Unreadable(self.directory / name, "it was not saved (its state holds objects that cannot be "
                                                     "saved without pickle)")
        for candidate in names:
            path = self.directory / candidate
            if path.is_file():
                return (self._read_tree(path) if candidate == name else self._read_pickle(path)), path
        raise _Unreadable(self.directory / names[0], "the file is missing")

    def _read_tree(self, path: Path) -> Any:
        try:
            return safe_tree.load_tree(path)
        except (SafetensorError, OSError, safe_tree.TreeError, ValueError, TypeError) as error:
            raise _Unreadable(path, f"not a complete state file ({error})") from None

    def _read_pickle(self, path: Path) -> Any:
        """An earlier version's file: tensors and plain containers only, unless ``allow_unsafe_pickle``."""
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            if "weights only" not in str(error).lower():
                raise _Unreadable(path, f"not a complete pickle ({str(error).splitlines()[0]})") from None
            if not self.allow_unsafe_pickle:
                raise _Unreadable(path, str(error).splitlines()[0], unsafe=True) from None
        except (RuntimeError, EOFError, OSError, ValueError) as error:
            raise _Unreadable(path, f"not a complete PyTorch file ({error})") from None
        logger.warning("allow_unsafe_pickle: fully unpickling %s (only safe when you trust where it comes from)", path)
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:  # anything can fail inside an arbitrary pickle
            raise _Unreadable(path, f"unpickling failed ({type(error).__name__}: {error})") from None

    def apply_rng(self, value: dict) -> None:
        """Set the generators from our layout or from accelerate's ``random_states_<rank>.pkl``."""
        if "python" in value:
            _set_rng(value["python"], value["numpy"], value["torch"], value.get("cuda") or [])
            return
        _set_rng(value["random_state"], value["numpy_random_seed"], value["torch_manual_seed"],
                 value.get("torch_cuda_manual_seed") or [])
        if type(value.get("step")) is int:
            self.rng_step = value["step"]

    def load_accelerate_checkpoint(self, accelerator) -> None:
        """DeepSpeed/FSDP states are accelerate's own checkpoints, made of pickles."""
        if not self.allow_unsafe_pickle:
            raise StateError(
                f"option 'resume': {str(self.directory)!r} is a {accelerator.distributed_type.value} state, which "
                f"accelerate writes as pickles that may run code when loaded. Only if you trust where the folder "
                f"comes from, pass --allow_unsafe_pickle (allow_unsafe_pickle = true)."
            )
        accelerator.load_state(str(self.directory))

    def report(self) -> None:
        if self.skipped:
            logger.warning("resume: the run is no longer bit-exact: %d part(s) of the state were skipped (%s)",
                           len(self.skipped), ", ".join(self.skipped))
