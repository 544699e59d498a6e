"""The SDXL family on the tiny SDXL model: loading parity, size conditioning, cached text outputs, bad input."""

from __future__ import annotations

import pytest
import torch

from library.config.load import config_from_values
from library.errors import ConfigError, ModelLoadError
from library.models.loading import load_base_model, peek_family
from library.models.sdxl import size_time_ids
from library.training.step import StepSettings, diffusion_loss


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl_files):
    return load_base_model(str(tiny_sdxl_files["single"]))


def _batch(captions, sizes=((64, 64), (80, 64)), crops=((0, 0), (8, 0))):
    n = len(captions)
    return {"latents": torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(3)), "captions": list(captions),
            "loss_weights": torch.ones(n), "original_sizes_hw": list(sizes)[:n], "crop_top_lefts": list(crops)[:n],
            "target_sizes_hw": [(64, 64)] * n}


def _loss(model, batch, **settings):
    return diffusion_loss(model, batch, StepSettings(v_prediction=False, **settings),
                          torch.Generator().manual_seed(7), False)


def test_folder_and_single_file_give_the_same_first_step_loss(tiny_sdxl_files, sdxl):
    folder = load_base_model(str(tiny_sdxl_files["folder"]))
    assert folder.family == sdxl.family == "sdxl"
    assert list(folder.parts) == ["unet", "vae", "text_encoder_1", "text_encoder_2"]
    batch = _batch(["a red disc", "a blue disc"])
    with torch.no_grad():
        assert _loss(folder, batch).item() == _loss(sdxl, batch).item()


def test_peek_family_reads_no_weights(tiny_sdxl_files, tiny_model_files):
    assert peek_family(str(tiny_sdxl_files["single"])) == "sdxl"
    assert peek_family(str(tiny_sdxl_files["folder"])) == "sdxl"
    assert peek_family(str(tiny_model_files["sd1"]["single"])) == "sd1"
    assert peek_family(str(tiny_model_files["sd2"]["folder"])) == "sd2"
    assert peek_family("builtin:tiny-sdxl") == "sdxl"
    assert peek_family("/no/such/file.safetensors") is None


def test_time_ids_are_original_hw_crop_top_left_target_hw():
    batch = {"original_sizes_hw": [(200, 301), (301, 200)], "crop_top_lefts": [(0, 16), (16, 0)],
             "target_sizes_hw": [(192, 256), (256, 192)]}
    ids = size_time_ids(batch, "cpu", torch.float32)
    assert ids.tolist() == [[200, 301, 0, 16, 192, 256], [301, 200, 16, 0, 256, 192]]


