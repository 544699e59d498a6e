"""End-to-end DreamBooth trainings on the tiny model (issue 4's checks)."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from library.config.load import config_from_values
from library.models.loading import load_base_model
from tests.db.db_helpers import db_options, max_abs_diff, state_of, train_db
from tests.training.helpers import held_out_loss

pytestmark = pytest.mark.slow

LDM_PREFIXES_SD1 = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.")


def test_db_lowers_loss_and_writes_an_ldm_single_file(tmp_path, tiny_dataset, tiny_model_files):
    opts = db_options(
        tiny_dataset, tmp_path / "out", max_train_steps=12, save_precision="fp16", learning_rate_te=5e-4
    )
    code, target = train_db(tmp_path, opts)
    assert code == 0
    path = tmp_path / "out" / "db.safetensors"
    with safe_open(str(path), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
        dtypes = {f.get_tensor(k).dtype for k in keys if f.get_tensor(k).is_floating_point()}
    # the original (LDM) layout, every tensor in the saved precision
    assert all(k.startswith(LDM_PREFIXES_SD1) for k in keys)
    assert {p for p in LDM_PREFIXES_SD1 if any(k.startswith(p) for k in keys)} == set(LDM_PREFIXES_SD1)
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert "first_stage_model.encoder.conv_in.weight" in keys
    assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in keys
    assert dtypes == {torch.float16}
    assert meta["modelspec.architecture"] == "stable-diffusion-v1"
    assert meta["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
    assert meta["ss_num_reg_images"] == "2" and meta["ss_steps"] == "12"
    assert meta["ss_unet_lr"] == "0.001" and meta["ss_text_encoder_lr"] == "0.0005"

    trained_unet = state_of(target._model.unet)
    # ours: the file loads back to the trained UNet, exactly in fp16
    reloaded = load_base_model(str(path))
    ours = state_of(reloaded.unet)
    assert all(torch.equal(ours[k], trained_unet[k].half().float()) for k in trained_unet)
    # diffusers' own converter reads the same weights
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_single_file(
        str(path), config=str(tiny_model_files["sd1"]["folder"]), safety_checker=None, local_files_only=True
    )
    theirs = pipe.unet.state_dict()
    assert theirs.keys() == trained_unet.keys()
    assert all(torch.equal(theirs[k].half(), trained_unet[k].half()) for k in trained_unet)

    # the VAE is the base model's, the text encoder was trained
    base = load_base_model("builtin:tiny")
    assert (
        max_abs_diff(state_of(reloaded.vae), {k: v.half().float() for k, v in state_of(base.vae).items()})
        == 0
    )
    assert max_abs_diff(state_of(reloaded.text_encoder), state_of(base.text_encoder)) > 1e-3

    config = config_from_values(opts, "db")
    before, after = held_out_loss(base, config), held_out_loss(reloaded, config)
    assert after < before * 0.97, (before, after)


def test_text_encoder_trains_until_step_k_only(tmp_path, tiny_dataset):
    k = 2
    opts = db_options(
        tiny_dataset,
        tmp_path / "out",
        max_train_steps=4,
        save_every_n_steps=1,
        train_text_encoder=True,
        stop_text_encoder_training=k,
    )
    code, _ = train_db(tmp_path, opts)
    assert code == 0
    out = tmp_path / "out"
    files = [out / f"db-step{s:08d}.safetensors" for s in (1, 2, 3)] + [out / "db.safetensors"]
    models = [load_base_model("builtin:tiny")] + [load_base_model(str(f)) for f in files]
    te = [state_of(m.text_encoder) for m in models]  # steps 0 (base), 1, 2, 3, 4
    unet = [state_of(m.unet) for m in models]
    for step in range(1, 5):
        te_change = max_abs_diff(te[step], te[step - 1])
        assert (te_change > 0) == (step <= k), (step, te_change)
        assert max_abs_diff(unet[step], unet[step - 1]) > 0, step


def test_unet_only_diffusers_folder_keeps_vae_and_text_encoder(tmp_path, tiny_dataset):
    opts = db_options(
        tiny_dataset,
        tmp_path / "out",
        max_train_steps=2,
        save_every_n_steps=1,
        stop_text_encoder_training=-1,
        save_model_as="diffusers_safetensors",
        no_token_padding=True,
    )
    code, target = train_db(tmp_path, opts)
    assert code == 0
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".toml")) == ["db", "db-step00000001"]
    assert (out / "db" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (out / "db" / "scheduler" / "scheduler_config.json").is_file()
    assert (out / "db" / "tokenizer").is_dir()
    saved = load_base_model(str(out / "db"))
    base = load_base_model("builtin:tiny")
    assert max_abs_diff(state_of(saved.unet), state_of(target._model.unet)) == 0
    assert max_abs_diff(state_of(saved.unet), state_of(base.unet)) > 0
    assert max_abs_diff(state_of(saved.text_encoder), state_of(base.text_encoder)) == 0
    assert max_abs_diff(state_of(saved.vae), state_of(base.vae)) == 0
    captions = ["sks disc", "a much longer caption of a red disc"]
    assert saved.tokenize(captions).shape == base.tokenize(captions, pad=False).shape[:1] + (77,)


def test_full_bf16_trains_half_precision_weights(tmp_path, tiny_dataset):
    opts = db_options(
        tiny_dataset,
        tmp_path / "out",
        max_train_steps=2,
        mixed_precision="bf16",
        full_bf16=True,
        save_precision="bf16",
        output_name="bf16",
    )
    code, target = train_db(tmp_path, opts)
    assert code == 0
    assert target._model.unet.dtype == torch.bfloat16
    assert target._model.text_encoder.dtype == torch.bfloat16
    with safe_open(str(tmp_path / "out" / "bf16.safetensors"), "pt") as f:
        unet_key = "model.diffusion_model.out.2.weight"
        assert torch.equal(f.get_tensor(unet_key), target._model.unet.conv_out.weight.detach())


def test_cached_frozen_parts_are_parked_between_saves_and_saved_unchanged(tmp_path, tiny_dataset):
    """A fine-tune caching latents and text-encoder outputs keeps the VAE and the frozen text encoder on disk
    between saves (not in memory); every checkpoint still holds them exactly, and no parking folder is left."""
    opts = db_options(tiny_dataset, tmp_path / "out", max_train_steps=2, save_every_n_steps=1,
                      train_text_encoder=False, cache_latents=True, cache_text_encoder_outputs=True,
                      save_model_as="safetensors", save_precision="float")
    code, target = train_db(tmp_path, opts)
    assert code == 0
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".toml")) == \
        ["db-step00000001.safetensors", "db.safetensors"]
    model = target._model
    assert all(p.device.type == "meta" for part in ("vae", "text_encoder") for p in model.parts[part].parameters())
    base = load_base_model("builtin:tiny")
    for name in ("db-step00000001.safetensors", "db.safetensors"):
        saved = load_base_model(str(out / name))
        assert max_abs_diff(state_of(saved.text_encoder), state_of(base.text_encoder)) == 0
        assert max_abs_diff(state_of(saved.vae), state_of(base.vae)) == 0
        assert max_abs_diff(state_of(saved.unet), state_of(base.unet)) > 0
