"""Safe resume: states hold no pickles, pickles in a state folder never run code, broken states are clear
errors (or, with resume_inexact, warnings), and a run without a seed resumes exactly."""

from __future__ import annotations

import json
import math
import pathlib
import pickle
import random
import shutil

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType

from library.training import safe_tree, state
from library.training.state import StateError, TrainPosition
from tests.training.helpers import base_options, read_lora, train


class _Payload:
    """Unpickling this creates ``marker``: stands in for code a crafted state would run."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _plant(path: pathlib.Path, marker: pathlib.Path, *, zip_format: bool = True) -> None:
    if zip_format:
        torch.save({"random_state": _Payload(marker), "step": 0}, path)
    else:
        path.write_bytes(pickle.dumps({"base_lrs": _Payload(marker)}))


def test_the_payload_really_runs_code(tmp_path):
    """The planted files are real exploits: a plain unpickle creates the marker."""
    marker = tmp_path / "ran"
    _plant(tmp_path / "evil.pkl", marker)
    torch.load(tmp_path / "evil.pkl", weights_only=False)
    assert marker.exists()


# -- the tree layout ------------------------------------------------------------------------------------------


def test_tree_round_trip_keeps_types_and_bits(tmp_path):
    value = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 3)}, 7: {}},
             "param_groups": [{"betas": (0.9, 0.999), "lr": 0.1 + 0.2, "eps": 1e-30, "nan": math.nan,
                               "inf": -math.inf, "zero": -0.0, "name": "unet", "fused": None, "flag": True,
                               "dtype": torch.bfloat16, "params": [0, 7], "big": 2**70}]}
    safe_tree.save_tree(tmp_path / "t.safetensors", value)
    back = safe_tree.load_tree(tmp_path / "t.safetensors")
    assert set(back["state"]) == {0, 7}
    assert torch.equal(back["state"][0]["exp_avg"], value["state"][0]["exp_avg"])
    group, saved = back["param_groups"][0], value["param_groups"][0]
    assert group["betas"] == (0.9, 0.999) and isinstance(group["betas"], tuple)
    assert group["lr"] == saved["lr"] and math.isnan(group["nan"]) and group["inf"] == -math.inf
    assert math.copysign(1, group["zero"]) == -1 and group["dtype"] is torch.bfloat16 and group["big"] == 2**70
    assert {k: v for k, v in group.items() if k not in ("nan",)} == {k: v for k, v in saved.items() if k != "nan"}


def test_tree_refuses_what_would_need_pickle(tmp_path):
    with pytest.raises(safe_tree.TreeError, match="param_groups"):
        safe_tree.save_tree(tmp_path / "t.safetensors", {"param_groups": [object()]})


def test_shared_tensors_are_saved_apart(tmp_path):
    base = torch.arange(6.0)
    safe_tree.save_tree(tmp_path / "t.safetensors", {"a": base, "b": base, "c": base.view(2, 3).t()})
    back = safe_tree.load_tree(tmp_path / "t.safetensors")
    assert torch.equal(back["a"], base) and torch.equal(back["c"], base.view(2, 3).t())


# -- save and load with a small accelerator -------------------------------------------------------------------


class _Parts:
    """A prepared model, optimizer and scheduler after one step, as the trainer registers them."""

    def __init__(self, seed: int = 0):
        AcceleratorState._reset_state(True)
        torch.manual_seed(seed)
        self.acc = Accelerator(cpu=True)
        model = torch.nn.Linear(3, 2)
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 / (s + 1))
        self.model, self.optimizer = self.acc.prepare(model, optimizer)
        self.acc.register_for_checkpointing(self.scheduler)

    def step(self) -> None:
        loss = self.model(torch.randn(4, 3)).pow(2).sum()
        self.acc.backward(loss)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad()

    def load(self, folder, **kw) -> TrainPosition:
        return state.load_state(self.acc, folder, self.acc.unwrap_model(self.model), **kw)


@pytest.fixture
def saved(tmp_path):
    """(folder, parts, draws): a state after one step, the objects that saved it, and the RNG draws after it."""
    parts = _Parts()
    parts.step()
    folder = tmp_path / "run-step00000001-state"
    state.save_state(parts.acc, folder, TrainPosition(1, 1, 1), seed=1234)
    draws = (torch.rand(3), random.random(), np.random.rand())
    return folder, parts, draws


def test_a_state_holds_no_pickles_and_restores_everything(saved):
    folder, parts, draws = saved
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["custom_checkpoint_0.safetensors", "model.safetensors", "optimizer.safetensors",
                     "random_states_0.safetensors", "train_state.json"]
    info = json.loads((folder / "train_state.json").read_text())
    assert info["seed"] == 1234 and info["format_version"] == state.FORMAT_VERSION

    fresh = _Parts(seed=99)
    assert fresh.load(folder) == TrainPosition(1, 1, 1)
    assert torch.equal(torch.rand(3), draws[0]) and (random.random(), np.random.rand()) == draws[1:]
    for a, b in zip(fresh.model.parameters(), parts.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert fresh.scheduler.state_dict() == parts.scheduler.state_dict()
    ours, theirs = fresh.optimizer.state_dict(), parts.optimizer.state_dict()
    assert ours["param_groups"] == theirs["param_groups"]
    for key in theirs["state"]:
        for name, value in theirs["state"][key].items():
            assert torch.equal(ours["state"][key][name], value), name
    assert state.seed_for_resume(None, folder) == 1234


def _legacy(folder: pathlib.Path) -> pathlib.Path:
    """Rewrite ``folder`` as earlier versions wrote it: accelerate's save_state files, no seed."""
    parts = _Parts()
    parts.step()
    shutil.rmtree(folder)
    parts.acc.save_state(str(folder))
    (folder / "train_state.json").write_text(json.dumps({"current_epoch": 1, "current_step": 1, "epoch": 1,
                                                         "step": 1, "batches_in_epoch": 1}))
    return folder


