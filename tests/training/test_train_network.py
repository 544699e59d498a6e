"""End-to-end LoRA trainings on the built-in tiny model: every loop option shows its effect."""

from __future__ import annotations

import math

import pytest
import torch

from tests.training.helpers import base_options, read_lora, train

pytestmark = pytest.mark.slow


@pytest.fixture
def out(tmp_path):
    return tmp_path / "out"


def test_writes_lora_with_keys_and_metadata(tmp_path, tiny_dataset, out):
    opts = base_options(tiny_dataset, out, reg_data_dir=str(tiny_dataset / "reg"), training_comment="hello")
    assert train(tmp_path, opts) == 0
    tensors, meta = read_lora(out / "lora.safetensors")
    assert any(k.startswith("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.") for k in tensors)
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha" in tensors
    assert all(k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for k in tensors)
    for key in ("ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_args", "ss_learning_rate",
                "ss_unet_lr", "ss_text_encoder_lr", "ss_optimizer", "ss_lr_scheduler", "ss_num_train_images",
                "ss_num_reg_images", "ss_num_epochs", "ss_epoch", "ss_steps", "ss_max_train_steps",
                "ss_resolution", "ss_v2", "ss_clip_skip", "ss_seed", "ss_noise_offset", "ss_min_snr_gamma",
                "ss_mixed_precision", "ss_training_started_at", "ss_training_finished_at", "ss_session_id",
                "ss_output_name", "ss_sd_model_name", "ss_base_model_version", "ss_tag_frequency",
                "ss_dataset_dirs", "ss_bucket_info", "ss_training_comment", "sshs_model_hash", "sshs_legacy_hash",
                "modelspec.sai_model_spec", "modelspec.architecture", "modelspec.title", "modelspec.date",
                "modelspec.resolution", "modelspec.prediction_type"):
        assert key in meta, key
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "2.0"
    assert meta["ss_num_train_images"] == "8" and meta["ss_num_reg_images"] == "2"
    assert meta["ss_steps"] == "4" and meta["ss_training_comment"] == "hello"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert '"2_sks disc"' in meta["ss_dataset_dirs"]
    assert tensors["lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha"].item() == 2.0


def test_run_length_options(tmp_path, tiny_dataset, out):
    # 4 train images x 2 repeats at batch 2 in two buckets (64x64 and 96x64 -> 64x64 at res 64) = 4 batches
    assert train(tmp_path, base_options(tiny_dataset, out, max_train_steps=None, max_train_epochs=2)) == 0
    meta = read_lora(out / "lora.safetensors")[1]
    per_epoch = int(meta["ss_num_batches_per_epoch"])
    assert meta["ss_steps"] == str(2 * per_epoch) and meta["ss_epoch"] == "2"
    out2 = tmp_path / "accum"
    assert train(tmp_path, base_options(tiny_dataset, out2, max_train_steps=None, max_train_epochs=1,
                                        gradient_accumulation_steps=2)) == 0
    meta2 = read_lora(out2 / "lora.safetensors")[1]
    assert meta2["ss_steps"] == str(math.ceil(per_epoch / 2))


def test_save_schedule_and_pruning(tmp_path, tiny_dataset, out):
    opts = base_options(tiny_dataset, out, max_train_steps=None, max_train_epochs=4, save_every_n_epochs=1,
                        save_last_n_epochs=2, output_name="run")
    assert train(tmp_path, opts) == 0
    names = sorted(p.name for p in out.glob("*.safetensors"))
    assert names == ["run-000002.safetensors", "run-000003.safetensors", "run.safetensors"]
    assert read_lora(out / "run-000002.safetensors")[1]["ss_epoch"] == "2"
    out2 = tmp_path / "steps"
    assert train(tmp_path, base_options(tiny_dataset, out2, max_train_steps=5, save_every_n_steps=2)) == 0
    names = sorted(p.name for p in out2.glob("*.safetensors"))
    assert names == ["lora-step00000002.safetensors", "lora-step00000004.safetensors", "lora.safetensors"]


@pytest.mark.parametrize("precision,dtype", [(None, torch.float32), ("fp16", torch.float16),
                                             ("bf16", torch.bfloat16)])
