"""Validation loss (validation_split & co.): the hold-out draw, the fixed timesteps, the logs, and that
validating never changes the training run."""

from __future__ import annotations

import json

import pytest
import torch

from library.config.load import config_from_values
from library.errors import UserError
from library.training.data_setup import build_datasets
from library.training.validation import validation_timesteps
from tests.training.helpers import base_options, read_lora, train


def options(tiny_dataset, out, **overrides):
    return base_options(tiny_dataset, out, **{"validation_split": 0.25, "seed": 3, **overrides})


def test_timesteps_are_four_evenly_spaced_inside_the_range():
    assert validation_timesteps(None, None, 1000) == [200, 400, 600, 800]
    assert validation_timesteps(100, 500, 1000) == [180, 260, 340, 420]


def test_split_holds_out_a_share_of_each_training_folder_and_never_reg(tiny_dataset, tmp_path):
    values = options(tiny_dataset, tmp_path, reg_data_dir=str(tiny_dataset / "reg"))
    train_set, held = build_datasets(config_from_values(values, "network"))
    assert len(held.items) == 1  # int(4 x 0.25) of "2_sks disc"; the reg folder is never split
    assert held.items[0].repeats == 1 and not held.items[0].is_reg
    train_paths = {it.path for it in train_set.items}
    assert held.items[0].path not in train_paths and len(train_paths) == 3 + 2  # 3 training + 2 reg
    assert train_set.num_train_images == 3 * 2  # the held-out picture no longer counts (repeats 2)
    again = build_datasets(config_from_values(values, "network"))[1]
    assert again.items[0].path == held.items[0].path  # a pure function of the seed
    draws = {build_datasets(config_from_values({**values, "validation_seed": s}, "network"))[1].items[0].path
             for s in range(12)}
    assert len(draws) > 1  # validation_seed changes the draw
    assert build_datasets(config_from_values({**values, "validation_split": 0.0}, "network"))[1] is None


def test_dataset_config_takes_validation_keys_and_checks_them(tiny_dataset, tmp_path):
    def dataset_file(split):
        path = tmp_path / f"dataset_{split}.toml"
        path.write_text(f"[general]\nvalidation_split = {split}\nvalidation_seed = 7\n[[datasets]]\nresolution = 64\n"
                        f"[[datasets.subsets]]\nimage_dir = '{tiny_dataset / 'train' / '2_sks disc'}'\n"
                        "num_repeats = 2\n", encoding="utf-8")
        values = base_options(tiny_dataset, tmp_path, dataset_config=str(path))
        values.pop("train_data_dir")
        return config_from_values(values, "network")

    train_set, held = build_datasets(dataset_file(0.5))
    assert len(held.items) == 2 and len(train_set.items) == 2
    with pytest.raises(UserError, match="validation_split"):
        build_datasets(dataset_file(1.0))


@pytest.mark.slow  # a training run: longer than the fast tier's limit
def test_validating_does_not_change_training_and_is_logged(tiny_dataset, tmp_path, monkeypatch):
    # without validation (none due: every 1000 epochs) and with validation after every step
    quiet = options(tiny_dataset, tmp_path / "quiet", validate_every_n_epochs=1000, max_train_steps=6,
                    shuffle_caption=True, flip_aug=True, network_dropout=0.1)
    assert train(tmp_path, quiet) == 0
    events = tmp_path / "events.jsonl"
    monkeypatch.setenv("SDTRAIN_PROGRESS_FILE", str(events))
    busy = {**quiet, "output_dir": str(tmp_path / "busy"), "validate_every_n_steps": 1,
            "validate_every_n_epochs": 1, "logging_dir": str(tmp_path / "logs")}
    assert train(tmp_path, busy) == 0
    a, _ = read_lora(tmp_path / "quiet" / "lora.safetensors")
    b, meta = read_lora(tmp_path / "busy" / "lora.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert meta["ss_validation_split"] == "0.25" and meta["ss_num_validation_images"] == "1"

    records = [json.loads(line) for line in events.read_text().splitlines()]
    validations = [r for r in records if r["event"] == "validation"]
    assert [r["step"] for r in validations if r["kind"] == "step"] == [1, 2, 3, 4, 5, 6]
    losses = [r["loss"] for r in validations]
    assert all(0 < v < 10 for v in losses) and len(set(losses)) > 1  # the weights move, so does the loss

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(next((tmp_path / "logs").rglob("events.out.tfevents.*")).parent))
    acc.Reload()
    steps = acc.Scalars("loss/validation/step_average")
    assert [e.step for e in steps] == [1, 2, 3, 4, 5, 6]
    assert [round(e.value, 5) for e in steps] == [round(r["loss"], 5) for r in validations if r["kind"] == "step"]
    epochs = acc.Scalars("loss/validation/epoch_average")
    assert len(epochs) >= 1 and "loss/validation/step_divergence" in acc.Tags()["scalars"]


def test_validation_loss_is_deterministic(tiny_dataset, tmp_path):
    from library.training.lora_target import LoRATarget
    from library.training.setup import load_model
    from library.training.step import StepSettings, diffusion_loss
    from library.training.validation import Validator

    config = config_from_values(options(tiny_dataset, tmp_path, validation_split=0.5), "network")
    _, held = build_datasets(config)
    model = load_model(config)
    target = LoRATarget(config)
    target.attach(model, config)
    validator = Validator(config, held, StepSettings.from_config(config, model), 1000, config.seed)

    def compute(batch, generator, step_settings):
        return diffusion_loss(model, batch, step_settings, generator, False)

    first = validator.loss(compute, target.modules())
    assert validator.loss(compute, target.modules()) == first
    assert target.network.training  # the train flag comes back after the evaluation
    assert validator.due_at_epoch(1) and not validator.due_at_step(3)  # epoch by default, steps when asked


def test_gui_plots_the_validation_loss():
    from library.gui.jobs import RunView, apply_events
    from library.gui.training_tab import loss_frame

    view = apply_events(RunView(), [
        {"event": "step", "step": 1, "total": 2, "loss": 1.0, "avg_loss": 1.0, "lr": 0.1},
        {"event": "validation", "step": 1, "loss": 0.9, "kind": "step"},
    ])
    frame = loss_frame(view)
    assert frame[frame.series == "validation"].value.tolist() == [0.9]