def test_an_earlier_versions_state_needs_allow_unsafe_pickle_for_its_rng_file(saved):
    folder = _legacy(saved[0])
    assert (folder / "random_states_0.pkl").exists() and (folder / "optimizer.bin").exists()
    with pytest.raises(StateError, match=r"random_states_0\.pkl.*allow_unsafe_pickle.*resume_inexact"):
        _Parts(seed=3).load(folder)
    assert _Parts(seed=3).load(folder, allow_unsafe_pickle=True) == TrainPosition(1, 1, 1)
    assert _Parts(seed=3).load(folder, inexact=True) == TrainPosition(1, 1, 1)  # without its RNG state
    assert state.seed_for_resume(None, folder) is None


@pytest.mark.parametrize("name,zip_format", [("random_states_0.pkl", True), ("custom_checkpoint_0.pkl", False),
                                             ("optimizer.bin", True)])
def test_a_planted_pickle_never_runs(saved, tmp_path, name, zip_format):
    folder = _legacy(saved[0])
    marker = tmp_path / "ran"
    _plant(folder / name, marker, zip_format=zip_format)
    with pytest.raises(StateError, match=rf"refused to load .*{name}.*may run code.*allow_unsafe_pickle"):
        _Parts().load(folder)
    _Parts().load(folder, inexact=True)  # skipped with a warning, still not run
    assert not marker.exists()


def test_pickles_beside_our_files_are_never_read(saved, tmp_path):
    folder = saved[0]
    marker = tmp_path / "ran"
    for name in ("random_states_0.pkl", "custom_checkpoint_0.pkl", "optimizer.bin", "scheduler.bin"):
        _plant(folder / name, marker)
    _Parts().load(folder, allow_unsafe_pickle=True)
    assert not marker.exists()


def _break_json(folder):
    (folder / "train_state.json").write_text("{not json")


def _drop_step(folder):
    info = json.loads((folder / "train_state.json").read_text())
    del info["step"]
    (folder / "train_state.json").write_text(json.dumps(info))


def _truncate(name):
    def apply(folder):
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])
    return apply


def _remove(name):
    return lambda folder: (folder / name).unlink()