def test_save_precision(tmp_path, tiny_dataset, out, precision, dtype):
    assert train(tmp_path, base_options(tiny_dataset, out, max_train_steps=1, save_precision=precision)) == 0
    tensors = read_lora(out / "lora.safetensors")[0]
    assert {t.dtype for t in tensors.values()} == {dtype}


def test_seed_makes_runs_reproducible(tmp_path, tiny_dataset):
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        assert train(tmp_path, base_options(tiny_dataset, tmp_path / name, seed=seed, shuffle_caption=True,
                                            flip_aug=True)) == 0
        runs[name] = read_lora(tmp_path / name / "lora.safetensors")[0]
    assert all(torch.equal(runs["a"][k], runs["b"][k]) for k in runs["a"])
    assert any(not torch.equal(runs["a"][k], runs["c"][k]) for k in runs["a"])


def test_train_unet_only_and_text_encoder_only(tmp_path, tiny_dataset):
    assert train(tmp_path, base_options(tiny_dataset, tmp_path / "u", network_train_unet_only=True)) == 0
    keys = read_lora(tmp_path / "u" / "lora.safetensors")[0]
    assert keys and not any(k.startswith("lora_te_") for k in keys)
    assert train(tmp_path, base_options(tiny_dataset, tmp_path / "t", network_train_text_encoder_only=True)) == 0
    keys = read_lora(tmp_path / "t" / "lora.safetensors")[0]
    assert keys and not any(k.startswith("lora_unet_") for k in keys)


def test_separate_learning_rates(tmp_path, tiny_dataset, out):
    assert train(tmp_path, base_options(tiny_dataset, out, unet_lr=1e-3, text_encoder_lr=0)) == 0
    tensors = read_lora(out / "lora.safetensors")[0]
    te_up = [v for k, v in tensors.items() if k.startswith("lora_te_") and k.endswith("lora_up.weight")]
    unet_up = [v for k, v in tensors.items() if k.startswith("lora_unet_") and k.endswith("lora_up.weight")]
    assert te_up == [] or all(torch.count_nonzero(t) == 0 for t in te_up)  # lr 0: not trained
    assert any(torch.count_nonzero(t) > 0 for t in unet_up)


def test_conv_dim_adds_locon_modules(tmp_path, tiny_dataset, out):
    opts = base_options(tiny_dataset, out, max_train_steps=1, network_args=["conv_dim=2", "conv_alpha=1"])
    assert train(tmp_path, opts) == 0
    tensors, meta = read_lora(out / "lora.safetensors")
    conv = tensors["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"]
    assert conv.shape[0] == 2 and conv.shape[2:] == (3, 3)
    assert tensors["lora_unet_down_blocks_0_resnets_0_conv1.alpha"].item() == 1.0
    assert "conv_dim" in meta["ss_network_args"]


def test_max_grad_norm_clips(tmp_path, tiny_dataset):
    def up_norm(name, clip):
        opts = base_options(tiny_dataset, tmp_path / name, max_train_steps=1, optimizer_type="torch.optim.SGD",
                            learning_rate=1.0, max_grad_norm=clip, network_train_unet_only=True)
        assert train(tmp_path, opts) == 0
        tensors = read_lora(tmp_path / name / "lora.safetensors")[0]
        ups = [v for k, v in tensors.items() if k.endswith("lora_up.weight")]
        return torch.sqrt(sum(t.float().pow(2).sum() for t in ups)).item()

    # one SGD step at lr 1 from up = 0: |Δup| = |grad of up| <= clip
    assert up_norm("clipped", 1e-3) <= 1e-3 * 1.001
    assert up_norm("free", 0) > 1e-3


def test_network_weights_continue_training(tmp_path, tiny_dataset):
    first = tmp_path / "first"
    assert train(tmp_path, base_options(tiny_dataset, first, max_train_steps=3)) == 0
    start = read_lora(first / "lora.safetensors")[0]
    second = tmp_path / "second"
    opts = base_options(tiny_dataset, second, max_train_steps=1, learning_rate=1e-12,
                        network_weights=str(first / "lora.safetensors"))
    assert train(tmp_path, opts) == 0
    continued = read_lora(second / "lora.safetensors")[0]
    assert continued.keys() == start.keys()
    for key in start:
        assert torch.allclose(continued[key], start[key], atol=1e-6), key


