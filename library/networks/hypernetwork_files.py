"""Reading and writing the dicts of webui hypernetwork files: ``.pt`` weights-only, ``.safetensors`` flattened.

The webui's layout is ``{size: (k state dict, v state dict), "layer_structure": …, …}`` (see
:mod:`library.networks.hypernetwork`); the safetensors form keys the tensors ``<size>.<0|1>.<param>`` and keeps the
other entries as JSON under ``hypernetwork.<field>`` in the metadata.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from library.errors import ModelLoadError
from library.util.safetensors_io import load_safetensors, read_metadata

#: the non-tensor entries of a webui file, in the order the webui writes them
FILE_FIELDS = ("step", "name", "layer_structure", "activation_func", "is_layer_norm", "weight_initialization",
               "sd_checkpoint", "sd_checkpoint_name", "activate_output", "use_dropout", "dropout_structure",
               "last_layer_dropout", "optional_info")
META_PREFIX = "hypernetwork."


def flatten(state: dict) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """A webui dict -> (tensors keyed ``<size>.<0|1>.<param>``, the other fields)."""
    tensors = {f"{size}.{index}.{name}": t for size, pair in state.items() if isinstance(size, int)
               for index, sd in enumerate(pair) for name, t in sd.items()}
    return tensors, {k: v for k, v in state.items() if not isinstance(k, int)}


def unflatten(tensors: dict[str, torch.Tensor], fields: dict[str, object]) -> dict:
    """The inverse of :func:`flatten`; keys that are not ``<size>.<0|1>.<param>`` raise ValueError."""
    state: dict = {}
    for key, t in tensors.items():
        size, index, name = key.split(".", 2)
        pair = state.setdefault(int(size), ({}, {}))
        pair[int(index)][name] = t
    return {**state, **fields}


def read_hypernetwork(source) -> tuple[dict, str]:
    """(webui dict, description) from a ``.pt``/``.ckpt`` (read weights-only), a ``.safetensors`` or a dict."""
    if isinstance(source, dict):
        return _checked(dict(source), "a hypernetwork dict"), "a hypernetwork dict"
    path = Path(source)
    if not path.is_file():
        raise ModelLoadError(f"Hypernetwork file {path} does not exist. Check network_weights.")
    if path.suffix.lower() == ".safetensors":
        tensors = load_safetensors(path)
        meta = read_metadata(path)
        try:
            fields = {k[len(META_PREFIX):]: json.loads(v) for k, v in meta.items() if k.startswith(META_PREFIX)}
            state = unflatten(tensors, fields)
        except (ValueError, IndexError):
            raise ModelLoadError(
                f"{path} is not a hypernetwork safetensors file: its keys (e.g. {next(iter(tensors), 'none')!r}) are "
                "not <size>.<0|1>.linear.<i>.weight/bias. A LoRA goes with network_module = networks.lora."
            ) from None
        return _checked(state, str(path)), str(path)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- random bytes raise EOFError, KeyError, RuntimeError, UnpicklingError …
        first = str(exc).strip().split("\n")[0][:160]
        raise ModelLoadError(
            f"Refused to load {path} as a hypernetwork: the safe (weights-only) reader cannot read it ({first}). A "
            "webui hypernetwork holds only tensors, numbers, strings and lists; one that holds other objects "
            "(or a damaged file) is not read, since unpickling it fully could run code from the file. Save it "
            "again from the webui, or retrain it here."
        ) from None
    return _checked(state, str(path)), str(path)


def _checked(state, description: str) -> dict:
    """``state`` when it has the webui's layout: {int size: (k dict, v dict) of tensors, fields…}."""
    if not isinstance(state, dict) or not any(isinstance(k, int) for k in state):
        what = type(state).__name__ if not isinstance(state, dict) else f"a dict with keys {sorted(map(str, state))[:4]}"
        raise ModelLoadError(
            f"{description} is not a webui hypernetwork: it holds {what}, not {{size: (k, v)}} entries such as 768. "
            "A LoRA goes with network_module = networks.lora."
        )
    for size in (k for k in state if isinstance(k, int)):
        pair = state[size]
        if (not isinstance(pair, (tuple, list)) or len(pair) != 2
                or not all(isinstance(sd, dict) and all(isinstance(t, torch.Tensor) for t in sd.values())
                           for sd in pair)):
            raise ModelLoadError(f"{description}: entry {size} is not a (k, v) pair of tensor dicts; the file is "
                                 "damaged or not a webui hypernetwork.")
    return state
