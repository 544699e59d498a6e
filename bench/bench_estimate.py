"""How close ``--estimate`` comes to real runs, and what it says for full-size SD1.5 configs.

    python bench/bench_estimate.py [--steps 10] [--sd15]

Part 1 trains a few steps on this machine (the built-in tiny model, and a wider "small" model generated in a
temporary folder) and prints the estimated against the measured seconds per step. Part 2 (``--sd15``) writes
an SD1.5-shaped model with random weights (about 4 GB, cached under the temp folder) and prints the estimate
of usual SD1.5 configs on a GPU: peak memory per config, with its parts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import toml  # noqa: E402
import torch  # noqa: E402

GIB = 1024**3


def small_model(folder: Path) -> Path:
    """A model 4x wider than the tiny one (channels 128..512, two layers per block, text hidden 256)."""
    if (folder / "model_index.json").is_file():
        return folder
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from library.models import tiny

    parts = tiny.tiny_components("sd1")
    unet_config = {**tiny.tiny_unet_config("sd1"), "block_out_channels": [128, 256, 512, 512],
                   "layers_per_block": 2, "cross_attention_dim": 256}
    parts["unet"] = UNet2DConditionModel(**unet_config)
    te = {**tiny.tiny_text_encoder_config("sd1"), "hidden_size": 256, "intermediate_size": 1024,
          "num_attention_heads": 4, "projection_dim": 256}
    parts["text_encoder"] = CLIPTextModel(CLIPTextConfig(**te))
    return tiny.save_diffusers_folder(folder, parts)


def sd15_model(folder: Path) -> Path:
    """SD1.5's architecture (UNet 860M, CLIP ViT-L/14 text encoder, the SD VAE) with random weights."""
    if (folder / "model_index.json").is_file():
        return folder
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from library.models import tiny

    parts = tiny.tiny_components("sd1")
    parts["unet"] = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8, sample_size=64)
    parts["vae"] = AutoencoderKL(block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4,
                                 down_block_types=["DownEncoderBlock2D"] * 4,
                                 up_block_types=["UpDecoderBlock2D"] * 4, sample_size=512)
    parts["text_encoder"] = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072,
                                                         num_hidden_layers=12, num_attention_heads=12,
                                                         projection_dim=768, hidden_act="quick_gelu"))
    return tiny.save_diffusers_folder(folder, parts)


def base(model: str, data: Path, out: Path, **extra) -> dict:
    return {"pretrained_model_name_or_path": model, "train_data_dir": str(data / "train"), "output_dir": str(out),
            "output_name": "bench", "network_dim": 8, "network_alpha": 4, "learning_rate": 1e-4, "seed": 1,
            "optimizer_type": "AdamW", "max_data_loader_n_workers": 1, "cache_latents": True, **extra}


