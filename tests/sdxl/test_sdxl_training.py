"""SDXL end to end on the tiny SDXL model: LoRA, LoCon, LoHa and a full fine-tune from sd-scripts-style TOMLs."""

from __future__ import annotations

import pytest
import torch

from tests.db.db_helpers import db_options, train_db
from tests.training.helpers import base_options, read_lora, train

pytestmark = pytest.mark.slow


def sdxl_options(tiny_dataset, out, single, **overrides) -> dict:
    """sd-scripts' SDXL LoRA settings (cached latents, unet lr, two text-encoder lrs) at a tiny size."""
    options = {"pretrained_model_name_or_path": str(single), "resolution": 64, "cache_latents": True,
               "unet_lr": 1e-3, "text_encoder_lr": [5e-4, 2e-4], "no_half_vae": True, **overrides}
    return base_options(tiny_dataset, out, **options)


def test_lora_on_sdxl(tmp_path, tiny_dataset, tiny_sdxl_files):
    out = tmp_path / "out"
    assert train(tmp_path, sdxl_options(tiny_dataset, out, tiny_sdxl_files["single"])) == 0
    tensors, meta = read_lora(out / "lora.safetensors")
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in tensors
    assert "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in tensors
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_up.weight" in tensors
    assert not any(k.startswith(("lora_unet_down_blocks", "lora_te_")) for k in tensors)
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["ss_v2"] == "False"
    # every part trained: up weights moved away from zero
    for prefix in ("lora_te1_", "lora_te2_", "lora_unet_"):
        ups = [v for k, v in tensors.items() if k.startswith(prefix) and k.endswith("lora_up.weight")]
        assert ups and any(v.abs().sum() > 0 for v in ups), prefix


def test_locon_and_unet_only_with_cached_text(tmp_path, tiny_dataset, tiny_sdxl_files):
    out = tmp_path / "out"
    opts = sdxl_options(tiny_dataset, out, tiny_sdxl_files["folder"], network_args=["conv_dim=4", "conv_alpha=1"],
                        network_train_unet_only=True, cache_text_encoder_outputs=True, text_encoder_lr=None)
    assert train(tmp_path, opts) == 0
    tensors, _ = read_lora(out / "lora.safetensors")
    assert "lora_unet_input_blocks_1_0_in_layers_2.lora_down.weight" in tensors  # a 3x3 resnet conv (LoCon)
    assert tensors["lora_unet_input_blocks_1_0_in_layers_2.lora_down.weight"].shape[-2:] == (3, 3)
    assert "lora_unet_input_blocks_3_0_op.lora_down.weight" in tensors  # the downsampler
    assert not any(k.startswith("lora_te") for k in tensors)


def test_loha_on_sdxl(tmp_path, tiny_dataset, tiny_sdxl_files):
    out = tmp_path / "out"
    opts = sdxl_options(tiny_dataset, out, tiny_sdxl_files["single"], network_module="lycoris.kohya",
                        network_args=["algo=loha"])
    assert train(tmp_path, opts) == 0
    tensors, meta = read_lora(out / "lora.safetensors")
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.hada_w1_a" in tensors
    assert any(k.startswith("lora_te1_") and k.endswith(".hada_w1_a") for k in tensors)
    assert any(k.startswith("lora_te2_") and k.endswith(".hada_w1_a") for k in tensors)
    # continue from the file: every module is found again
    out2 = tmp_path / "again"
    opts2 = sdxl_options(tiny_dataset, out2, tiny_sdxl_files["single"], network_module="lycoris.kohya",
                         network_args=["algo=loha"], network_weights=str(out / "lora.safetensors"),
                         dim_from_weights=True)
    assert train(tmp_path, opts2) == 0
    assert set(read_lora(out2 / "lora.safetensors")[0]) == set(tensors)


def test_full_fine_tune_single_file_loads_in_diffusers(tmp_path, tiny_dataset, tiny_sdxl_files):
    from diffusers import StableDiffusionXLPipeline

    out = tmp_path / "db"
    opts = db_options(tiny_dataset, out, pretrained_model_name_or_path=str(tiny_sdxl_files["single"]),
                      train_text_encoder=True, learning_rate_te1=1e-4, learning_rate_te2=5e-5)
    code, target = train_db(tmp_path, opts)
    assert code == 0
    trained = target._model
    assert [g for g in target._text_parts] == ["text_encoder_1", "text_encoder_2"]
    path = out / "db.safetensors"
    pipe = StableDiffusionXLPipeline.from_single_file(str(path), config=str(tiny_sdxl_files["folder"]),
                                                      local_files_only=True, torch_dtype=torch.float32)
    ours = trained.unet.state_dict()
    loaded = pipe.unet.state_dict()
    assert all(torch.equal(loaded[k].float(), ours[k].float().cpu()) for k in ours)
    base = StableDiffusionXLPipeline.from_pretrained(str(tiny_sdxl_files["folder"]), local_files_only=True)
    assert any(not torch.equal(base.unet.state_dict()[k], loaded[k]) for k in loaded)  # it was trained
    te2 = pipe.text_encoder_2.state_dict()
    assert all(torch.equal(te2[k], v.cpu()) for k, v in trained.parts["text_encoder_2"].state_dict().items())


def test_sdxl_fine_tune_trains_unet_only_by_default(tmp_path, tiny_dataset, tiny_sdxl_files):
    out = tmp_path / "db"
    opts = db_options(tiny_dataset, out, pretrained_model_name_or_path="builtin:tiny-sdxl", save_model_as="diffusers")
    code, target = train_db(tmp_path, opts)
    assert code == 0 and target._text_parts == []
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(str(out / "db"), local_files_only=True)
    assert pipe.text_encoder_2.config.projection_dim == 16


def test_alias_scripts_exist_and_share_the_trainers():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    assert "LoRATarget" in (root / "sdxl_train_network.py").read_text()
    assert "DreamBoothTarget" in (root / "sdxl_train.py").read_text()


def test_v_prediction_sdxl_with_samples(tmp_path, tiny_dataset, tiny_sdxl_files):
    """A v-prediction SDXL base (NoobAI-style): v target, zero terminal SNR, SDXL samples during training."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("sks disc --w 64 --h 64 --s 2 --d 5\n", encoding="utf-8")
    out = tmp_path / "out"
    opts = sdxl_options(tiny_dataset, out, tiny_sdxl_files["single"], v_parameterization=True,
                        zero_terminal_snr=True, sample_prompts=str(prompts), sample_every_n_steps=2)
    assert train(tmp_path, opts) == 0
    _, meta = read_lora(out / "lora.safetensors")
    assert meta["modelspec.prediction_type"] == "v"
    samples = sorted((out / "sample").glob("*.png"))
    assert len(samples) == 2
    from PIL import Image

    assert Image.open(samples[0]).size == (64, 64)