def test_options_that_change_the_result(tmp_path, tiny_dataset):
    """Noise, loss, precision, checkpointing, clip_skip, max_token_length and optimizer options all run and
    change (or keep, for gradient checkpointing) the trained weights."""
    def weights(name, **kw):
        assert train(tmp_path, base_options(tiny_dataset, tmp_path / name, max_train_steps=2, **kw)) == 0
        return read_lora(tmp_path / name / "lora.safetensors")[0]

    base = weights("base")
    same = lambda a, b: all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)  # noqa: E731
    assert same(base, weights("ckpt", gradient_checkpointing=True))
    for name, kw in {"offset": {"noise_offset": 0.1}, "snr": {"min_snr_gamma": 5.0},
                     "skip": {"clip_skip": 2}, "adam8": {"optimizer_type": "AdamW8bit"},
                     "bf16": {"mixed_precision": "bf16"}, "pyramid": {"multires_noise_iterations": 4},
                     "ip": {"ip_noise_gamma": 0.1}, "l1": {"loss_type": "l1"},
                     "huber": {"loss_type": "huber", "huber_schedule": "exponential"},
                     "debiased": {"debiased_estimation_loss": True},
                     "offset_rand": {"noise_offset": 0.1, "noise_offset_random_strength": True,
                                     "adaptive_noise_scale": 0.01},
                     "tsteps": {"min_timestep": 100, "max_timestep": 200}}.items():
        other = weights(name, **kw)
        assert other.keys() == base.keys()
        assert not same(base, other), name
        assert all(torch.isfinite(t).all() for t in other.values()), name
    long = weights("long", max_token_length=225)
    assert long.keys() == base.keys()


def test_cache_latents_to_disk_writes_npz(tmp_path, tiny_dataset, out):
    opts = base_options(tiny_dataset, out, max_train_steps=1, cache_latents=True, cache_latents_to_disk=True)
    assert train(tmp_path, opts) == 0
    assert len(list((tiny_dataset / "train" / "2_sks disc").glob("*_sd.npz"))) == 4
    for npz in (tiny_dataset / "train" / "2_sks disc").glob("*_sd.npz"):
        npz.unlink()


def test_tensorboard_scalars_and_progress_bar(tmp_path, tiny_dataset, out, capsys):
    logs = tmp_path / "logs"
    opts = base_options(tiny_dataset, out, logging_dir=str(logs), log_prefix="demo_", scale_weight_norms=1e-4,
                        network_args=["down_lr_weight=sine", "mid_lr_weight=0.5"])
    assert train(tmp_path, opts) == 0
    err = capsys.readouterr().err
    assert "avr_loss=" in err and "4/4" in err
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dirs = list(logs.glob("demo_*"))
    assert len(run_dirs) == 1
    events = list(run_dirs[0].rglob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/current", "loss/average", "lr/unet", "lr/textencoder", "lr/unet_w0.5"} <= tags
    assert len(acc.Scalars("loss/current")) == 4
    assert acc.Scalars("max_norm/keys_scaled")[-1].value > 0  # every trained module hits the tiny cap
    assert read_lora(out / "lora.safetensors")[1]["ss_scale_weight_norms"] == "0.0001"


def test_v2_v_parameterization(tmp_path, tiny_dataset, out):
    opts = base_options(tiny_dataset, out, pretrained_model_name_or_path="builtin:tiny-sd2", v2=True,
                        v_parameterization=True, max_train_steps=2)
    assert train(tmp_path, opts) == 0
    meta = read_lora(out / "lora.safetensors")[1]
    assert meta["modelspec.architecture"] == "stable-diffusion-v2-768-v/lora"
    assert meta["modelspec.prediction_type"] == "v" and meta["ss_v2"] == "True"
    zt = tmp_path / "zt"
    opts.update(output_dir=str(zt), zero_terminal_snr=True, scale_v_pred_loss_like_noise_pred=True)
    assert train(tmp_path, opts) == 0
    tensors, meta = read_lora(zt / "lora.safetensors")
    assert meta["ss_zero_terminal_snr"] == "True"
    assert all(torch.isfinite(t).all() for t in tensors.values())
