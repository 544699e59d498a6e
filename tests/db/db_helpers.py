"""Running small DreamBooth trainings in-process from a TOML config, and reading their results."""

from __future__ import annotations

from pathlib import Path

import toml
import torch

from library.cli import run_trainer
from library.training.db_target import DreamBoothTarget


def db_options(dataset: Path, out: Path, **overrides) -> dict:
    """A small DreamBooth config on the built-in tiny model with the tiny dataset's train and reg folders."""
    opts = {
        "pretrained_model_name_or_path": "builtin:tiny",
        "train_data_dir": str(dataset / "train"),
        "reg_data_dir": str(dataset / "reg"),
        "output_dir": str(out),
        "output_name": "db",
        "resolution": 64,
        "train_batch_size": 2,
        "max_train_steps": 4,
        "learning_rate": 1e-3,
        "seed": 1,
        "max_data_loader_n_workers": 1,
    }
    opts.update(overrides)
    return {k: v for k, v in opts.items() if v is not None}


def train_db(
    tmp_path: Path, options: dict, extra_argv: list[str] | None = None
) -> tuple[int, DreamBoothTarget]:
    """Write ``options`` to a TOML, run the DreamBooth trainer on it in this process.

    Returns (exit code, the target: its ``_model`` holds the trained modules in memory).
    """
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    made: list[DreamBoothTarget] = []

    def make_target(config) -> DreamBoothTarget:
        made.append(DreamBoothTarget(config))
        return made[-1]

    path = tmp_path / f"db_config_{len(list(tmp_path.glob('db_config_*.toml')))}.toml"
    path.write_text(toml.dumps(options), encoding="utf-8")
    code = run_trainer("db", make_target, ["--config_file", str(path), *(extra_argv or [])])
    return code, (made[-1] if made else None)


def state_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)
