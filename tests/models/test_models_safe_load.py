from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

from library.errors import ModelLoadError
from library.models.safe_load import load_state_dict_file


class _RunsCode:
    """Unpickling this object runs a shell command (what a malicious .ckpt does)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_safetensors_with_metadata(tmp_path):
    path = tmp_path / "a.safetensors"
    save_file({"w": torch.arange(3.0)}, str(path), metadata={"k": "v"})
    state, metadata = load_state_dict_file(path)
    assert torch.equal(state["w"], torch.arange(3.0)) and metadata == {"k": "v"}


def test_ckpt_unwraps_state_dict(tmp_path):
    path = tmp_path / "a.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "global_step": 5}, path)
    state, metadata = load_state_dict_file(path)
    assert list(state) == ["w"] and metadata == {}


def test_unsafe_pickle_refused_and_not_run(tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "payload": _RunsCode(str(marker))}, path)
    with pytest.raises(ModelLoadError) as info:
        load_state_dict_file(path)
    message = str(info.value)
    assert "evil.ckpt" in message and "run code" in message and "safetensors" in message
    assert "allow_unsafe_pickle=True" in message
    assert not marker.exists()


def test_unsafe_pickle_allowed_explicitly(tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "payload": _RunsCode(str(marker))}, path)
    state, _ = load_state_dict_file(path, allow_unsafe_pickle=True)
    assert list(state) == ["w"]
    assert marker.exists()  # proves the refused file really would have run code


def test_missing_and_bad_extension(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_state_dict_file(tmp_path / "nope.safetensors")
    other = tmp_path / "model.onnx"
    other.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="extension"):
        load_state_dict_file(other)


def test_truncated_safetensors(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(ModelLoadError, match="broken.safetensors"):
        load_state_dict_file(path)


def test_a_ckpt_written_from_any_device_holds_cpu_tensors_in_the_asked_dtype(tmp_path):
    from library.models.single_file import write_checkpoint

    device = "cuda" if torch.cuda.is_available() else "cpu"  # the GPU case runs where there is one
    state = {"w": torch.ones(4, 4, device=device), "steps": torch.arange(3, device=device)}
    path = write_checkpoint(tmp_path / "model.ckpt", state, {}, dtype=torch.float16)
    loaded = torch.load(path, weights_only=True)["state_dict"]  # no map_location: as another tool reads it
    assert {k: (v.device.type, v.dtype) for k, v in loaded.items()} == {
        "w": ("cpu", torch.float16), "steps": ("cpu", torch.int64)}
    assert torch.equal(loaded["w"].float(), torch.ones(4, 4))
