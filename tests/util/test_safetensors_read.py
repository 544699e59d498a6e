"""read_tensors: a safetensors file read into memory of its own (no memory map), and refused when damaged."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from library.errors import ModelLoadError
from library.util.safetensors_io import read_tensors


def _owned(t: torch.Tensor) -> bool:
    """Its own torch allocation (resizable, starting at the tensor), 64-byte aligned when it is not tiny (the
    allocator may pack allocations of a few bytes more tightly)."""
    storage = t.untyped_storage()
    aligned = t.data_ptr() % 64 == 0 or t.numel() * t.element_size() < 4096
    return storage.resizable() and storage.data_ptr() == t.data_ptr() and aligned


def test_every_dtype_reads_equal_to_safetensors_own_reader_into_aligned_memory(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "f32": torch.randn(3, 5, generator=g), "big": torch.randn(64, 65, generator=g), "f16": torch.randn(7, generator=g).half(),
        "bf16": torch.randn(2, 2, 2, generator=g).bfloat16(), "i64": torch.arange(5),
        "u8": torch.arange(9, dtype=torch.uint8), "bool": torch.tensor([True, False]),
        "f8": torch.randn(4, generator=g).to(torch.float8_e4m3fn), "empty": torch.zeros(0, 3),
        "scalar": torch.tensor(2.5),
    }
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path), metadata={"a": "b"})
    ours, metadata = read_tensors(path)
    theirs = load_file(str(path))
    assert metadata == {"a": "b"} and list(ours) == list(theirs)
    for key, value in theirs.items():
        assert ours[key].dtype == value.dtype and ours[key].shape == value.shape
        assert torch.equal(ours[key].reshape(-1).view(torch.uint8), value.reshape(-1).view(torch.uint8)), key
        if value.numel():
            assert _owned(ours[key]), key
    # safetensors' own reader hands out views of the mapped file (what the copy avoids)
    assert not all(_owned(v) for v in theirs.values() if v.numel() * v.element_size() >= 4096)


def _write_raw(path, header: dict, data: bytes) -> None:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


@pytest.mark.parametrize(
    ("header", "data", "words"),
    [
        ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, "offsets 0..16"),
        ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}, b"\0" * 16, "do not hold [3]"),
        ({"w": {"dtype": "Q4", "shape": [4], "data_offsets": [0, 4]}}, b"\0" * 4, "unknown dtype"),
        ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}, b"", "do not hold"),
        ({"w": "nonsense"}, b"", "bad shape/offsets"),
    ],
)
def test_a_damaged_file_is_refused_naming_the_tensor(tmp_path, header, data, words):
    path = tmp_path / "bad.safetensors"
    _write_raw(path, header, data)
    with pytest.raises(ModelLoadError) as info:
        read_tensors(path)
    assert str(path) in str(info.value) and words in str(info.value) and "download it again" in str(info.value)


def test_random_bytes_and_a_short_file_are_refused(tmp_path):
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"abc")
    noise = tmp_path / "noise.safetensors"
    noise.write_bytes(bytes(range(256)) * 8)
    for path, words in ((short, "shorter than 8 bytes"), (noise, "implausible")):
        with pytest.raises(ModelLoadError, match=words):
            read_tensors(path)
    not_json = tmp_path / "text.safetensors"
    not_json.write_bytes(struct.pack("<Q", 4) + b"{{{{")
    with pytest.raises(ModelLoadError, match="not JSON"):
        read_tensors(not_json)


def test_floats_cast_as_read_equal_a_cast_after_and_other_dtypes_are_untouched(tmp_path):
    g = torch.Generator().manual_seed(1)
    tensors = {"a16": torch.randn(300, 7, generator=g).half(), "big16": torch.randn(1000, 33, generator=g).half(),
               "b16": torch.randn(5, generator=g).bfloat16(), "f32": torch.randn(4, generator=g),
               "i64": torch.arange(6), "f8": torch.randn(9, generator=g).to(torch.float8_e4m3fn),
               "empty16": torch.zeros(0, 2, dtype=torch.float16), "tail16": torch.randn(3, generator=g).half()}
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path))
    plain, _ = read_tensors(path)
    cast, _ = read_tensors(path, torch.float32)
    assert list(cast) == list(plain)
    for key, value in plain.items():
        want = value.float() if value.is_floating_point() else value
        assert cast[key].dtype == want.dtype and torch.equal(cast[key], want), key
        if value.numel():
            assert _owned(cast[key]), key  # not a view of the reused staging buffers
    # two tensors read through the same staging buffer keep their own values
    assert not torch.equal(cast["a16"][:3, :3], cast["big16"][:3, :3])


def test_a_cut_short_file_is_refused_when_casting_too(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"a": torch.randn(64, 64).half(), "b": torch.randn(64, 64).half()}, str(path))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ModelLoadError, match="safetensors"):
        read_tensors(path, torch.float32)
