"""Merged checkpoints and resized LoRAs against diffusers' own LoRA loading (issue 6 checks)."""

from __future__ import annotations

import copy

import pytest
import torch

from library.models.loading import load_base_model
from library.networks.lora import create_network
from library.tools.models.lora_file import read_lora
from library.tools.models.merge_lora import merge_into_checkpoint
from library.tools.models.resize_lora import resize_lora_file
from tests.tools_models.helpers import unet_inputs

pytest.importorskip("peft", reason="diffusers needs peft for load_lora_weights")
pytestmark = pytest.mark.slow

BAD_WORDS = ("unexpected", "missing", "not loaded", "no lora keys")


def random_lora(tmp_path, name="lora.safetensors", seed=1, dim=4, conv_dim=3):
    from library.models.tiny import tiny_components

    parts = tiny_components("sd1")
    network = create_network(
        parts["unet"], parts["text_encoder"], dim=dim, alpha=2, conv_dim=conv_dim, conv_alpha=1.5
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, param in network.named_parameters():
            if pname.endswith("lora_up.weight"):
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
    return network, network.save(tmp_path / name, metadata={"ss_network_module": "networks.lora"})


def diffusers_pipe(folder, lora_path, ratio):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.load_lora_weights(str(lora_path))
    pipe.fuse_lora(lora_scale=ratio)
    return pipe


def token_ids():
    ids = torch.randint(300, 40000, (2, 77), generator=torch.Generator().manual_seed(3))
    ids[:, 0], ids[:, 20:] = 49406, 49407
    return ids


@pytest.mark.parametrize("out_name", ["merged.safetensors", "merged_diffusers"])
def test_merged_checkpoint_equals_diffusers_lora_at_that_ratio(tiny_model_files, tmp_path, out_name):
    folder = tiny_model_files["sd1"]["folder"]
    _, lora_path = random_lora(tmp_path)
    ratio = 0.7
    merge_into_checkpoint(str(folder), [str(lora_path)], [ratio], str(tmp_path / out_name))
    merged = load_base_model(str(tmp_path / out_name))
    pipe = diffusers_pipe(folder, lora_path, ratio)
    base = load_base_model(str(folder))
    latents, t, states = unet_inputs()
    ids = token_ids()
    with torch.no_grad():
        ours = merged.unet(latents, t, encoder_hidden_states=states).sample
        theirs = pipe.unet(latents, t, encoder_hidden_states=states).sample
        plain = base.unet(latents, t, encoder_hidden_states=states).sample
        ours_te, theirs_te = merged.text_encoder(ids)[0], pipe.text_encoder(ids)[0]
    assert (ours - plain).abs().max() > 1e-3
    torch.testing.assert_close(ours, theirs, atol=5e-5, rtol=1e-4)
    torch.testing.assert_close(ours_te, theirs_te, atol=5e-5, rtol=1e-4)


def test_two_loras_with_ratios_add_up(tiny_model_files, tmp_path):
    folder = tiny_model_files["sd1"]["single"]
    net_a, path_a = random_lora(tmp_path, "a.safetensors", seed=1)
    net_b, path_b = random_lora(tmp_path, "b.safetensors", seed=2, dim=2, conv_dim=None)
    merge_into_checkpoint(
        str(folder), [str(path_a), str(path_b)], [0.8, -0.5], str(tmp_path / "ab.safetensors")
    )
    merged = load_base_model(str(tmp_path / "ab.safetensors"))
    base = load_base_model(str(folder))
    name = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v"
    lora_name = "lora_unet_" + name.replace(".", "_")
    mods_a, mods_b = read_lora(path_a).modules, read_lora(path_b).modules
    expected = (
        dict(base.unet.named_modules())[name].weight
        + 0.8 * mods_a[lora_name].delta()
        - 0.5 * mods_b[lora_name].delta()
    )
    torch.testing.assert_close(dict(merged.unet.named_modules())[name].weight, expected, atol=1e-6, rtol=1e-5)


def test_resize_rank16_from_rank4_product_is_lossless_and_loads_in_diffusers(tiny_model_files, tmp_path):
    network, _ = random_lora(tmp_path, dim=16, conv_dim=16)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for module in network.network_modules():
            up = module.lora_up.weight  # (out, 16[, 1, 1])
            low = torch.randn(up.shape[0], 4, generator=gen) @ torch.randn(4, 16, generator=gen)
            up.copy_(low.reshape(up.shape) * 0.05)
    big = network.save(
        tmp_path / "r16.safetensors", metadata={"ss_network_dim": "16", "ss_network_alpha": "2"}
    )
    small, rows = resize_lora_file(big, 4, tmp_path / "r4.safetensors")
    assert {r.new_rank for r in rows} == {4} and {r.old_rank for r in rows} == {16}
    assert min(r.fro_retained for r in rows) > 0.99999
    before, after = read_lora(big), read_lora(small)
    assert set(before.modules) == set(after.modules)
    for name, module in after.modules.items():
        assert module.rank == 4
        assert module.alpha == pytest.approx(before.modules[name].scale * 4)
        torch.testing.assert_close(module.delta(), before.modules[name].delta(), atol=1e-6, rtol=1e-4)
    assert after.metadata["ss_network_dim"] == "4"
    assert "resized from 16 to 4" in after.metadata["ss_training_comment"]

    folder = tiny_model_files["sd1"]["folder"]
    pipe_small = diffusers_pipe(folder, small, 1.0)
    pipe_big = diffusers_pipe(folder, big, 1.0)
    latents, t, states = unet_inputs()
    with torch.no_grad():
        got = pipe_small.unet(latents, t, encoder_hidden_states=states).sample
        want = pipe_big.unet(latents, t, encoder_hidden_states=states).sample
    torch.testing.assert_close(got, want, atol=5e-5, rtol=1e-4)


def test_resized_lora_loads_without_warnings(tiny_model_files, tmp_path, caplog):
    import logging

    _, big = random_lora(tmp_path, dim=8, conv_dim=4)
    small, _ = resize_lora_file(big, 2, tmp_path / "r2.safetensors", save_precision="fp16")
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        tiny_model_files["sd1"]["folder"], safety_checker=None, requires_safety_checker=False
    )
    with caplog.at_level(logging.INFO):
        pipe.load_lora_weights(str(small))
    assert not [r for r in caplog.records if any(w in r.getMessage().lower() for w in BAD_WORDS)]
    from peft.tuners.tuners_utils import BaseTunerLayer

    assert sum(isinstance(m, BaseTunerLayer) for m in pipe.unet.modules()) == len(
        [n for n in read_lora(small).modules if n.startswith("lora_unet_")]
    )
    assert copy.deepcopy(read_lora(small).dtype) == torch.float16
