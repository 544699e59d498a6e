"""A LoRA run whose latents and text-encoder outputs are cached frees the VAE and the text encoder."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

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
