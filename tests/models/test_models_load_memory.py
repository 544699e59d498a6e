"""Loading holds the model once: a single file's tensors become the parameters (no random init beside them, no
clone after), read into memory of their own; mapped or shared tensors are still given storage of their own."""

from __future__ import annotations

import torch
from safetensors import safe_open

from library.models.loading import _own_aligned_storage, load_base_model
from library.models.single_file import modules_from_single_file, save_single_file
from library.models.tiny import tiny_components
from library.util.safetensors_io import read_tensors


def _owned(t: torch.Tensor) -> bool:
    storage = t.untyped_storage()
    return storage.resizable() and storage.data_ptr() == t.data_ptr()


def test_an_fp16_single_file_loads_as_float32_parameters_of_their_own(tmp_path):
    parts = tiny_components("sd1", 0)
    path = save_single_file(tmp_path / "m.safetensors", parts["unet"], parts["vae"], parts["text_encoder"], "sd1",
                            dtype=torch.float16)
    model = load_base_model(str(path))
    for name, module in model.parts.items():
        for pname, p in module.named_parameters():
            assert p.dtype == torch.float32 and p.device.type == "cpu" and _owned(p), (name, pname)
    with safe_open(str(path), "pt") as f:
        conv_in = f.get_tensor("model.diffusion_model.input_blocks.0.0.weight")
    assert conv_in.dtype == torch.float16
    assert torch.equal(model.unet.conv_in.weight, conv_in.float())


def test_building_from_a_single_file_consumes_its_dict_and_uses_its_tensors(tmp_path):
    parts = tiny_components("sd1", 0)
    path = save_single_file(tmp_path / "m.safetensors", parts["unet"], parts["vae"], parts["text_encoder"], "sd1")
    state, metadata = read_tensors(path)
    conv_in = state["model.diffusion_model.input_blocks.0.0.weight"]
    modules, _ = modules_from_single_file(state, metadata)
    assert state == {}  # consumed: no second reference keeps the file's tensors alive
    assert modules["unet"].conv_in.weight.data_ptr() == conv_in.data_ptr()  # the same memory, not a copy
    assert not any(p.device.type == "meta" for m in modules.values() for p in m.parameters())


def test_views_of_a_mapped_file_get_storage_of_their_own_and_owned_tensors_stay(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"w": torch.randn(64, 64), "b": torch.randn(64)}, str(path))
    layer = torch.nn.Linear(64, 64)
    with safe_open(str(path), "pt") as f:
        mapped = f.get_tensor("w")
    layer.weight.data = mapped
    before_bias = layer.bias.data_ptr()
    assert not _owned(layer.weight)
    _own_aligned_storage(layer)
    assert _owned(layer.weight) and torch.equal(layer.weight, mapped)
    assert layer.bias.data_ptr() == before_bias or layer.bias.data_ptr() % 64 != 0


def test_read_ahead_is_what_the_load_uses_and_only_for_in_memory_safetensors(tmp_path):
    from library.models import loading

    parts = tiny_components("sd1", 0)
    path = save_single_file(tmp_path / "m.safetensors", parts["unet"], parts["vae"], parts["text_encoder"], "sd1",
                            dtype=torch.float16)
    ckpt = save_single_file(tmp_path / "m.ckpt", parts["unet"], parts["vae"], parts["text_encoder"], "sd1")
    assert not loading.read_ahead("builtin:tiny") and not loading.read_ahead(str(ckpt))
    assert not loading.read_ahead(str(tmp_path / "missing.safetensors"))
    assert loading.read_ahead(str(path)) and path.resolve() in loading._READ_AHEAD
    future, family = loading._READ_AHEAD[path.resolve()]
    assert family.name == "sd1"
    model = load_base_model(str(path))
    assert future.done() and path.resolve() not in loading._READ_AHEAD  # taken by the load
    direct = load_base_model(str(path))
    for name, module in model.parts.items():
        theirs = dict(direct.parts[name].named_parameters())
        for pname, p in module.named_parameters():
            assert p.dtype == torch.float32 and _owned(p) and torch.equal(p, theirs[pname]), (name, pname)


def test_a_damaged_file_read_ahead_fails_at_the_load_with_the_usual_message(tmp_path):
    import pytest

    from library.errors import ModelLoadError
    from library.models import loading

    parts = tiny_components("sd1", 0)
    path = save_single_file(tmp_path / "m.safetensors", parts["unet"], parts["vae"], parts["text_encoder"], "sd1")
    path.write_bytes(path.read_bytes()[:-1000])
    assert loading.read_ahead(str(path))
    with pytest.raises(ModelLoadError, match=r"m\.safetensors.*(cut short|do not hold)"):
        load_base_model(str(path))
    assert path.resolve() not in loading._READ_AHEAD


def test_a_load_waiting_on_the_read_imports_the_family_model_code_meanwhile(tmp_path, monkeypatch):
    import importlib
    import threading
    from concurrent.futures import Future

    from library.models import loading
    from library.models.family import UNET_VAE_CLIP_CODE

    parts = tiny_components("sd1", 0)
    path = save_single_file(tmp_path / "m.safetensors", parts["unet"], parts["vae"], parts["text_encoder"], "sd1")
    future = Future()
    from library.models.family import get_model_family

    # a read still under way
    monkeypatch.setitem(loading._READ_AHEAD, path.resolve(), (future, get_model_family("sd1")))
    imported = []
    real = importlib.import_module

    def spy(name, *args):
        imported.append((name, future.done()))
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", spy)
    reader = threading.Timer(0.3, lambda: future.set_result(loading._read_in_memory(path)))
    reader.start()
    model = load_base_model(str(path))
    reader.join()
    code = [(name, done) for name, done in imported if name in UNET_VAE_CLIP_CODE]
    assert code == [(name, False) for name in UNET_VAE_CLIP_CODE]  # all of it, before the read had ended
    assert torch.equal(model.unet.conv_in.weight, parts["unet"].conv_in.weight)
