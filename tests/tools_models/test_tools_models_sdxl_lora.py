"""The LoRA tools on SDXL: merge into an SGM checkpoint (both encoders, SGM UNet names), merge LoRAs with
23 block weights, extract (the trainer's key set, loadable), resize, and clear errors across families."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from library.errors import ConfigError, ModelLoadError
from library.models.loading import load_base_model
from library.models.sgm import is_sgm_single_file
from library.networks import keys
from library.networks.lora import create_network, network_from_weights
from library.tools.models import lora_file
from library.tools.models.extract_lora import extract_lora_file, extract_modules
from library.tools.models.merge_lora import merge_into_checkpoint, merge_lora_files, module_block
from library.tools.models.resize_lora import resize_lora_file
from library.util.safetensors_io import read_metadata
from tests.tools_models.helpers import sd_scripts_lora
from tests.tools_models.sdxl_helpers import (
    OUT_NAME,
    TE1_NAME,
    TE2_NAME,
    TE2_PATH,
    UNET_NAME,
    UNET_PATH,
    delta,
    perturbed_sdxl,
    random_lora,
)


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl_files):
    return load_base_model(str(tiny_sdxl_files["single"]))


@pytest.fixture(scope="module")
def sdxl_lora(tmp_path_factory, sdxl):
    return random_lora(tmp_path_factory.mktemp("sdxl_lora") / "lora.safetensors", sdxl, rank=2, alpha=1.0)


def _layer(model, part: str, path: str) -> torch.Tensor:
    """A layer's weight by its path rooted at ``text_model.`` (CLIPTextModel in transformers 5 has no such level)."""
    layers = dict(model.parts[part].named_modules())
    return (layers.get(path) or layers[path.removeprefix("text_model.")]).weight.detach()


