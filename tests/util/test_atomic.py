"""Atomic saves: the file appears whole or not at all, with the permissions of any new file."""

import os

import pytest
import torch
from safetensors.torch import save_file

from library.util.atomic import atomic_path, write_text_atomic


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