def test_the_unet_sees_the_size_conditioning(sdxl):
    """The same latents and captions with another crop give another prediction (time_ids reach the UNet), and
    our prediction equals diffusers' UNet called with the time ids built by hand."""
    from library.models.family import Conditioning

    cond = sdxl.encode_prompt(["a disc"])
    noisy = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500])
    with torch.no_grad():
        a = sdxl.adapter.predict(sdxl, noisy, t, cond, _batch(["a disc"], crops=((0, 0),)))
        b = sdxl.adapter.predict(sdxl, noisy, t, cond, _batch(["a disc"], crops=((24, 0),)))
        by_hand = sdxl.unet(noisy, t, cond.hidden, added_cond_kwargs={
            "text_embeds": cond.pooled, "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}).sample
    assert not torch.equal(a, b)
    assert torch.equal(a, by_hand)
    assert isinstance(cond, Conditioning) and cond.hidden.shape == (1, 77, 80) and cond.pooled.shape == (1, 16)


def test_conditioning_is_both_penultimate_states_and_the_pooled_projection(sdxl):
    ids1 = sdxl.tokenizers["text_encoder_1"](["a disc"], padding="max_length", max_length=77,
                                             return_tensors="pt").input_ids
    cond = sdxl.encode_prompt(["a disc"])
    with torch.no_grad():
        out1 = sdxl.parts["text_encoder_1"](ids1, output_hidden_states=True)
        ids2 = sdxl.tokenize_prompt(["a disc"])["text_encoder_2"]
        out2 = sdxl.parts["text_encoder_2"](ids2, output_hidden_states=True)
    assert torch.equal(cond.hidden[..., :32], out1.hidden_states[-2])
    assert torch.equal(cond.hidden[..., 32:], out2.hidden_states[-2])
    assert torch.equal(cond.pooled, out2.text_embeds)


def test_cached_text_encoder_outputs_give_the_same_loss(sdxl, tiny_dataset, tmp_path):
    from library.training.data_setup import build_dataset
    from library.training.text_cache import cache_text_encoder_outputs

    config = config_from_values({"pretrained_model_name_or_path": "builtin:tiny-sdxl",
                                 "train_data_dir": str(tiny_dataset / "train"), "output_dir": str(tmp_path),
                                 "resolution": 64}, "network")
    dataset = build_dataset(config)
    refs = dataset.epoch_batches(1, 0)[0]
    batch = dataset.load_batch(refs, epoch=1, seed=0, step=0)
    with torch.no_grad():
        live = _loss(sdxl, batch)
        cache_text_encoder_outputs(sdxl, [dataset], clip_skip=None, max_token_length=None, to_disk=True)
        try:
            cached = _loss(sdxl, batch)
            assert any(p.name.endswith("_te_outputs.npz") for p in (tiny_dataset / "train" / "2_sks disc").iterdir())
        finally:
            del sdxl.extras["text_cache"]
    # the cache encodes the captions in batches, the live path one by one: the matmuls may round differently in
    # the last bit (seen: 1 ulp on some CPUs), so equal to float32 precision, not bit for bit
    assert cached.item() == pytest.approx(live.item(), rel=1e-6, abs=0)


def test_cached_text_outputs_need_fixed_captions(sdxl, tiny_dataset, tmp_path):
    from library.training.data_setup import build_dataset
    from library.training.text_cache import cache_text_encoder_outputs

    config = config_from_values({"pretrained_model_name_or_path": "builtin:tiny-sdxl", "shuffle_caption": True,
                                 "train_data_dir": str(tiny_dataset / "train"), "output_dir": str(tmp_path),
                                 "resolution": 64}, "network")
    with pytest.raises(ConfigError, match="needs fixed captions.*shuffle_caption"):
        cache_text_encoder_outputs(sdxl, [build_dataset(config)], clip_skip=None, max_token_length=None,
                                   to_disk=False)


def test_two_text_encoder_lrs_on_sd1_are_refused():
    from library.networks import keys
    from library.networks.lora import create_network

    model = load_base_model("builtin:tiny")
    network = create_network(model.unet, model.text_encoder, dim=2, parts=keys.model_parts(model))
    with pytest.raises(ConfigError, match="text_encoder_lr has 2 values.*1 text encoder"):
        network.param_groups(1e-4, [1e-5, 2e-5], 1e-4)
    with pytest.raises(ConfigError, match="give one value, or two"):
        config_from_values({"text_encoder_lr": [1, 2, 3], "pretrained_model_name_or_path": "builtin:tiny",
                            "train_data_dir": "dataset_examples", "output_dir": "out"}, "network")


def test_learning_rate_te1_on_sd1_is_refused():
    from library.models.family import get_model_family
    from library.training.db_target import text_part_lrs

    config = config_from_values({"learning_rate_te1": 1e-5, "learning_rate": 1e-6,
                                 "pretrained_model_name_or_path": "builtin:tiny-sdxl",
                                 "train_data_dir": "dataset_examples", "output_dir": "out"}, "db")
    with pytest.raises(ConfigError, match="learning_rate_te1 / learning_rate_te2 .*sd1"):
        text_part_lrs(config, get_model_family("sd1"))
    assert text_part_lrs(config, get_model_family("sdxl")) == {"text_encoder_1": 1e-5, "text_encoder_2": 1e-6}


def test_sdxl_scripts_refuse_another_family(tmp_path, tiny_dataset):
    from library.cli import run_trainer
    from library.training.lora_target import LoRATarget

    argv = ["--pretrained_model_name_or_path", "builtin:tiny", "--train_data_dir", str(tiny_dataset / "train"),
            "--output_dir", str(tmp_path), "--max_train_steps", "1", "--resolution", "64"]
    assert run_trainer("network", LoRATarget, argv, family="sdxl") == 2


def test_sdxl_single_file_missing_a_part(tmp_path, sdxl):
    from safetensors.torch import save_file

    from library.models.sgm import to_sgm_single_file

    state = {k: v for k, v in to_sgm_single_file(sdxl.parts).items() if not k.startswith("conditioner.embedders.1.")}
    path = tmp_path / "broken.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(ModelLoadError, match="conditioner.embedders.1"):
        load_base_model(str(path))


@pytest.mark.slow  # starts a whole process / traces a 1024 px step: kept out of the fast tier
def test_estimate_for_sdxl(tiny_dataset, tmp_path):
    from library.training.estimate import estimate_run
    from library.training.lora_target import LoRATarget

    config = config_from_values({"pretrained_model_name_or_path": "builtin:tiny-sdxl", "network_dim": 4,
                                 "train_data_dir": str(tiny_dataset / "train"), "output_dir": str(tmp_path)},
                                "network")
    estimate = estimate_run(config, LoRATarget(config), measure_speed=False)
    labels = [line.label for line in estimate.resident]
    assert "text encoder 1 weights (frozen)" in labels and "text encoder 2 weights (frozen)" in labels
    assert "1024x1024" in estimate.step[0].detail  # the SDXL default resolution
    assert estimate.peak_bytes > 0
