from __future__ import annotations

import json

import pytest
import torch

from library.models.tiny import tiny_components


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_deterministic(family):
    a, b = tiny_components(family), tiny_components(family)
    for name in ("unet", "vae", "text_encoder"):
        assert _same_weights(a[name], b[name])
    other = tiny_components(family, seed=1)
    assert not torch.equal(a["unet"].conv_in.weight, other["unet"].conv_in.weight)


def test_does_not_disturb_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_components()
    assert torch.equal(torch.rand(3), expected)


def test_shapes_and_family_settings():
    sd1, sd2 = tiny_components("sd1"), tiny_components("sd2")
    assert sd1["scheduler"].config.prediction_type == "epsilon"
    assert sd2["scheduler"].config.prediction_type == "v_prediction"
    sched = sd1["scheduler"].config
    assert (sched.num_train_timesteps, sched.beta_start, sched.beta_end) == (1000, 0.00085, 0.012)
    assert sched.beta_schedule == "scaled_linear"
    assert sd1["unet"].config.use_linear_projection is False
    assert sd2["unet"].config.use_linear_projection is True
    assert sd1["text_encoder"].config.hidden_act == "quick_gelu"
    assert sd2["text_encoder"].config.hidden_act == "gelu"
    te = sd1["text_encoder"].config
    assert (te.hidden_size, te.num_hidden_layers, te.vocab_size, te.max_position_embeddings) == (
        32,
        4,
        49408,
        77,
    )
    assert sd1["unet"].config.cross_attention_dim == 32
    assert sd1["vae"].config.scaling_factor == 0.18215
    total = sum(p.numel() for k in ("unet", "vae", "text_encoder") for p in sd1[k].parameters())
    assert total < 6_000_000


def test_forward_128px():
    parts = tiny_components()
    with torch.no_grad():
        latents = parts["vae"].encode(torch.zeros(1, 3, 128, 128)).latent_dist.mean
        assert latents.shape == (1, 4, 16, 16)
        ids = parts["tokenizer"](
            ["a cat"], padding="max_length", max_length=77, return_tensors="pt"
        ).input_ids
        states = parts["text_encoder"](ids).last_hidden_state
        assert states.shape == (1, 77, 32)
        noise_pred = parts["unet"](latents, torch.tensor([500]), states).sample
        assert noise_pred.shape == (1, 4, 16, 16)
        assert torch.isfinite(noise_pred).all()


def test_diffusers_folder_loads_in_pipeline(tiny_files):
    from diffusers import StableDiffusionPipeline

    folder = tiny_files["sd1"]["folder"]
    index = json.loads((folder / "model_index.json").read_text())
    assert index["safety_checker"] == [None, None]
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    built = tiny_components("sd1")
    for name in ("unet", "vae", "text_encoder"):
        assert _same_weights(getattr(pipe, name), built[name])
    assert pipe.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
