"""Nested state dicts (optimizer, scheduler, RNG) as one safetensors file: the tensors as tensors, the rest
as a JSON tree in the file's metadata. Nothing is pickled, so reading a file can never run code.

The tree keeps Python's types: tuples, dicts with int keys (an optimizer's ``state``) and floats (written with
``repr``, so they read back bit for bit, ``nan`` and ``inf`` included) come back as they were saved.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

#: the metadata key holding the JSON tree
TREE_KEY = "sdtrain_tree"
_TENSOR, _TUPLE, _DICT, _DTYPE = "__tensor__", "__tuple__", "__dict__", "__dtype__"


class TreeError(ValueError):
    """A value that this layout cannot hold (on save) or a malformed tree (on load)."""


def encode(value: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """``value`` as a JSON-able tree; its tensors are moved into ``tensors`` under generated names."""
    if isinstance(value, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = value
        return {_TENSOR: name}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list):
        return [encode(v, tensors, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return {_TUPLE: [encode(v, tensors, f"{path}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, dict):
        return {_DICT: [[encode(k, tensors, f"{path}.key"), encode(v, tensors, f"{path}.{k}")]
                        for k, v in value.items()]}
    if isinstance(value, torch.dtype):
        return {_DTYPE: str(value).removeprefix("torch.")}
    raise TreeError(f"{path or 'the state'} holds a {type(value).__name__}, which cannot be saved without pickle")


def decode(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of :func:`encode`."""
    if isinstance(tree, list):
        return [decode(v, tensors) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if len(tree) != 1:
        raise TreeError(f"unexpected object with keys {sorted(tree)[:5]}")
    (tag, body), = tree.items()
    if tag == _TENSOR:
        if body not in tensors:
            raise TreeError(f"tensor {body!r} is missing")
        return tensors[body]
    if tag == _TUPLE:
        return tuple(decode(v, tensors) for v in body)
    if tag == _DICT:
        return {_hashable(decode(k, tensors)): decode(v, tensors) for k, v in body}
    if tag == _DTYPE:
        dtype = getattr(torch, str(body), None)
        if not isinstance(dtype, torch.dtype):
            raise TreeError(f"unknown dtype {body!r}")
        return dtype
    raise TreeError(f"unknown tag {tag!r}")


def _hashable(key: Any) -> Any:
    if isinstance(key, list | dict | torch.Tensor):
        raise TreeError(f"a dict key of type {type(key).__name__}")
    return key


def file_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors as safetensors takes them: on the CPU, contiguous, no two sharing memory."""
    out, seen = {}, set()
    for name, tensor in tensors.items():
        t = tensor.detach()
        t = t.cpu() if t.device.type != "cpu" else t
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        if not t.is_contiguous() or (ptr is not None and ptr in seen):
            t = t.contiguous().clone()
            ptr = t.untyped_storage().data_ptr()
        if ptr is not None:
            seen.add(ptr)
        out[name] = t
    return out


def save_tree(path: Path, value: Any) -> None:
    tensors: dict[str, torch.Tensor] = {}
    tree = encode(value, tensors)
    save_file(file_tensors(tensors), str(path), metadata={TREE_KEY: json.dumps(tree)})


def load_tree(path: Path, device: str = "cpu") -> Any:
    """Read a file written by :func:`save_tree`; raises ``TreeError`` or safetensors' error when it is broken."""
    with safe_open(str(path), "pt", device=device) as f:
        meta = f.metadata() or {}
        if TREE_KEY not in meta:
            raise TreeError(f"no {TREE_KEY!r} entry in its metadata")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    try:
        tree = json.loads(meta[TREE_KEY])
    except json.JSONDecodeError as error:
        raise TreeError(f"its {TREE_KEY!r} metadata is not JSON ({error})") from None
    return decode(tree, tensors)
