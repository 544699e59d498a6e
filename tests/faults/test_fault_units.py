"""The pieces the fault tests rely on, in isolation: stop signals during a save, the NaN-weights check, the
clean-up of killed state saves."""

from __future__ import annotations

import json
import logging
import signal
import subprocess

import pytest
import torch

from library.training import state
from library.training.loop import StopRequest, WeightCheck


def test_a_second_ctrl_c_interrupts_a_step_but_never_a_save():
    stop = StopRequest()
    stop._handle(signal.SIGTERM, None)
    with stop.during_save():
        stop._handle(signal.SIGINT, None)  # would raise KeyboardInterrupt outside a save
        stop._handle(signal.SIGTERM, None)
    assert stop.requested
    with pytest.raises(KeyboardInterrupt):
        stop._handle(signal.SIGINT, None)


def test_weight_check_finds_nan_and_inf_and_names_them():
    module = torch.nn.ModuleDict({"a": torch.nn.Linear(3, 2), "b": torch.nn.Linear(2, 2).half()})
    module["a"].bias.requires_grad_(False)
    check = WeightCheck(module)
    assert bool(check.finite()) and check.broken() == []
    with torch.no_grad():
        module["b"].weight[0, 1] = float("inf")
        module["a"].bias[0] = float("nan")  # not trained: not checked
    assert not bool(check.finite()) and check.broken() == ["b.weight"]
    with torch.no_grad():
        module["b"].weight.fill_(1)
        module["a"].weight[1, 1] = float("nan")
    assert check.broken() == ["a.weight"]


def test_weights_too_large_for_the_norm_are_not_called_broken():
    module = torch.nn.Linear(4, 4)
    with torch.no_grad():
        module.weight.fill_(1e30)  # the 2-norm overflows to inf, the values are finite
    check = WeightCheck(module)
    assert not bool(check.finite()) and check.broken() == []


def _state_tmp(folder, name, complete: bool):
    path = folder / f"{name}.tmp"
    path.mkdir()
    (path / "model.safetensors").write_bytes(b"x")
    if complete:
        (path / state.STATE_FILE).write_text(json.dumps({"step": 4}))
    return path


def test_killed_state_saves_are_removed_or_completed(tmp_path, caplog):
    (tmp_path / "lora-state").mkdir()
    (tmp_path / "lora-state" / state.STATE_FILE).write_text(json.dumps({"step": 2}))
    _state_tmp(tmp_path, "lora-state", complete=True)  # newer than lora-state: it takes its place
    _state_tmp(tmp_path, "lora-step00000006-state", complete=False)
    _state_tmp(tmp_path, "lora-000003-state", complete=True)
    _state_tmp(tmp_path, "other-state", complete=False)  # another run's: left alone
    (tmp_path / "lora-notes-state.tmp").mkdir()  # not one of the state names
    with caplog.at_level(logging.INFO, logger="library.training.state"):
        done = state.remove_leftovers(tmp_path, "lora")
    assert len(done) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "lora-000003-state", "lora-notes-state.tmp", "lora-state", "other-state.tmp"]
    assert json.loads((tmp_path / "lora-state" / state.STATE_FILE).read_text()) == {"step": 4}
    assert "removed leftover temporary file" in caplog.text and "lora-step00000006-state.tmp" in caplog.text


def test_state_names_with_regex_characters_are_matched_literally(tmp_path):
    _state_tmp(tmp_path, "a.b-state", complete=False)
    _state_tmp(tmp_path, "axb-state", complete=False)
    state.remove_leftovers(tmp_path, "a.b")
    assert [p.name for p in tmp_path.iterdir()] == ["axb-state.tmp"]


def test_dead_process_ids_are_told_from_live_ones():
    from library.util.atomic import _alive

    proc = subprocess.Popen(["true"])
    proc.wait()
    assert not _alive(proc.pid) and _alive(1) and not _alive(0)
