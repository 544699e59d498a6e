"""FLUX parts load in their files' dtype (a float32 copy of FLUX.1-dev is 48 GB of host memory) and are cast
once, where they were loaded, to the run's dtype; swapped blocks never reach the training device."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from library.models.loading import load_base_model
from tests.flux.test_flux_training import flux_options, read_lora, separate_files, train

pytestmark = pytest.mark.slow


def to_bf16(src, dst):
    with safe_open(str(src), "pt") as f:
        metadata = f.metadata()
    state = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in load_file(str(src)).items()}
    save_file(state, str(dst), metadata=metadata)
    return dst


@pytest.fixture(scope="module")
def bf16_files(tiny_flux_files, tmp_path_factory):
    root = tmp_path_factory.mktemp("bf16")
    files = dict(tiny_flux_files["files"])
    for part in ("transformer", "t5xxl"):
        files[part] = to_bf16(files[part], root / files[part].name)
    folder = root / "folder"
    shutil.copytree(tiny_flux_files["folder"], folder)
    for sub in ("transformer", "text_encoder_2"):
        for path in (folder / sub).glob("*.safetensors"):
            to_bf16(path, path)
    return files, folder


def test_single_files_and_folders_load_in_their_stored_dtype(bf16_files):
    files, folder = bf16_files
    components = {"clip_l": str(files["clip_l"]), "t5xxl": str(files["t5xxl"]), "ae": str(files["ae"])}
    for model in (load_base_model(str(files["transformer"]), components=components), load_base_model(str(folder))):
        assert {p.dtype for p in model.unet.parameters()} == {torch.bfloat16}
        assert {p.dtype for p in model.parts["text_encoder_2"].parameters()} == {torch.bfloat16}
        assert {p.dtype for p in model.parts["text_encoder_1"].parameters()} == {torch.float32}  # stored so
        assert {p.dtype for p in model.vae.parameters()} == {torch.float32}


def test_a_bf16_transformer_trains_on_the_cpu_in_float32(tmp_path, tiny_dataset, bf16_files):
    files, _ = bf16_files
    out = tmp_path / "out"
    assert train(tmp_path, {**flux_options(tiny_dataset, out, "x", max_train_steps=1), **separate_files(files)}) == 0
    lora, _ = read_lora(out / "lora.safetensors")
    assert lora and all(torch.isfinite(t).all() for t in lora.values())
