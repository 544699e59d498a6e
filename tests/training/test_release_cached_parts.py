"""A LoRA run whose latents and text-encoder outputs are cached frees the VAE and the text encoder."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from library.models.loading import load_base_model
from library.training.loop import release_cached_parts


def _run(*, saves_base_model=False, trains_te=False, prompts=None, latents=True, text=True):
    model = load_base_model("builtin:tiny")
    if text:
        model.extras["text_cache"] = object()
    target = SimpleNamespace(saves_base_model=saves_base_model, trains_text_encoder=trains_te)
    config = SimpleNamespace(sample_prompts=prompts)
    freed = release_cached_parts(model, config, target, [SimpleNamespace(latents_cached=latents)])
    on_meta = sorted(n for n, m in model.parts.items() if all(p.device.type == "meta" for p in m.parameters()))
    return freed, on_meta


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, ["text_encoder", "vae"]),
        ({"prompts": "prompts.txt"}, []),  # samples need the VAE and the text encoder
        ({"saves_base_model": True}, []),  # a fine-tune's checkpoint holds them
        ({"latents": False}, ["text_encoder"]),
        ({"text": False}, ["vae"]),
        ({"trains_te": True}, ["vae"]),
    ],
)
def test_only_parts_whose_outputs_are_cached_and_unused_are_freed(kwargs, expected):
    freed, on_meta = _run(**kwargs)
    assert sorted(freed) == expected == on_meta


def test_a_fine_tune_parks_its_cached_parts_on_disk_and_gets_them_back_for_each_save(tmp_path):
    import torch

    from library.training.parking import ParkedParts, parking_folder

    model = load_base_model("builtin:tiny")
    before = {name: {k: v.detach().clone().requires_grad_(v.requires_grad) for k, v in {**dict(m.named_parameters()), **dict(m.named_buffers())}.items()}
              for name, m in model.parts.items()}
    model.extras["text_cache"] = object()
    target = SimpleNamespace(saves_base_model=True, trains_text_encoder=False)
    parking = ParkedParts(model, parking_folder(tmp_path, "run"))
    freed = release_cached_parts(model, SimpleNamespace(sample_prompts=None), target,
                                 [SimpleNamespace(latents_cached=True)], parking)
    assert sorted(freed) == ["text_encoder", "vae"]
    assert sorted(p.name for p in parking.folder.iterdir()) == ["text_encoder.safetensors", "vae.safetensors"]
    for name in freed:
        assert all(t.device.type == "meta" for t in model.parts[name].parameters())
    for _ in range(2):  # two saves
        with parking.restored():
            for name, module in model.parts.items():
                now = {**dict(module.named_parameters()), **dict(module.named_buffers())}
                assert now.keys() == before[name].keys()
                for key, value in now.items():
                    assert value.device.type == "cpu" and torch.equal(value, before[name][key]), (name, key)
                    assert value.requires_grad == before[name][key].requires_grad
        assert all(t.device.type == "meta" for t in model.parts["vae"].parameters())
    assert not any(t.device.type == "meta" for t in model.unet.parameters())  # the trained part never moved
    parking.discard()
    assert not parking.folder.exists()


def test_a_parked_tied_weight_comes_back_as_one_parameter(tmp_path):
    import torch

    from library.training.parking import ParkedParts

    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
            self.b.weight = self.a.weight
            self.register_buffer("steps", torch.arange(3), persistent=False)

    module = Tied()
    weight = module.a.weight.detach().clone()
    parking = ParkedParts(SimpleNamespace(parts={"p": module}), tmp_path / "parked")
    parking.park("p")
    assert module.a.weight.device.type == "meta" and module.steps.device.type == "meta"
    with parking.restored():
        assert module.a.weight is module.b.weight and torch.equal(module.a.weight, weight)
        assert torch.equal(module.steps, torch.arange(3))


def test_a_killed_runs_parking_folder_is_removed_at_the_next_start(tmp_path):
    from library.training.checkpointing import remove_leftovers
    from library.training.parking import parking_folder

    left = parking_folder(tmp_path, "run")
    left.mkdir()
    (left / "vae.safetensors").write_bytes(b"x")
    other = parking_folder(tmp_path, "other")
    other.mkdir()
    remove_leftovers(tmp_path, "run")
    assert not left.exists() and other.exists()  # another run's name is not touched


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_parts_parked_from_a_gpu_come_back_to_host_memory_for_a_save(tmp_path):
    from library.training.parking import ParkedParts

    module = torch.nn.Linear(256, 256).cuda()
    weight = module.weight.detach().cpu().clone()
    parking = ParkedParts(SimpleNamespace(parts={"p": module}), tmp_path / "parked")
    parking.park("p")
    before = torch.cuda.memory_allocated()
    with parking.restored():
        assert module.weight.device.type == "cpu" and torch.equal(module.weight, weight)
        assert torch.cuda.memory_allocated() == before  # nothing put back on the GPU
    assert module.weight.device.type == "meta"
