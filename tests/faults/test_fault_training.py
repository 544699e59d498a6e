"""Faults during real (tiny) trainings: kill -9 during latent caching and during a state save, a full disk
during the final save, SIGTERM mid-run and during the final save, NaN weights after a step."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import toml
import torch

from tests.training.helpers import base_options, read_lora, train

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

#: runs the LoRA trainer on argv[1] after executing the hook source in argv[2] (patches made in the child)
RUN_WITH_HOOK = textwrap.dedent("""
    import sys
    exec(sys.argv[2])
    from library.cli import run_trainer
    from library.training.lora_target import LoRATarget
    sys.exit(run_trainer("network", LoRATarget, ["--config_file", sys.argv[1]]))
""")


def _start(tmp_path: Path, options: dict, hook: str = "", **popen) -> subprocess.Popen:
    config = tmp_path / f"run_{len(list(tmp_path.glob('run_*.toml')))}.toml"
    config.write_text(toml.dumps(options), encoding="utf-8")
    return subprocess.Popen([sys.executable, "-c", RUN_WITH_HOOK, str(config), hook], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **popen.pop("env", {})},
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **popen)


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.05)


def _kill_9(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)


def _own_dataset(tiny_dataset: Path, tmp_path: Path) -> Path:
    """A copy of the dataset (latent caches are written beside the pictures)."""
    copy = tmp_path / "dataset"
    shutil.copytree(tiny_dataset / "train", copy / "train")
    return copy


def test_kill_9_during_latent_caching_leaves_no_broken_cache_and_the_next_run_completes(tmp_path, tiny_dataset):
    data = _own_dataset(tiny_dataset, tmp_path)
    folder = next((data / "train").iterdir())
    # each cache file's data is written, then the write pauses inside the temporary file (before its rename)
    hook = textwrap.dedent("""
        import time, numpy
        real = numpy.savez
        def slow_savez(f, **arrays):
            real(f, **arrays)
            f.flush()
            time.sleep(0.5)
        numpy.savez = slow_savez
    """)
    opts = base_options(data, tmp_path / "out", cache_latents_to_disk=True, max_train_steps=2)
    proc = _start(tmp_path, opts, hook)
    _wait_for(lambda: len(list(folder.glob("*.npz"))) >= 1 and len(list(folder.glob(".*.tmp"))) >= 1, proc)
    _kill_9(proc)
    cached = sorted(folder.glob("*.npz"))
    assert 1 <= len(cached) < 4
    for path in cached:  # every cache under a real name is whole
        with np.load(path, allow_pickle=False) as data_file:
            assert data_file["latents"].shape[0] == 4 and np.isfinite(data_file["latents"]).all()
    assert train(tmp_path, opts) == 0
    assert len(list(folder.glob("*.npz"))) == 4
    assert (tmp_path / "out" / "lora.safetensors").exists()


def test_kill_9_during_a_state_save_then_the_newest_state_resumes(tmp_path, tiny_dataset, capsys):
    out = tmp_path / "out"
    hook = textwrap.dedent("""
        import time
        from library.training import safe_tree
        real = safe_tree.save_tree
        def slow_save_tree(path, value):
            real(path, value)
            time.sleep(0.3)
        safe_tree.save_tree = slow_save_tree
    """)
    opts = base_options(tiny_dataset, out, max_train_steps=40, save_every_n_steps=1, save_state=True)
    proc = _start(tmp_path, opts, hook)
    _wait_for(lambda: (out / "lora-step00000002-state" / "train_state.json").exists()
              and any(out.glob("lora-step*-state.tmp")), proc)
    _kill_9(proc)
    assert any(out.glob("lora-step*-state.tmp"))  # the kill landed inside a state save
    states = sorted(p for p in out.glob("lora-step*-state") if p.is_dir())
    newest = states[-1]
    step = json.loads((newest / "train_state.json").read_text())["step"]
    assert train(tmp_path, {**opts, "resume": str(newest), "max_train_steps": step + 2, "save_state": False}) == 0
    err = capsys.readouterr().err
    assert f"resumed from {newest.name} at epoch" in err and f"step {step}" in err
    assert "removed leftover temporary file" in err and not list(out.glob("*.tmp"))
    assert int(read_lora(out / "lora.safetensors")[1]["ss_steps"]) == step + 2


def _partial_write_then_enospc(real_save_file):
    def save_file(tensors, filename, metadata=None):
        real_save_file(tensors, filename, metadata=metadata)
        size = os.path.getsize(filename)
        os.truncate(filename, size // 2)  # part of the temporary file was written when the disk filled up
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    return save_file


def _one_paragraph_error(err: str) -> str:
    assert "Traceback" not in err, err[-3000:]
    lines = re.findall(r"error: [^\r\n]*", err)  # a progress bar may precede it on its line
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def test_disk_full_during_the_final_save_is_reported_and_the_old_file_survives(tmp_path, tiny_dataset, capsys,
                                                                               monkeypatch):
    import safetensors.torch

    out = tmp_path / "out"
    opts = base_options(tiny_dataset, out, max_train_steps=2)
    assert train(tmp_path, opts) == 0
    before = read_lora(out / "lora.safetensors")[0]
    capsys.readouterr()
    monkeypatch.setattr(safetensors.torch, "save_file", _partial_write_then_enospc(safetensors.torch.save_file))
    assert train(tmp_path, {**opts, "learning_rate": 1e-2}) == 2
    line = _one_paragraph_error(capsys.readouterr().err)
    assert "No space left on device" in line and "the disk is full" in line
    after = read_lora(out / "lora.safetensors")[0]
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert sorted(p.name for p in out.iterdir()) == ["lora.safetensors"]


def test_a_full_tmpfs_during_the_final_save_is_reported_and_the_old_file_survives(tmp_path, tiny_dataset):
    first = tmp_path / "first"
    opts = base_options(tiny_dataset, first, max_train_steps=2)
    assert train(tmp_path, opts) == 0
    size = (first / "lora.safetensors").stat().st_size
    mount = tmp_path / "small"
    mount.mkdir()
    limit = (size * 3 // 2 // 4096 + 1) * 4096  # room for the old file, not for the new one beside it
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={limit}", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or result.returncode}); the simulated "
                    "ENOSPC test covers the same path")
    try:
        out = mount / "out"
        out.mkdir()
        shutil.copy(first / "lora.safetensors", out / "lora.safetensors")
        proc = _start(tmp_path, {**opts, "output_dir": str(out), "learning_rate": 1e-2})
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 2, err[-3000:]
        line = _one_paragraph_error(err)
        assert "No space left on device" in line and str(out / "lora.safetensors") in line
        assert sorted(p.name for p in out.iterdir()) == ["lora.safetensors"]  # no partial temporary file
        before, after = read_lora(first / "lora.safetensors")[0], read_lora(out / "lora.safetensors")[0]
        assert all(torch.equal(after[k], before[k]) for k in before)
    finally:
        _unmount(mount)


def _unmount(mount: Path) -> None:
    """umount, retried while the run's last processes let go of the mount, else detached lazily."""
    for _ in range(10):
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode == 0:
            return
        time.sleep(0.5)
    subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.fixture