CORRUPTIONS = {
    "broken json": (_break_json, "train_state.json", True),
    "missing key": (_drop_step, "train_state.json", True),
    "no optimizer": (_remove("optimizer.safetensors"), "optimizer.safetensors", True),
    "truncated optimizer": (_truncate("optimizer.safetensors"), "optimizer.safetensors", True),
    "truncated rng": (_truncate("random_states_0.safetensors"), "random_states_0.safetensors", True),
    "no scheduler": (_remove("custom_checkpoint_0.safetensors"), "custom_checkpoint_0.safetensors", True),
    "truncated model": (_truncate("model.safetensors"), "model.safetensors", False),
    "no model": (_remove("model.safetensors"), "model.safetensors", False),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_a_broken_state_is_a_clear_error_or_with_resume_inexact_a_warning(saved, case, caplog):
    folder, parts, _ = saved
    corrupt, name, skippable = CORRUPTIONS[case]
    corrupt(folder)
    with pytest.raises(StateError, match=rf"{name}.*(resume_inexact|cannot be skipped)") as error:
        _Parts().load(folder)
    assert str(folder / name) in str(error.value)
    if not skippable:
        with pytest.raises(StateError, match="cannot be skipped"):
            _Parts().load(folder, inexact=True)
        return
    fresh = _Parts()
    fresh.load(folder, inexact=True)
    assert "no longer bit-exact" in caplog.text
    if case == "no scheduler":  # stepped to the state's position instead
        assert fresh.scheduler.last_epoch == parts.scheduler.last_epoch


# -- whole runs -----------------------------------------------------------------------------------------------

RUN = dict(max_train_steps=4, save_every_n_steps=2, save_state=True, shuffle_caption=True, flip_aug=True,
           caption_dropout_rate=0.3, network_dropout=0.1)


@pytest.mark.slow
def test_resume_without_a_seed_is_exact_and_the_end_state_is_written(tmp_path, tiny_dataset):
    assert train(tmp_path, base_options(tiny_dataset, tmp_path / "first", seed=None, **RUN)) == 0
    first, meta = read_lora(tmp_path / "first" / "lora.safetensors")  # the uninterrupted run, its seed drawn
    state_dir = tmp_path / "first" / "lora-step00000002-state"
    seed = json.loads((state_dir / "train_state.json").read_text())["seed"]
    assert isinstance(seed, int) and meta["ss_seed"] == str(seed)
    end = json.loads((tmp_path / "first" / "lora-state" / "train_state.json").read_text())
    assert end["step"] == 4 and end["seed"] == seed  # save_state also saves when training ends

    opts = base_options(tiny_dataset, tmp_path / "resumed", seed=None, resume=str(state_dir), **RUN)
    assert train(tmp_path, opts) == 0
    resumed = read_lora(tmp_path / "resumed" / "lora.safetensors")[0]
    assert resumed.keys() == first.keys()
    for key in first:
        assert torch.equal(resumed[key], first[key]), key


@pytest.fixture
def legacy_run(tmp_path, tiny_dataset, monkeypatch):
    """A run (seed 5) whose step-2 state is written as earlier versions did (accelerate's pickles)."""
    with monkeypatch.context() as patch:
        patch.setattr(state, "SHARDED", (DistributedType.NO,))  # save through accelerate.save_state
        assert train(tmp_path, base_options(tiny_dataset, tmp_path / "old", seed=5, **RUN)) == 0
    folder = tmp_path / "old" / "lora-step00000002-state"
    assert (folder / "random_states_0.pkl").exists()
    info = json.loads((folder / "train_state.json").read_text())
    (folder / "train_state.json").write_text(json.dumps({k: info[k] for k in (
        "current_epoch", "current_step", "epoch", "step", "batches_in_epoch")}))
    return folder, read_lora(tmp_path / "old" / "lora.safetensors")[0]


@pytest.mark.slow
def test_an_earlier_versions_state_resumes_exactly_with_allow_unsafe_pickle(tmp_path, tiny_dataset, legacy_run,
                                                                           capsys):
    folder, straight = legacy_run
    opts = base_options(tiny_dataset, tmp_path / "r", seed=5, resume=str(folder), **RUN)
    assert train(tmp_path, opts) == 2
    assert "random_states_0.pkl" in capsys.readouterr().err
    assert train(tmp_path, opts, extra_argv=["--allow_unsafe_pickle"]) == 0
    resumed = read_lora(tmp_path / "r" / "lora.safetensors")[0]
    for key in straight:
        assert torch.equal(resumed[key], straight[key]), key


@pytest.mark.slow
def test_a_crafted_state_folder_runs_no_code(tmp_path, tiny_dataset, legacy_run, capsys):
    folder = legacy_run[0]
    marker = tmp_path / "ran"
    _plant(folder / "random_states_0.pkl", marker)
    opts = base_options(tiny_dataset, tmp_path / "r", seed=5, resume=str(folder), **RUN)
    assert train(tmp_path, opts) == 2
    err = capsys.readouterr().err
    assert "refused to load" in err and "random_states_0.pkl" in err and "--allow_unsafe_pickle" in err
    assert "Traceback" not in err
    assert train(tmp_path, opts, extra_argv=["--resume_inexact"]) == 0
    assert not marker.exists()


@pytest.mark.slow
def test_a_broken_train_state_json_is_named_before_the_model_loads(tmp_path, tiny_dataset, capsys):
    folder = tmp_path / "lora-step00000002-state"
    folder.mkdir()
    (folder / "train_state.json").write_text("{")
    assert train(tmp_path, base_options(tiny_dataset, tmp_path / "r", resume=str(folder))) == 2
    err = capsys.readouterr().err
    assert "train_state.json" in err and "resume_inexact" in err and "Traceback" not in err
