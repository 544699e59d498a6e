"""The webui's hashes (issue 16): equal to an independent computation on files of several sizes, and no freshly
saved LoRA reported as changed by inspect_lora."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct

import pytest
import safetensors.torch
import torch

from library.tools.models.hashes import duplicate_groups, hash_file
from library.tools.models.inspect_lora import inspect_lora
from library.util.safetensors_io import read_metadata, save_safetensors
from tests.tools_models.helpers import load_tool

hash_cli = load_tool("hash_model")

WINDOW = slice(0x100000, 0x110000)
#: tensor payloads below 1 MiB, ending inside the legacy window, just past it, and well above it
SIZES = (40_000, 0x100000 + 0x8000, 0x110000 + 64, 3 << 20)
USER_META = {"ss_network_dim": "64", "ss_output_name": "x", "modelspec.title": "caf\u00e9 \"q\"",
             "modelspec.architecture": "stable-diffusion-v1/lora"}


def tensors_of(n_bytes: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "lora_unet_a.lora_down.weight": torch.randn(n_bytes // 4, generator=gen),
        "lora_unet_a.lora_up.weight": torch.randn(16, generator=gen).half(),
        "lora_unet_a.alpha": torch.tensor(8.0),
        "step": torch.arange(3),
    }


def reference_legacy(raw: bytes, tensors_in_file: dict) -> str:
    """sd-webui-additional-networks' legacy_hash_file, on the bytes."""
    n = struct.unpack("<Q", raw[:8])[0]
    meta = json.loads(raw[8 : 8 + n]).get("__metadata__", {})
    if any(not k.startswith("ss_") for k in meta):
        raw = safetensors.torch.save(tensors_in_file, {k: v for k, v in meta.items() if k.startswith("ss_")})
    return hashlib.sha256(raw[WINDOW]).hexdigest()[:8]


@pytest.mark.parametrize("n_bytes", SIZES)
@pytest.mark.parametrize("meta", [USER_META, {"ss_network_dim": "64"}, None], ids=["user", "ss_only", "none"])
def test_hashes_equal_an_independent_computation(tmp_path, n_bytes, meta):
    path = save_safetensors(tmp_path / "m.safetensors", tensors_of(n_bytes), meta)
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    got = hash_file(path)
    assert got.sha256 == hashlib.sha256(raw).hexdigest()
    assert got.autov2 == hashlib.sha256(raw).hexdigest()[:10].upper()
    assert got.legacy_hash == hashlib.sha256(raw[WINDOW]).hexdigest()[:8]
    assert got.model_hash == hashlib.sha256(raw[8 + n :]).hexdigest()
    assert got.autov3 == got.model_hash[:12].upper()
    expected_legacy = reference_legacy(raw, safetensors.torch.load_file(str(path)))
    assert got.sshs_legacy_hash == expected_legacy
    stored = read_metadata(path)
    # the stored hashes are the extension's own computation on the saved file
    assert stored["sshs_model_hash"] == got.model_hash
    assert stored["sshs_legacy_hash"] == expected_legacy
    if n_bytes > 0x110000 and meta is USER_META:
        # the reason the stored legacy hash is not the raw file's: the header is longer in the file
        assert got.legacy_hash != got.sshs_legacy_hash


def test_legacy_window_inside_a_long_header(tmp_path):
    """A header past 1 MiB (a huge ss_tag_frequency): the window covers header bytes, re-serialised ones."""
    meta = {"ss_tag_frequency": json.dumps({"t" * 40 + str(i): i for i in range(30_000)}), "modelspec.title": "x"}
    path = save_safetensors(tmp_path / "m.safetensors", tensors_of(0x20000), meta)
    raw = path.read_bytes()
    assert struct.unpack("<Q", raw[:8])[0] > 0x110000
    got = hash_file(path)
    assert got.sshs_legacy_hash == reference_legacy(raw, safetensors.torch.load_file(str(path)))
    assert got.sshs_legacy_hash == read_metadata(path)["sshs_legacy_hash"]