def after_step():
    """Call ``after_step.action(n)`` right after each optimizer step ``n`` of the trainings in this test."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    calls = {"n": 0}

    def hook(optimizer, args, kwargs):
        calls["n"] += 1
        hook.action(optimizer, calls["n"])

    hook.action = lambda optimizer, n: None
    handle = register_optimizer_step_post_hook(hook)
    yield hook
    handle.remove()


def test_sigterm_mid_run_saves_exits_0_and_resume_continues(tmp_path, tiny_dataset, capsys, after_step):
    out = tmp_path / "out"
    after_step.action = lambda optimizer, n: n == 3 and os.kill(os.getpid(), signal.SIGTERM)
    opts = base_options(tiny_dataset, out, max_train_steps=5000, save_state_on_train_end=True)
    assert train(tmp_path, opts) == 0
    assert "stop requested" in capsys.readouterr().err
    assert int(read_lora(out / "lora.safetensors")[1]["ss_steps"]) == 3
    after_step.action = lambda optimizer, n: None
    assert train(tmp_path, {**opts, "resume": str(out / "lora-state"), "max_train_steps": 5,
                            "save_state_on_train_end": False}) == 0
    assert "resumed from lora-state at epoch 1, step 3" in capsys.readouterr().err
    assert int(read_lora(out / "lora.safetensors")[1]["ss_steps"]) == 5


def test_stop_signals_during_the_final_save_let_it_finish(tmp_path, tiny_dataset, capsys, monkeypatch):
    import safetensors.torch

    out = tmp_path / "out"
    real = safetensors.torch.save_file

    def save_file_under_signals(tensors, filename, metadata=None):
        if os.path.basename(filename).startswith(".lora.safetensors."):  # the final file
            # without the trainer's handler a SIGTERM would end this test process itself
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None), "no stop handler in the save"
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGTERM, signal.SIGINT):  # Stop, Ctrl-C twice
                os.kill(os.getpid(), sig)
                time.sleep(0.05)  # the handler runs in between
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file_under_signals)
    assert train(tmp_path, base_options(tiny_dataset, out, max_train_steps=3)) == 0
    assert "stop requested during a save: finishing the save first" in capsys.readouterr().err
    assert int(read_lora(out / "lora.safetensors")[1]["ss_steps"]) == 3
    assert sorted(p.name for p in out.iterdir()) == ["lora.safetensors"]


def test_nan_weights_after_the_last_step_stop_the_run_without_saving_them(tmp_path, tiny_dataset, capsys,
                                                                          after_step):
    # the loss of the last step is finite (computed before the step): only the weights check catches it
    def poison(optimizer, n):
        if n == 4:
            with torch.no_grad():
                optimizer.param_groups[0]["params"][0].view(-1)[0] = float("nan")

    after_step.action = poison
    out = tmp_path / "out"
    assert train(tmp_path, base_options(tiny_dataset, out, max_train_steps=4, save_every_n_steps=2)) == 2
    line = _one_paragraph_error(capsys.readouterr().err)
    assert "the trained weights became NaN or infinite in the optimizer step 4" in line
    assert "lora_" in line and "the last saved file, lora-step00000002.safetensors, is from step 2" in line
    assert sorted(p.name for p in out.iterdir()) == ["lora-step00000002.safetensors"]
    saved = read_lora(out / "lora-step00000002.safetensors")[0]
    assert all(torch.isfinite(t).all() for t in saved.values())
