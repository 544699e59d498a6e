"""Atomic saves: the file appears whole or not at all, with the permissions of any new file."""

import logging
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import library.util.atomic as atomic
from library.util.atomic import atomic_folder, atomic_path, remove_leftovers, write_text_atomic


def _expected_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def test_safetensors_save_gets_usual_permissions(tmp_path):
    # safetensors' save_file writes the file itself with mode 0600; a LoRA saved for sharing must not be
    # unreadable to the other users of the machine.
    target = tmp_path / "lora.safetensors"
    with atomic_path(target) as tmp:
        save_file({"a": torch.zeros(2)}, str(tmp))
    assert target.stat().st_mode & 0o777 == _expected_mode()


def test_text_save_gets_usual_permissions(tmp_path):
    target = tmp_path / "config.toml"
    write_text_atomic(target, "a = 1\n")
    assert target.read_text() == "a = 1\n"
    assert target.stat().st_mode & 0o777 == _expected_mode()


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "config.toml"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.toml"]


# -- durability: fsync before the rename, the folder after it ----------------------------------------------


def _record_fsyncs(monkeypatch) -> list[tuple[str, str]]:
    """Patch os.fsync / os.replace to record ("fsync", path) and ("replace", target) in order."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def test_file_is_synced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    target = tmp_path / "lora.safetensors"
    events = _record_fsyncs(monkeypatch)
    with atomic_path(target) as tmp:
        save_file({"a": torch.zeros(2)}, str(tmp))
    assert [e[0] for e in events] == ["fsync", "replace", "fsync"]
    assert Path(events[0][1]).name.startswith(f".lora.safetensors.{os.getpid()}-")  # the temporary file
    assert events[1][1] == str(target)
    assert events[2][1] == str(tmp_path)


@pytest.mark.parametrize("one_step", [True, False], ids=["exchange", "two-renames"])
def test_folder_files_are_synced_once_each_before_the_swap(tmp_path, monkeypatch, one_step):
    """Linux swaps the folders in one step (renameat2's RENAME_EXCHANGE); elsewhere the old one is moved
    aside and the new one renamed into place. Either way every file is synced before the name changes."""
    if one_step and atomic._renameat2() is None:
        pytest.skip("no renameat2 on this system")
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    events = _record_fsyncs(monkeypatch)
    real_exchange = atomic.exchange

    def exchange(a, b):
        if not one_step:
            return False
        events.append(("exchange", str(b)))
        return real_exchange(a, b)

    monkeypatch.setattr(atomic, "exchange", exchange)
    with atomic_folder(target) as tmp:
        (tmp / "unet").mkdir()
        (tmp / "unet" / "weights.bin").write_bytes(b"1")
        (tmp / "index.json").write_text("{}")
    synced = [Path(p) for kind, p in events if kind == "fsync"]
    files = [p.name for p in synced if p.name in ("index.json", "weights.bin")]
    assert sorted(files) == ["index.json", "weights.bin"]  # one fsync per file
    renames = [i for i, e in enumerate(events) if e[0] in ("replace", "exchange")]
    if one_step:
        assert [events[i] for i in renames] == [("exchange", str(target))]
    else:
        assert [events[i][1] for i in renames] == [str(tmp_path / f".model.old-{os.getpid()}"), str(target)]
    assert all(e[0] == "fsync" for e in events[:renames[0]])  # all data synced before any rename
    assert ("fsync", str(tmp_path)) in events[renames[-1]:]  # and the renames after them
    assert (target / "index.json").read_text() == "{}" and not (target / "old.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_exchange_swaps_two_folders(tmp_path):
    if atomic._renameat2() is None:
        pytest.skip("no renameat2 on this system")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "from_a").write_text("a")
    (b / "from_b").write_text("b")
    assert atomic.exchange(a, b)
    assert [p.name for p in a.iterdir()] == ["from_b"] and [p.name for p in b.iterdir()] == ["from_a"]
    with pytest.raises(FileNotFoundError):
        atomic.exchange(tmp_path / "missing", b)


def test_state_folders_keep_the_two_renames(tmp_path, monkeypatch):
    """A training state's ``<state>.tmp`` holding the old complete state would be taken for a newer one by
    the state clean-up after a crash: such names are never swapped in one step."""
    calls = []
    monkeypatch.setattr(atomic, "exchange", lambda a, b: calls.append(b) or True)
    target, written = tmp_path / "run-000001-state", tmp_path / "run-000001-state.tmp"
    target.mkdir()
    written.mkdir()
    (written / "train_state.json").write_text("{}")
    atomic.replace_folder(written, target)
    assert calls == [] and (target / "train_state.json").is_file() and not written.exists()


# -- leftovers of killed saves ----------------------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_leftovers_of_ended_processes_are_removed_and_nothing_else(tmp_path, caplog):
    dead, live = _dead_pid(), os.getpid()
    leftovers = [f".lora.safetensors.{dead}-ab12cd_9.tmp", ".lora-000002.safetensors.x1y2z3w4.tmp"]
    for name in leftovers:
        (tmp_path / name).write_bytes(b"half")
    (tmp_path / f".model.{dead}-q1w2e3r4.tmp").mkdir()  # an atomic_folder temporary
    (tmp_path / f".model.{dead}-q1w2e3r4.tmp" / "unet.bin").write_bytes(b"half")
    (tmp_path / "model").mkdir()
    (tmp_path / f".model.old-{dead}").mkdir()  # the folder moved aside, its replacement already in place
    users = ["lora.safetensors", "notes.tmp", ".notes.tmp", "lora.safetensors.tmp", ".a.b.tmp",
             ".lora.safetensors.ABCDEFGH.tmp", f".lora.old-{dead}", f".lora.safetensors.{live}-abcdefgh.tmp"]
    for name in users:
        (tmp_path / name).write_bytes(b"keep")  # .lora.old-<pid> as a file: not ours (ours are folders)
    with caplog.at_level(logging.INFO, logger="library.util.atomic"):
        removed = remove_leftovers(tmp_path)
    assert sorted(p.name for p in removed) == sorted([*leftovers, f".model.{dead}-q1w2e3r4.tmp", f".model.old-{dead}"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*users, "model"])
    assert f"removed leftover temporary file {tmp_path / leftovers[0]}" in caplog.text


def test_a_swap_killed_between_its_renames_is_completed(tmp_path):
    dead = _dead_pid()
    old, new = tmp_path / f".model.old-{dead}", tmp_path / f".model.{dead}-abcdefgh.tmp"
    old.mkdir()
    (old / "v").write_text("old")
    new.mkdir()
    (new / "v").write_text("new")
    remove_leftovers(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["model"] and (tmp_path / "model" / "v").read_text() == "new"


def test_a_folder_moved_aside_goes_back_when_no_new_one_is_complete(tmp_path):
    dead = _dead_pid()
    (tmp_path / f".model.old-{dead}").mkdir()
    (tmp_path / f".model.old-{dead}" / "v").write_text("old")
    (tmp_path / f".model.{dead + 1}-abcdefgh.tmp").mkdir()  # another process's: not this swap's
    remove_leftovers(tmp_path)
    assert (tmp_path / "model" / "v").read_text() == "old"


def test_missing_folder_has_no_leftovers(tmp_path):
    assert remove_leftovers(tmp_path / "not-yet") == []


def test_partial_safetensors_temporaries_are_removed_unless_open(tmp_path):
    save_file({"a": torch.zeros(1000)}, str(tmp_path / "whole"))
    head = (tmp_path / "whole").read_bytes()[:40]
    (tmp_path / "whole").unlink()
    (tmp_path / ".tmpAb12Cd").write_bytes(head)  # what a killed safetensors write leaves
    (tmp_path / ".tmpZz99Yy").write_bytes(head)
    (tmp_path / ".tmpQwErTy").write_bytes(b"a user's file")
    (tmp_path / ".tmpEmPty0").write_bytes(b"")  # killed before safetensors wrote its header length
    (tmp_path / ".tmpShort1").write_bytes(head[:5])
    (tmp_path / ".tmpZeros2").write_bytes(bytes(4096))  # preallocated, nothing written yet
    with (tmp_path / ".tmpZz99Yy").open("rb"):  # still being written by a live process
        removed = remove_leftovers(tmp_path)
    assert sorted(p.name for p in removed) == [".tmpAb12Cd", ".tmpEmPty0", ".tmpShort1", ".tmpZeros2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmpQwErTy", ".tmpZz99Yy"]


def test_a_full_disk_in_safetensors_writer_is_an_oserror_naming_the_file(tmp_path):
    from safetensors import SafetensorError

    target = tmp_path / "lora.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(OSError) as caught:
        with atomic_path(target):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert caught.value.errno == 28 and caught.value.filename == str(target)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["lora.safetensors"]
    with pytest.raises(ValueError, match="no os error"):  # other errors pass unchanged
        with atomic_path(target):
            raise ValueError("no os error here")


def test_a_saved_folder_gets_the_modes_mkdir_would_give(tmp_path):
    """Not mkdtemp's 0700: a model folder others on the machine may read, as the user's umask says."""
    with atomic_folder(tmp_path / "model") as tmp:
        (tmp / "a.txt").write_text("x")
    (tmp_path / "plain").mkdir()
    assert (tmp_path / "model").stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777
