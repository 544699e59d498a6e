"""FLUX LoRA training on the tiny FLUX from sd-scripts-style TOMLs: sd-scripts' key names, diffusers loads the
file exactly, step 0 is the base, block swapping changes nothing, fp8 trains, folder = separate files."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors import safe_open

from tests.training.helpers import base_options, read_lora, train

pytestmark = pytest.mark.slow


def flux_options(tiny_dataset, out, source, **overrides):
    opts = base_options(
        tiny_dataset, out, pretrained_model_name_or_path=str(source), network_module="networks.lora_flux",
        network_train_unet_only=True, timestep_sampling="shift", discrete_flow_shift=3.1582,
        model_prediction_type="raw", guidance_scale=1.0, max_train_steps=2, learning_rate=1e-2,
        t5xxl_max_token_length=32,
    )
    opts.update(overrides)
    return {k: v for k, v in opts.items() if v is not None}


def separate_files(files: dict) -> dict:
    return {"pretrained_model_name_or_path": str(files["transformer"]), "clip_l": str(files["clip_l"]),
            "t5xxl": str(files["t5xxl"]), "ae": str(files["ae"])}


def expected_lora_names(transformer_file) -> set[str]:
    """sd-scripts' lora_flux names, derived from the BFL file's own keys: every 2-D weight inside a double or
    single block (attention qkv/proj, MLPs, modulation), ``lora_unet_`` + path with "." -> "_"."""
    with safe_open(str(transformer_file), "pt") as f:
        keys = [k for k in f.keys() if re.match(r"(double|single)_blocks\.\d+\..*\.weight$", k)
                and len(f.get_slice(k).get_shape()) == 2]
    return {"lora_unet_" + k.removesuffix(".weight").replace(".", "_") for k in keys}


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory, tiny_dataset, tiny_flux_files):
    tmp = tmp_path_factory.mktemp("flux_lora")
    out = tmp / "out"
    assert train(tmp, flux_options(tiny_dataset, out, tiny_flux_files["folder"])) == 0
    return out / "lora.safetensors"


def test_lora_keys_are_sd_scripts_flux_names(folder_run, tiny_flux_files):
    tensors, meta = read_lora(folder_run)
    names = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in tensors}
    expected = expected_lora_names(tiny_flux_files["files"]["transformer"])
    assert names == expected and len(expected) == 3 * 10 + 6 * 3
    assert "lora_unet_double_blocks_0_img_attn_qkv" in names and "lora_unet_single_blocks_0_linear1" in names
    assert meta["ss_base_model_version"] == "flux1"
    assert meta["modelspec.architecture"] == "flux-1-dev/lora"
    assert meta["ss_network_module"] == "networks.lora_flux"
    assert all(torch.isfinite(t).all() for t in tensors.values())
    assert any(k.endswith("lora_up.weight") and t.abs().sum() > 0 for k, t in tensors.items())


def test_diffusers_loads_the_lora_exactly(tmp_path, tiny_dataset, tiny_flux_files):
    """FluxPipeline.load_lora_weights: no missing or unexpected keys; after fusing, the transformer is the
    base plus exactly up @ down * alpha / dim of every module (fused qkv rows split as diffusers does).

    Double blocks only: diffusers splits a single block's ``linear1`` with FLUX.1's real widths
    ([3072, 3072, 3072, 12288], hard-coded in its kohya converter), which the tiny model does not have."""
    from diffusers import FluxPipeline

    from library.models.flux_keys import bfl_to_diffusers, load_bfl_transformer
    from library.util.safetensors_io import load_safetensors

    out = tmp_path / "double"
    assert train(tmp_path, flux_options(tiny_dataset, out, tiny_flux_files["folder"],
                                        network_args=["train_blocks=double"])) == 0
    base = load_bfl_transformer(load_safetensors(tiny_flux_files["files"]["transformer"])).state_dict()
    tensors, _ = read_lora(out / "lora.safetensors")
    assert len(tensors) == 3 * 10 * 3
    expected = {k: v.clone().float() for k, v in base.items()}
    for key in tensors:
        if not key.endswith(".lora_down.weight"):
            continue
        name = key.removesuffix(".lora_down.weight")
        down, up = tensors[key].float(), tensors[f"{name}.lora_up.weight"].float()
        scale = float(tensors[f"{name}.alpha"]) / down.shape[0]
        path = name.removeprefix("lora_unet_")
        module = next(p for p in {k.removesuffix(".weight") for k in base if k.endswith(".weight")}
                      if p.replace(".", "_") == path)
        expected[f"{module}.weight"] += up @ down * scale
    expected_diffusers = bfl_to_diffusers(expected)

    pipe = FluxPipeline.from_pretrained(str(tiny_flux_files["folder"]), torch_dtype=torch.float32)
    pipe.load_lora_weights(str(out / "lora.safetensors"), adapter_name="ours")
    state = pipe.transformer.state_dict()
    lora_keys = [k for k in state if "lora_A" in k or "lora_B" in k]
    assert len(lora_keys) > 0
    pipe.fuse_lora(lora_scale=1.0)
    pipe.unload_lora_weights()
    fused = pipe.transformer.state_dict()
    assert set(fused) == set(expected_diffusers)
    for key, value in expected_diffusers.items():
        torch.testing.assert_close(fused[key].float(), value, rtol=1e-5, atol=1e-6, msg=key)
    changed = [k for k in expected_diffusers if not torch.equal(expected_diffusers[k], bfl_to_diffusers(base)[k])]
    assert len(changed) == 3 * 14  # per double block 2 x (mod, q, k, v, proj, 2 MLP): every LoRA module applied


def _first_step_loss(tmp_path, tiny_dataset, options):
    from library.config.load import config_from_values
    from library.training.setup import load_model
    from library.training.step import StepSettings, diffusion_loss
    from tests.training.helpers import build_dataset

    config = config_from_values(options, "network")
    model = load_model(config)
    dataset = build_dataset(config)
    batch = dataset.load_batch(dataset.epoch_batches(1, 0)[0], epoch=1, seed=0, step=0)
    settings = StepSettings.from_config(config, model)
    with torch.no_grad():
        return float(diffusion_loss(model, batch, settings, torch.Generator().manual_seed(3), False))


def test_folder_and_separate_files_give_the_same_loss(tmp_path, tiny_dataset, tiny_flux_files):
    folder = flux_options(tiny_dataset, tmp_path / "a", tiny_flux_files["folder"])
    files = {**flux_options(tiny_dataset, tmp_path / "b", "x"), **separate_files(tiny_flux_files["files"])}
    a, b = _first_step_loss(tmp_path, tiny_dataset, folder), _first_step_loss(tmp_path, tiny_dataset, files)
    assert a == b and a > 0


def test_block_swapping_gives_the_same_lora_bit_for_bit(tmp_path, tiny_dataset, tiny_flux_files, folder_run):
    out = tmp_path / "swap"
    opts = flux_options(tiny_dataset, out, tiny_flux_files["folder"], blocks_to_swap=3)
    assert train(tmp_path, opts) == 0
    swapped, _ = read_lora(out / "lora.safetensors")
    plain, _ = read_lora(folder_run)
    assert swapped.keys() == plain.keys()
    for key in plain:
        assert torch.equal(swapped[key], plain[key]), key


def test_fp8_base_trains_from_separate_files(tmp_path, tiny_dataset, tiny_flux_files, capfd):
    out = tmp_path / "fp8"
    opts = {**flux_options(tiny_dataset, out, "x", fp8_base=True, gradient_checkpointing=True),
            **separate_files(tiny_flux_files["files"])}
    assert train(tmp_path, opts) == 0
    assert "fp8_base: unet weights stored in float8_e4m3fn" in capfd.readouterr().err
    tensors, _ = read_lora(out / "lora.safetensors")
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in tensors.values())
    assert any(k.endswith("lora_up.weight") and t.abs().sum() > 0 for k, t in tensors.items())


def test_train_blocks_and_train_t5xxl(tmp_path, tiny_dataset, tiny_flux_files):
    out = tmp_path / "single"
    opts = flux_options(tiny_dataset, out, tiny_flux_files["folder"], network_train_unet_only=False,
                        network_args=["train_blocks=single", "train_t5xxl=True"], max_train_steps=1)
    assert train(tmp_path, opts) == 0
    names = {k.split(".")[0] for k in read_lora(out / "lora.safetensors")[0]}
    assert {n for n in names if n.startswith("lora_unet_")} == {
        f"lora_unet_single_blocks_{i}_{m}" for i in range(6) for m in ("linear1", "linear2", "modulation_lin")}
    assert any(n.startswith("lora_te1_text_model_encoder_layers_0_") for n in names)
    assert "lora_te3_encoder_block_0_layer_0_SelfAttention_q" in names


def test_full_finetune_saves_the_transformer_in_bfl_layout(tmp_path, tiny_dataset, tiny_flux_files):
    """flux_train.py-style: the transformer trains (AdaFactor + fused backward), the file is BFL's layout and
    loads back as a base model with the separate files."""
    from library.models.loading import load_base_model
    from library.util.safetensors_io import load_safetensors, read_metadata

    out = tmp_path / "ft"
    opts = flux_options(tiny_dataset, out, tiny_flux_files["folder"], network_module=None,
                        network_train_unet_only=None, optimizer_type="AdaFactor", learning_rate=1e-3,
                        optimizer_args=["relative_step=False", "scale_parameter=False", "warmup_init=False"],
                        fused_backward_pass=True, network_dim=None, network_alpha=None, output_name="ft")
    from tests.db.db_helpers import train_db

    assert train_db(tmp_path, opts)[0] == 0
    saved = load_safetensors(out / "ft.safetensors")
    base = load_safetensors(tiny_flux_files["files"]["transformer"])
    assert saved.keys() == base.keys()
    assert "double_blocks.0.img_attn.qkv.weight" in saved
    changed = [k for k in base if not torch.equal(saved[k], base[k])]
    assert len(changed) > len(base) // 2
    assert read_metadata(out / "ft.safetensors")["modelspec.architecture"] == "flux-1-dev"
    files = tiny_flux_files["files"]
    model = load_base_model(out / "ft.safetensors", components={k: files[k] for k in ("clip_l", "t5xxl", "ae")})
    assert model.family == "flux"
    assert torch.equal(model.unet.state_dict()["final_layer.linear.weight"], saved["final_layer.linear.weight"])


def test_samples_render_with_the_lora_in_effect(tmp_path, tiny_dataset, tiny_flux_files):
    out = tmp_path / "samples"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("sks disc --w 80 --h 64 --s 3 --g 3.5 --d 7\n", encoding="utf-8")
    opts = flux_options(tiny_dataset, out, tiny_flux_files["folder"], sample_prompts=str(prompts),
                        sample_every_n_steps=2, max_train_steps=2)
    assert train(tmp_path, opts) == 0
    pngs = sorted((out / "sample").glob("*.png"))
    assert pngs, list(out.rglob("*"))
    from PIL import Image

    with Image.open(pngs[-1]) as image:
        assert image.size == (80, 64)
        assert len(set(image.getdata())) > 10  # a picture, not a flat fill


def test_flux_resume_is_bit_exact(tmp_path, tiny_dataset, tiny_flux_files):
    import json

    def opts(out, **kw):
        return flux_options(tiny_dataset, out, tiny_flux_files["folder"], max_train_steps=4, seed=5,
                            timestep_sampling="sigma", weighting_scheme="logit_normal", **kw)

    assert train(tmp_path, opts(tmp_path / "straight")) == 0
    straight = read_lora(tmp_path / "straight" / "lora.safetensors")[0]
    assert train(tmp_path, opts(tmp_path / "first", save_every_n_steps=2, save_state=True)) == 0
    state = tmp_path / "first" / "lora-step00000002-state"
    assert json.loads((state / "train_state.json").read_text())["current_step"] == 2
    assert train(tmp_path, opts(tmp_path / "resumed", resume=str(state))) == 0
    resumed = read_lora(tmp_path / "resumed" / "lora.safetensors")[0]
    assert resumed.keys() == straight.keys()
    for key in straight:
        assert torch.equal(resumed[key], straight[key]), key
