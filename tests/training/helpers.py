"""Running small trainings in-process from a TOML config, and reading their results."""

from __future__ import annotations

from pathlib import Path

import toml
import torch
from safetensors import safe_open

from library.cli import run_trainer
from library.training.data_setup import build_dataset
from library.training.step import StepSettings, diffusion_loss


def base_options(dataset: Path, out: Path, **overrides) -> dict:
    opts = {
        "pretrained_model_name_or_path": "builtin:tiny",
        "train_data_dir": str(dataset / "train"),
        "output_dir": str(out),
        "output_name": "lora",
        "resolution": 64,
        "train_batch_size": 2,
        "max_train_steps": 4,
        "learning_rate": 1e-3,
        "seed": 1,
        "network_dim": 4,
        "network_alpha": 2,
        "max_data_loader_n_workers": 1,
    }
    opts.update(overrides)
    return {k: v for k, v in opts.items() if v is not None}


def train(tmp_path: Path, options: dict, trainer: str = "network", extra_argv: list[str] | None = None) -> int:
    """Write ``options`` to a TOML and run the trainer on it in this process; returns the exit code."""
    from accelerate.state import AcceleratorState

    from library.training.lora_target import LoRATarget

    AcceleratorState._reset_state(True)
    path = tmp_path / f"config_{len(list(tmp_path.glob('config_*.toml')))}.toml"
    path.write_text(toml.dumps(options), encoding="utf-8")
    return run_trainer(trainer, LoRATarget, ["--config_file", str(path), *(extra_argv or [])])


def read_lora(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def held_out_loss(model, config, draws: int = 6) -> float:
    """Mean loss over every batch of epoch 1 with fixed noise and timesteps (independent of training)."""
    dataset = build_dataset(config)
    settings = StepSettings.from_config(config, model)
    total, count = 0.0, 0
    with torch.no_grad():
        for i, refs in enumerate(dataset.epoch_batches(1, 0)):
            batch = dataset.load_batch(refs, epoch=1, seed=0, step=i)
            for d in range(draws):
                gen = torch.Generator().manual_seed(1000 * i + d)
                total += diffusion_loss(model, batch, settings, gen, False).item()
                count += 1
    return total / count
