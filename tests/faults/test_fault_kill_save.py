"""kill -9 during a save, at several moments: the name holds the old complete file or the new complete one,
never a broken one, and the next start removes what the killed save left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from safetensors import safe_open

from library.util.atomic import remove_leftovers

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

#: saves version 0, 1, 2, ... of a 24 MB file (every value = the version, also in the metadata) and a folder
#: of two such files, forever, through atomic_path / atomic_folder and safetensors' writer (the one the
#: trainers use; the numpy face starts in a fraction of torch's import time). Prints "ready" once version 0
#: of both is in place, then "writing" as each write into a temporary file begins.
WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from safetensors.numpy import save_file
    from library.util.atomic import atomic_folder, atomic_path
    target, folder = sys.argv[1], sys.argv[2]
    version = 0
    while True:
        arrays = {"w": np.full(6_000_000, version, np.float32), "v": np.full(7, version, np.float32)}
        meta = {"version": str(version)}
        with atomic_path(target) as tmp:
            if version:
                print("writing", flush=True)
            save_file(arrays, str(tmp), metadata=meta)
        with atomic_folder(folder) as tmp:
            for part in ("a", "b"):
                save_file(arrays, f"{tmp}/{part}.safetensors", metadata=meta)
        if version == 0:
            print("ready", flush=True)
        version += 1
""")

#: the trainers' own writer (torch tensors, the sshs hashes): one trial
TORCH_WRITER = textwrap.dedent("""
    import sys, torch
    from library.util.safetensors_io import save_safetensors
    version = 0
    while True:
        tensors = {"w": torch.full((6_000_000,), float(version)), "v": torch.full((7,), float(version))}
        save_safetensors(sys.argv[1], tensors, {"version": str(version)})
        if version == 0:
            print("ready", flush=True)
        version += 1
""")


def _version(path: Path) -> int:
    """The version a saved file holds; fails unless the file is complete and consistent."""
    with safe_open(str(path), "pt") as f:
        version = int(f.metadata()["version"])
        for key in ("w", "v"):
            values = f.get_tensor(key)
            assert values.min().item() == values.max().item() == version, f"{path}: mixed content"
    return version


def _start(script: str, *args: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", script, *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close()


def test_kill_9_during_saves_leaves_old_or_new_complete_file(tmp_path):
    target, folder = tmp_path / "lora.safetensors", tmp_path / "model"
    landed_in_write = 0
    for delay_ms in (0, 5, 20, 50, 120):  # after a write into the temporary file began
        proc = _start(WRITER, target, folder)
        assert proc.stdout.readline().strip() == "writing"
        time.sleep(delay_ms / 1000)
        _kill(proc)
        leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
        landed_in_write += bool(leftovers)
        # whatever the moment: each name holds one whole version, the folder's two files the same one
        file_version = _version(target)
        assert _version(folder / "a.safetensors") == _version(folder / "b.safetensors")
        assert sorted(p.name for p in folder.iterdir()) == ["a.safetensors", "b.safetensors"]
        # the next start removes what the killed save left, and only that
        removed = remove_leftovers(tmp_path)
        assert sorted(p.name for p in removed) == leftovers
        assert sorted(p.name for p in tmp_path.iterdir()) == ["lora.safetensors", "model"]
        assert _version(target) == file_version
    assert landed_in_write >= 3, "most kills should land inside a write (a temporary file left)"


def test_kill_9_during_the_trainers_save_leaves_a_complete_file(tmp_path):
    target = tmp_path / "lora.safetensors"
    proc = _start(TORCH_WRITER, target)
    time.sleep(0.3)  # inside the hashing or the write of a later version
    _kill(proc)
    assert _version(target) >= 0
    remove_leftovers(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["lora.safetensors"]
