"""The streamed safetensors writer (whole-model saves): any reader reads back exactly what was given."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from library.util.safetensors_io import write_streamed


def tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "b.weight": torch.randn(5, 3, generator=g),
        "a.half": torch.randn(7, generator=g).to(torch.bfloat16),
        "f8": torch.randn(4, 4, generator=g).to(torch.float8_e4m3fn),
        "ids": torch.arange(6).reshape(2, 3),
        "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.empty(0, 4),
        "strided": torch.randn(4, 6, generator=g).t(),  # not contiguous
    }


def test_round_trip_of_every_dtype_and_shape(tmp_path):
    path = tmp_path / "m.safetensors"
    source = tensors()
    write_streamed(path, source, {"k": "v"})
    loaded = load_file(str(path))
    assert loaded.keys() == source.keys()
    for key, tensor in source.items():
        assert loaded[key].dtype == tensor.dtype and loaded[key].shape == tensor.shape, key
        assert torch.equal(loaded[key].view(torch.uint8) if tensor.dtype == torch.float8_e4m3fn else loaded[key],
                           tensor.view(torch.uint8) if tensor.dtype == torch.float8_e4m3fn else tensor), key
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"k": "v"}


def test_dtype_casts_floating_tensors_only_and_offsets_are_aligned(tmp_path):
    path = tmp_path / "m.safetensors"
    source = tensors()
    write_streamed(path, source, None, dtype=torch.float16)
    loaded = load_file(str(path))
    assert loaded["b.weight"].dtype == torch.float16 and torch.equal(loaded["b.weight"], source["b.weight"].half())
    assert loaded["ids"].dtype == torch.int64 and loaded["mask"].dtype == torch.bool
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    assert n % 8 == 0
    header = json.loads(raw[8:8 + n])
    assert "__metadata__" not in header
    spans = sorted(entry["data_offsets"] for entry in header.values())
    assert spans[0][0] == 0 and spans[-1][1] == len(raw) - 8 - n  # contiguous, nothing left over
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    sizes = {"I64": 8, "F16": 2, "F8_E4M3": 1, "BOOL": 1}
    for entry in header.values():
        assert entry["data_offsets"][0] % sizes[entry["dtype"]] == 0


def test_a_dtype_safetensors_cannot_store_is_refused_before_writing(tmp_path):
    path = tmp_path / "m.safetensors"
    with pytest.raises(TypeError, match="z: safetensors cannot store dtype torch.complex64"):
        write_streamed(path, {"z": torch.zeros(2, dtype=torch.complex64)})
    assert not path.exists()
