"""Read weight files without running code: safetensors, or pickles restricted to tensors."""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import torch

from library.errors import ModelLoadError

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def load_state_dict_file(
    path: str | os.PathLike, *, allow_unsafe_pickle: bool = False, in_memory: bool = False,
    float_dtype: torch.dtype | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load ``(state_dict, metadata)`` from a ``.safetensors`` or pickle (``.ckpt/.pt/.pth/.bin``) file.

    Pickles are read with ``torch.load(weights_only=True)``; one that needs more than tensors and
    plain containers is refused unless ``allow_unsafe_pickle`` (then ``weights_only=False``, which
    can run code from the file). A top-level ``"state_dict"`` entry is unwrapped. Pickles have no
    metadata (empty dict). ``in_memory``: a .safetensors file's tensors are read into memory of their own
    (aligned, no memory map left behind) instead of being views of the mapped file; with ``float_dtype`` its
    floating tensors are cast to that dtype as they are read (see :func:`read_tensors`).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"Model file {path} does not exist (or is not a file). Check the path.")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        if in_memory:
            from library.util.safetensors_io import read_tensors

            return read_tensors(path, float_dtype)
        return _load_safetensors(path)
    if suffix in PICKLE_SUFFIXES:
        return _load_pickle(path, allow_unsafe_pickle), {}
    raise ModelLoadError(
        f"Model file {path} has the extension {suffix!r}; expected .safetensors, "
        f"{', '.join(PICKLE_SUFFIXES)}."
    )


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            state = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelLoadError(
            f"Could not read {path} as safetensors ({error}). The file may be truncated or not a "
            "safetensors file; download it again."
        ) from error
    return state, metadata


def _load_pickle(path: Path, allow_unsafe_pickle: bool) -> dict[str, torch.Tensor]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=not allow_unsafe_pickle)
    except pickle.UnpicklingError as error:
        if allow_unsafe_pickle:
            raise ModelLoadError(f"Could not unpickle {path}: {error}") from error
        raise ModelLoadError(
            f"Refused to load {path}: this pickle file contains more than weights and loading it "
            "may run code from the file. Convert it to .safetensors with a tool you trust, or, only "
            "if you trust its source, pass allow_unsafe_pickle=True. "
            f"(torch said: {str(error).splitlines()[0]})"
        ) from error
    except (RuntimeError, EOFError, OSError) as error:
        raise ModelLoadError(f"Could not read {path} as a PyTorch checkpoint ({error}).") from error
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} holds a {type(data).__name__}, not a dict of tensors.")
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if len(tensors) < len(data):
        logger.debug("%s: ignored %d non-tensor entries", path, len(data) - len(tensors))
    return tensors
