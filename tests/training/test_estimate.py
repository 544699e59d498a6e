"""The memory/time estimate (--estimate): the meta-device trace against a real step, and its parts."""

from __future__ import annotations

import pytest
import torch

from library.config.load import config_from_values
from library.training.db_target import DreamBoothTarget
from library.training.estimate import RunEstimate, estimate_run
from library.training.estimate.device import DeviceInfo
from library.training.estimate.optimizer_state import measure_optimizer_state
from library.training.estimate.tracing import Trace
from library.training.lora_target import LoRATarget
from library.training.setup import load_model, place_model
from library.training.step import StepSettings, diffusion_loss
from tests.training.helpers import base_options, train

CPU = DeviceInfo("cpu", "CPU", 64 * 1024**3)


def lora_config(tiny_dataset, tmp_path, **overrides):
    return config_from_values(base_options(tiny_dataset, tmp_path / "out", **overrides), "network")


def estimate(config, device=CPU) -> RunEstimate:
    target = DreamBoothTarget(config) if config.trainer == "db" else LoRATarget(config)
    return estimate_run(config, target, device=device, measure_speed=False)


def line(est: RunEstimate, label: str) -> int:
    return next(x.bytes for x in [*est.resident, *est.step] if x.label.startswith(label))


def real_step(config, batch_size: int, width: int, height: int) -> tuple[int, int, int]:
    """(peak new bytes, gradient bytes, FLOPs without attention) of a real CPU step of the tiny model."""
    model = load_model(config)
    target = LoRATarget(config)
    place_model(model, torch.device("cpu"), config, target.trains_text_encoder, target.float32_components)
    target.attach(model, config)
    batch = {"latents": torch.randn(batch_size, 4, height // 8, width // 8),
             "captions": ["photo"] * batch_size, "loss_weights": torch.ones(batch_size)}
    settings = StepSettings.from_config(config, model)
    from torch.utils.flop_counter import FlopCounterMode

    from library.training.estimate.tracing import LiveBytes

    memory = LiveBytes()
    with FlopCounterMode(display=False) as flops, memory:
        loss = diffusion_loss(model, batch, settings, torch.Generator().manual_seed(0), True)
        loss.backward()
    grads = sum(p.grad.numel() * p.grad.element_size() for p in target.network.parameters() if p.grad is not None)
    return memory.peak, grads, flops.get_total_flops()


@pytest.mark.slow  # a training run: longer than the fast tier's limit
def test_meta_trace_matches_a_real_cpu_step(tiny_dataset, tmp_path):
    config = lora_config(tiny_dataset, tmp_path, resolution=96, train_batch_size=2, cache_latents=True)
    est = estimate(config)
    # the dataset's largest batch: 2 pictures in the 96x64 bucket (or 64x64); trace the same on the CPU
    size = next(x.detail for x in est.step if x.label.startswith("activations")).split(" at ")[1].split(",")[0]
    width, height = (int(v) for v in size.split("x"))
    peak, grads, flops = real_step(config, 2, width, height)
    assert line(est, "gradients") == grads
    activations = line(est, "activations")
    # the real CPU step runs PyTorch's fused CPU attention; the trace stands in a fused kernel on meta
    assert abs(activations - (peak - grads)) <= 0.1 * (peak - grads), (activations, peak - grads)
    # FLOPs: the counter sees the same operators; the estimate adds attention (fused kernels, by formula)
    assert est.flops_per_step - est.attention_flops_per_step == flops
    assert 0 < est.attention_flops_per_step < est.flops_per_step


@pytest.mark.slow  # several estimates
def test_activations_scale_with_batch_and_shrink_with_checkpointing(tiny_dataset, tmp_path):
    two = estimate(lora_config(tiny_dataset, tmp_path, train_batch_size=2))
    four = estimate(lora_config(tiny_dataset, tmp_path, train_batch_size=4))
    ratio = line(four, "activations") / line(two, "activations")
    assert 1.7 < ratio < 2.1, ratio
    checkpointed = estimate(lora_config(tiny_dataset, tmp_path, train_batch_size=4, gradient_checkpointing=True))
    assert line(checkpointed, "activations") < 0.8 * line(four, "activations")
    assert checkpointed.flops_per_step > four.flops_per_step  # the forward is computed again in backward


def test_lora_parts_are_counted_exactly(tiny_dataset, tmp_path):
    config = lora_config(tiny_dataset, tmp_path, network_dim=8, optimizer_type="AdamW")
    est = estimate(config)
    model = load_model(config)
    target = LoRATarget(config)
    target.attach(model, config)
    params = sum(p.numel() for p in target.network.parameters())
    assert line(est, "network") == 4 * params
    assert line(est, "gradients") == 4 * params
    tensors = len(list(target.network.parameters()))
    assert line(est, "optimizer state") == 8 * params + 4 * tensors  # AdamW: two float32 moments and a step count
    unet = sum(p.numel() for p in model.unet.parameters()) + sum(b.numel() for b in model.unet.buffers())
    assert line(est, "UNet weights") == 4 * unet
    assert est.total_steps == config.max_train_steps
    assert est.peak_bytes == sum(x.bytes for x in est.resident) + max(
        sum(x.bytes for x in est.step), est.vae_encoding.bytes)


def test_optimizer_state_is_measured_per_optimizer():
    params = [torch.empty(640, 320, device="meta"), torch.empty(320, device="meta")]
    numel = 640 * 320 + 320
    assert measure_optimizer_state(params, "AdamW", [], 1e-4).bytes == 8 * numel + 2 * 4  # + a step count each
    assert measure_optimizer_state(params, "SGDNesterov", [], 1e-4).bytes == 4 * numel
    assert measure_optimizer_state(params, "Lion", [], 1e-4).bytes == 4 * numel
    assert measure_optimizer_state(params, "Prodigy", [], 1.0).bytes >= 16 * numel
    eight_bit = measure_optimizer_state(params, "AdamW8bit", [], 1e-4).bytes
    assert 2 * numel <= eight_bit < 3 * numel  # two 8-bit moments plus block scales (small tensors in 32 bit)
    # big tensors are measured on a stand-in and scaled per element
    big = [torch.empty(4096, 1024, device="meta")]
    assert measure_optimizer_state(big, "AdamW", [], 1e-4).bytes == (8 * 1024 * 1024 + 4) * 4
    assert measure_optimizer_state([], "AdamW", [], 1e-4).bytes == 0


@pytest.mark.slow  # several estimates
def test_mixed_precision_on_a_gpu_halves_weights_and_activations(tiny_dataset, tmp_path):
    gpu = DeviceInfo("cuda", "test GPU", 8 * 1024**3)
    full = estimate(lora_config(tiny_dataset, tmp_path, mixed_precision="no"), gpu)
    half = estimate(lora_config(tiny_dataset, tmp_path, mixed_precision="fp16"), gpu)
    assert half.dtype == torch.float16 and full.dtype == torch.float32
    assert line(half, "UNet weights") * 2 == line(full, "UNet weights")
    assert line(half, "VAE weights") == line(full, "VAE weights")  # the VAE stays float32
    assert line(half, "network") == line(full, "network")  # float32 master weights
    assert line(half, "activations") < 0.65 * line(full, "activations")
    assert line(half, "half-precision copies") * 2 == line(half, "network")
    assert half.matmul_rate is None and half.seconds_per_step is None  # no such device here to time
    assert "does NOT fit" not in half.report() and "fits" in half.report()


@pytest.mark.slow  # several estimates
def test_dreambooth_counts_the_whole_unet_and_full_bf16_halves_it(tiny_dataset, tmp_path):
    from tests.db.db_helpers import db_options

    config = config_from_values(db_options(tiny_dataset, tmp_path / "db"), "db")
    est = estimate(config)
    model = load_model(config)
    unet_params = sum(p.numel() for p in model.unet.parameters())
    te_params = sum(p.numel() for p in model.text_encoder.parameters())
    assert line(est, "trained weights") == 4 * (unet_params + te_params)  # train_db trains both by default
    assert not any(x.label.startswith("UNet weights") for x in est.resident)  # nothing of it is frozen
    unet_only = estimate(config_from_values(db_options(tiny_dataset, tmp_path / "db", stop_text_encoder_training=0),
                                            "db"))
    assert line(unet_only, "trained weights") == 4 * unet_params
    assert line(unet_only, "text encoder weights") > 0
    bf16 = estimate(config_from_values(db_options(tiny_dataset, tmp_path / "db", full_bf16=True,
                                                  mixed_precision="bf16"), "db"),
                    DeviceInfo("cuda", "test GPU", None))
    assert line(bf16, "trained weights") == 2 * (unet_params + te_params)
    assert line(bf16, "gradients") == 2 * (unet_params + te_params)


def test_too_big_a_run_gets_advice(tiny_dataset, tmp_path):
    small_gpu = DeviceInfo("cuda", "test GPU", 1024 * 1024)
    est = estimate(lora_config(tiny_dataset, tmp_path, train_batch_size=4), small_gpu)
    assert est.fits is False
    text = est.report()
    assert "does NOT fit" in text and "gradient_checkpointing" in text


def test_trace_counts_fused_attention_not_the_score_matrix():
    q = torch.empty(2, 8, 4096, 40, device="meta", requires_grad=True)
    with Trace() as trace:
        out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
        out.sum().backward()
    scores = 2 * 8 * 4096 * 4096 * 4
    assert trace.peak_bytes < scores / 10
    assert trace.flops >= 3 * 4 * 2 * 8 * 4096 * 4096 * 40


@pytest.mark.slow  # a training run: longer than the fast tier's limit
def test_cli_prints_the_estimate_and_writes_nothing(tiny_dataset, tmp_path, capsys):
    options = base_options(tiny_dataset, tmp_path / "out", max_train_steps=10, seed=None)  # no seed: drawn
    assert train(tmp_path, options, extra_argv=["--estimate"]) == 0
    text = capsys.readouterr().out
    assert "Estimate for train_network.py" in text and "peak" in text and "10 steps" in text
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # an estimate
def test_the_estimate_names_the_entry_script_that_ran(tiny_dataset, tmp_path, capsys, monkeypatch):
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    monkeypatch.setattr("sys.argv", [str(root / "sdxl_train_network.py")])
    options = base_options(tiny_dataset, tmp_path / "out", max_train_steps=10)
    assert train(tmp_path, options, extra_argv=["--estimate"]) == 0
    assert capsys.readouterr().out.startswith("Estimate for sdxl_train_network.py on ")


def test_live_bytes_counts_allocations_not_views():
    from library.training.estimate.tracing import LiveBytes

    weight = torch.empty(256, 256, device="meta")  # made before: belongs to the model, not to the step
    memory = LiveBytes()
    with memory:
        view = weight.t()  # a view of the weight: no new memory
        a = torch.empty(1000, device="meta")
        b = a * 2
        reshaped = b.view(10, 100)
        a.mul_(3)  # in place: no new memory
        assert memory.current == 8000
        del b, reshaped
        assert memory.current == 4000
        c = torch.cat([a, a])
        assert memory.current == 12000
        del a, c, view
    assert memory.current == 0 and memory.peak == 12000


def test_checkpointed_blocks_release_their_recomputed_activations():
    """Under the trace, a checkpointed stack's backward frees each block's recomputed activations once its
    gradients are out: after backward only the input's gradient is live, and the peak is one block's worth,
    not the whole stack's (FlopCounterMode's module tracker used to keep every recomputed output alive)."""
    from torch.utils.checkpoint import checkpoint

    width = 256
    stack = [torch.nn.Sequential(torch.nn.Linear(width, 4 * width), torch.nn.GELU(), torch.nn.Linear(4 * width, width))
             for _ in range(8)]
    for block in stack:
        block.requires_grad_(False)

    def run(checkpointed: bool) -> tuple[int, int]:
        x = torch.randn(512, width, requires_grad=True)
        with Trace() as trace:
            h = x
            for block in stack:
                h = checkpoint(block, h, use_reentrant=False) if checkpointed else block(h)
            h.sum().backward()
            del h
            left = trace.memory.current
        return trace.peak_bytes, left

    plain_peak, _ = run(False)
    peak, left = run(True)
    grad = 512 * width * 4
    assert left == grad
    one_block = 512 * 4 * width * 4 * 2  # the hidden layer and its GELU
    assert peak < 2 * one_block + 5 * grad and peak < plain_peak / 2