def make_dataset(root: Path, size: int) -> Path:
    from PIL import Image

    folder = root / "train" / "4_sks thing"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(4):
        Image.new("RGB", (size, size), (40 * i, 100, 200)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text("sks thing, photo", encoding="utf-8")
    return root


def config_for(options: dict, trainer: str = "network"):
    from library.config.load import config_from_values

    return config_from_values(options, trainer)


def estimate(options: dict, device=None, trainer: str = "network"):
    from library.training.db_target import DreamBoothTarget
    from library.training.estimate import estimate_run
    from library.training.lora_target import LoRATarget

    config = config_for(options, trainer)
    target = DreamBoothTarget(config) if trainer == "db" else LoRATarget(config)
    return estimate_run(config, target, device=device, measure_speed=device is None)


def measured_seconds_per_step(options: dict, work: Path) -> float:
    """Median time between step events of a real run (the first two steps left out: warm-up)."""
    from accelerate.state import AcceleratorState

    from library.cli import run_trainer
    from library.training.lora_target import LoRATarget

    events = work / "events.jsonl"
    events.unlink(missing_ok=True)
    path = work / "bench.toml"
    path.write_text(toml.dumps(options), encoding="utf-8")
    os.environ["SDTRAIN_PROGRESS_FILE"] = str(events)
    AcceleratorState._reset_state(True)
    try:
        if run_trainer("network", LoRATarget, ["--config_file", str(path)]) != 0:
            raise SystemExit("the bench run failed")
    finally:
        del os.environ["SDTRAIN_PROGRESS_FILE"]
    times = [json.loads(line)["time"] for line in events.read_text().splitlines() if '"step"' in line]
    gaps = [b - a for a, b in zip(times[2:], times[3:], strict=False)]
    return statistics.median(gaps)


def part_one(work: Path, steps: int) -> None:
    small = small_model(work / "small-model")
    cases = [
        ("tiny, 2 x 128x128", base("builtin:tiny", make_dataset(work / "d128", 128), work / "o1",
                                   resolution=128, train_batch_size=2)),
        ("small, 1 x 256x256", base(str(small), make_dataset(work / "d256", 256), work / "o2", resolution=256,
                                    train_batch_size=1)),
        ("small, 2 x 256x256, checkpointing", base(str(small), work / "d256", work / "o3", resolution=256,
                                                   train_batch_size=2, gradient_checkpointing=True)),
    ]
    print(f"{'case':<36} {'estimated s/step':>17} {'measured s/step':>16} {'ratio':>6}  estimated peak")
    for name, options in cases:
        options["max_train_steps"] = steps
        est = estimate(options)
        real = measured_seconds_per_step(options, work)
        print(f"{name:<36} {est.seconds_per_step:>17.3f} {real:>16.3f} {est.seconds_per_step / real:>6.2f}  "
              f"{est.peak_bytes / 2**20:.0f} MiB ({est.flops_per_step / 1e9:.1f} GFLOP, {est.ops_per_step} ops)")


def part_two(work: Path) -> None:
    from library.training.estimate.device import DeviceInfo

    model = str(sd15_model(Path(tempfile.gettempdir()) / "sdtrain-bench-sd15"))
    data = make_dataset(work / "d512", 512)
    gpu = DeviceInfo("cuda", "a 12 GiB GPU", 12 * GIB)
    lora = dict(resolution=512, mixed_precision="fp16", optimizer_type="AdamW8bit", network_dim=32,
                network_alpha=16)
    cases = [
        ("LoRA dim 32, 1 x 512, fp16, AdamW8bit", "network", lora),
        ("  + gradient checkpointing", "network", {**lora, "gradient_checkpointing": True}),
        ("  batch 4", "network", {**lora, "train_batch_size": 4}),
        ("  batch 4 + gradient checkpointing", "network", {**lora, "train_batch_size": 4,
                                                            "gradient_checkpointing": True}),
        ("DreamBooth, 1 x 512, fp16, AdamW8bit", "db", {"resolution": 512, "mixed_precision": "fp16",
                                                         "optimizer_type": "AdamW8bit"}),
        ("  + full_fp16, checkpointing, UNet only", "db",
         {"resolution": 512, "mixed_precision": "fp16", "optimizer_type": "AdamW8bit", "full_fp16": True,
          "gradient_checkpointing": True, "stop_text_encoder_training": 0}),
    ]
    print(f"\nSD1.5 shapes on a GPU (estimate only)\n{'config':<42} {'peak GiB':>8}  weights / trained+grads+state "
          "/ activations")
    for name, trainer, extra in cases:
        options = base(model, data, work / "o-sd15", max_train_steps=10, **extra)
        if trainer == "db":
            for key in ("network_dim", "network_alpha"):
                options.pop(key)
        est = estimate(options, gpu, trainer)
        frozen = sum(x.bytes for x in est.resident if "frozen" in x.label)
        trained = sum(x.bytes for x in est.resident if "frozen" not in x.label)
        step = sum(x.bytes for x in est.step)
        print(f"{name:<42} {est.peak_bytes / GIB:>8.2f}  {frozen / GIB:.2f} / {trained / GIB:.2f} / "
              f"{step / GIB:.2f}   ({est.flops_per_step / 1e12:.2f} TFLOP per step)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="training steps per measured case")
    parser.add_argument("--sd15", action="store_true", help="also estimate SD1.5-sized configs (writes ~4 GB)")
    args = parser.parse_args()
    import logging

    logging.disable(logging.WARNING)
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="bench-estimate-") as folder:
        work = Path(folder)
        part_one(work, args.steps)
        if args.sd15:
            part_two(work)


if __name__ == "__main__":
    main()