def test_file_in_another_tensor_order_gets_the_reserialised_hash(tmp_path):
    """A file written by another writer (tensors not in safetensors' order: re-serialising moves them) still gets
    the extension's hash; the window straddles two tensors there."""
    gen = torch.Generator().manual_seed(3)
    tensors = {"b": torch.randn(262_100, generator=gen), "c": torch.randn(40_000, generator=gen).half(),
               "a": torch.arange(5)}  # safetensors writes a (I64), b (F32), c (F16)
    names = {torch.float32: "F32", torch.float16: "F16", torch.int64: "I64"}
    entries, data, offset = {}, b"", 0
    for name in ("c", "b", "a"):
        blob = tensors[name].numpy().tobytes()
        entries[name] = {"dtype": names[tensors[name].dtype], "shape": list(tensors[name].shape),
                         "data_offsets": [offset, offset + len(blob)]}
        data, offset = data + blob, offset + len(blob)
    header = json.dumps({**entries, "__metadata__": {"ss_a": "1", "note": "x" * 100}}).encode()
    header += b" " * (-len(header) % 8)
    path = tmp_path / "other.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    loaded = safetensors.torch.load_file(str(path))
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    got = hash_file(path)
    assert got.sshs_legacy_hash == reference_legacy(path.read_bytes(), loaded)
    assert got.sshs_legacy_hash != got.legacy_hash


def test_pickle_and_other_files_get_the_file_hashes(tmp_path):
    path = tmp_path / "embedding.pt"
    torch.save({"string_to_param": {"*": torch.randn(2, 768)}}, path)
    raw = path.read_bytes()
    got = hash_file(path)
    assert got.sha256 == hashlib.sha256(raw).hexdigest()
    assert got.legacy_hash == hashlib.sha256(raw[WINDOW]).hexdigest()[:8]
    assert got.model_hash is None and set(got.as_dict()) == {"sha256", "autov2", "legacy_hash"}


@pytest.mark.slow
def test_fresh_big_lora_is_not_reported_changed(tmp_path):
    """The issue's report: every freshly saved LoRA over 1 MiB was 'changed'. A user's edit of non-ss_ metadata
    keeps both stored hashes valid (that is the point of the ss_-only rule); a changed tensor does not."""
    tensors = tensors_of(3 << 20)
    tensors = {k: v for k, v in tensors.items() if k != "step"}
    saved = save_safetensors(tmp_path / "lora.safetensors", tensors, USER_META)
    insp = inspect_lora(saved)
    assert insp.hash_problems == []
    assert insp.hashes["sshs_legacy_hash"] == read_metadata(saved)["sshs_legacy_hash"]
    stored = read_metadata(saved)
    safetensors.torch.save_file(tensors, str(tmp_path / "renamed.safetensors"),
                                metadata={**stored, "modelspec.title": "a much longer title " * 20})
    assert inspect_lora(tmp_path / "renamed.safetensors").hash_problems == []
    changed = {**tensors, "lora_unet_a.alpha": torch.tensor(4.0)}
    safetensors.torch.save_file(changed, str(tmp_path / "changed.safetensors"), metadata=stored)
    problems = inspect_lora(tmp_path / "changed.safetensors").hash_problems
    # the legacy hash reads 64 KiB only: an alpha outside that window leaves it equal
    assert [p.split()[1] for p in problems] == ["sshs_model_hash"]


def test_cli_prints_hashes_and_finds_duplicates(tmp_path, capsys):
    folder = tmp_path / "models"
    (folder / "sub").mkdir(parents=True)
    a = save_safetensors(folder / "vae_a.safetensors", tensors_of(50_000), {"ss_x": "1"})
    shutil.copy(a, folder / "sub" / "vae_copy.safetensors")
    safetensors.torch.save_file(safetensors.torch.load_file(str(a)), str(folder / "vae_renamed.safetensors"),
                                metadata={"modelspec.title": "other"})
    save_safetensors(folder / "other.safetensors", tensors_of(50_000, seed=1))
    (folder / "notes.txt").write_text("not a model")
    assert hash_cli.main([str(a)]) == 0
    out = capsys.readouterr().out
    assert f"autov2: {hashlib.sha256(a.read_bytes()).hexdigest()[:10].upper()}" in out
    assert hash_cli.main(["--folder", str(folder), "--duplicates"]) == 1
    out = capsys.readouterr().out
    assert "notes.txt" not in out
    dup = out[out.index("duplicates (identical"):]
    identical, same_tensors = dup.split("duplicates (same tensors")
    assert "vae_a" in identical and "vae_copy" in identical and "renamed" not in identical
    assert all(name in same_tensors for name in ("vae_a", "vae_copy", "vae_renamed"))
    assert "other.safetensors" not in dup
    groups = duplicate_groups([hash_file(folder / "other.safetensors")])
    assert groups == []