def test_merge_into_sdxl_single_file_adds_the_deltas_by_hand(tmp_path, tiny_sdxl_files, sdxl, sdxl_lora):
    path, modules = sdxl_lora
    out = tmp_path / "merged.safetensors"
    report = merge_into_checkpoint(str(tiny_sdxl_files["single"]), [str(path)], [0.7], str(out))
    assert report.entries[0]["merged"] == len(modules) and not report.entries[0]["unmatched"]
    assert is_sgm_single_file(load_file(str(out)))
    merged = load_base_model(str(out))
    assert merged.family == "sdxl"
    for part, layer_path, name in (("unet", UNET_PATH, UNET_NAME), ("text_encoder_2", TE2_PATH, TE2_NAME)):
        expected = _layer(sdxl, part, layer_path) + delta(modules[name], 0.7)
        torch.testing.assert_close(_layer(merged, part, layer_path), expected, rtol=0, atol=1e-6)
    te1_path = "text_model.encoder.layers.1.mlp.fc1"
    expected = _layer(sdxl, "text_encoder_1", te1_path) + delta(modules[TE1_NAME], 0.7)
    torch.testing.assert_close(_layer(merged, "text_encoder_1", te1_path), expected, rtol=0, atol=1e-6)
    # the VAE is untouched
    for a, b in zip(sdxl.vae.state_dict().values(), merged.vae.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_merge_into_sdxl_diffusers_folder_and_block_weights(tmp_path, tiny_sdxl_files, sdxl, sdxl_lora):
    path, modules = sdxl_lora
    weights = ["1"] * 23
    weights[5] = "0"  # IN04 (index 0 is BASE)
    out = tmp_path / "merged_folder"
    merge_into_checkpoint(str(tiny_sdxl_files["single"]), [str(path)], None, str(out),
                          block_weights=",".join(weights))
    merged = load_base_model(str(out))
    assert merged.family == "sdxl" and (out / "text_encoder_2").is_dir()
    assert torch.equal(_layer(merged, "unet", UNET_PATH), _layer(sdxl, "unet", UNET_PATH))  # IN04 at 0
    expected = _layer(sdxl, "text_encoder_2", TE2_PATH) + delta(modules[TE2_NAME])
    torch.testing.assert_close(_layer(merged, "text_encoder_2", TE2_PATH), expected, rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match="23 values for sdxl"):
        merge_into_checkpoint(str(tiny_sdxl_files["single"]), [str(path)], None, str(tmp_path / "x.safetensors"),
                              block_weights=",".join(["1"] * 25))


def test_sd_lora_into_sdxl_names_both_families(tmp_path, tiny_sdxl_files):
    sd_lora = sd_scripts_lora(tmp_path / "sd.safetensors", {
        "lora_unet_down_blocks_0_attentions_0_proj_in": (torch.randn(2, 32), torch.randn(32, 2), 1.0),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (torch.randn(2, 32), torch.randn(32, 2), 1.0),
    })
    with pytest.raises(ModelLoadError, match=r"sd1/sd2.*sdxl"):
        merge_into_checkpoint(str(tiny_sdxl_files["single"]), [str(sd_lora)], None, str(tmp_path / "o.safetensors"))


def test_module_block_in_the_sdxl_layout(sdxl):
    layout = sdxl.adapter.block_layout
    assert module_block(UNET_NAME, layout) == "IN04"
    assert module_block("lora_unet_middle_block_1_proj_in", layout) == "M01"
    assert module_block(OUT_NAME, layout) == "OUT00"
    assert module_block("lora_unet_time_embed_0", layout) == "BASE"
    assert module_block("lora_unet_out_2", layout) == "OUT"
    assert module_block(TE2_NAME, layout) is None


def test_merge_sdxl_loras_with_23_block_weights(tmp_path, sdxl):
    names = (UNET_NAME, OUT_NAME, TE2_NAME)
    a, mods_a = random_lora(tmp_path / "a.safetensors", sdxl, seed=1, names=names)
    b, mods_b = random_lora(tmp_path / "b.safetensors", sdxl, seed=2, names=names)
    weights = [1.0] * 23
    weights[5] = 0.25  # IN04
    weights[13] = 0.0  # OUT00
    out, _ = merge_lora_files([str(a), str(b)], [1.0, 0.5], tmp_path / "ab.safetensors", block_weights=weights)
    merged = lora_file.read_lora(out).modules
    assert set(merged) == set(names)
    for name, w in ((UNET_NAME, 0.25), (OUT_NAME, 0.0), (TE2_NAME, 1.0)):
        expected = w * (delta(mods_a[name], 1.0) + delta(mods_b[name], 0.5))
        torch.testing.assert_close(merged[name].delta(), expected, rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match=r"23 values for sdxl .*BASE, IN00–IN08, M00–M02, OUT00–OUT08, OUT"):
        merge_lora_files([str(a), str(b)], None, tmp_path / "x.safetensors", block_weights=[1.0] * 25)


def test_merge_loras_of_two_families_is_refused(tmp_path, sdxl):
    a, _ = random_lora(tmp_path / "a.safetensors", sdxl, names=(UNET_NAME,))
    sd = sd_scripts_lora(tmp_path / "sd.safetensors", {
        "lora_unet_down_blocks_0_attentions_0_proj_in": (torch.randn(2, 32), torch.randn(32, 2), 1.0)})
    with pytest.raises(ModelLoadError, match=r"sdxl.*sd1/sd2"):
        merge_lora_files([str(a), str(sd)], None, tmp_path / "x.safetensors")


@pytest.mark.slow
def test_extract_from_sdxl_gives_the_trainers_key_set_loads_and_is_exact(tmp_path, tiny_sdxl_files, sdxl):
    tuned_path = perturbed_sdxl(tmp_path / "tuned.safetensors")
    out, report = extract_lora_file(str(tiny_sdxl_files["single"]), str(tuned_path), tmp_path / "x.safetensors",
                                    dim=64, clamp_quantile=None)
    state = load_file(str(out))
    network = create_network(None, None, parts=keys.model_parts(sdxl), dim=4, alpha=4)
    assert set(state) == set(network.state_dict())
    assert {k.split("_")[1] for k in state} == {"te1", "te2", "unet"}
    assert any(k.startswith("lora_unet_input_blocks_") for k in state)
    _, load = network_from_weights(str(out), None, None, parts=keys.model_parts(sdxl))
    assert not load.missing and not load.unexpected and len(load.loaded) == len(report.ranks)
    meta = read_metadata(out)
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["ss_v2"] == "False"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert "text_encoder_1" in report.lines()[0] and "text_encoder_2" in report.lines()[0]
    # rank 64 >= every module's size: up @ down is the difference itself
    tuned = load_base_model(str(tuned_path))
    module = lora_file.read_lora(out).modules[TE2_NAME]
    diff = _layer(tuned, "text_encoder_2", TE2_PATH) - _layer(sdxl, "text_encoder_2", TE2_PATH)
    torch.testing.assert_close(module.delta(), diff, rtol=0, atol=1e-5)


def test_extract_skips_each_unchanged_text_encoder(sdxl):
    text_parts = [p for p in keys.model_parts(sdxl) if not p.is_unet]
    modules, report = extract_modules(text_parts, text_parts, dim=2)
    assert modules == {} and report.skipped_parts == ["text_encoder_1", "text_encoder_2"]
    assert "text_encoder_2 unchanged" in "\n".join(report.lines())


def test_resize_sdxl_lora_keeps_the_key_set(tmp_path, sdxl_lora):
    path, _ = sdxl_lora
    out, rows = resize_lora_file(path, 1, tmp_path / "small.safetensors")
    assert set(load_file(str(out))) == set(load_file(str(path)))
    assert {r.new_rank for r in rows} == {1}
