"""The one error boundary of every entry point: OS errors become one paragraph naming the file, exit code 2."""

from __future__ import annotations

import errno

import pytest

from library.cli import os_error_message, run_guarded


@pytest.mark.parametrize(
    ("code", "words"),
    [(errno.ENOSPC, "disk is full"), (errno.EROFS, "read-only"), (errno.EACCES, "permission denied"),
     (errno.EISDIR, "folder is where a file"), (errno.ENOENT, "does not exist")],
)
def test_os_errors_name_the_file_and_the_fix(code, words):
    error = OSError(code, "failed", "/out/lora.safetensors")
    message = os_error_message(error)
    assert "/out/lora.safetensors" in message and words in message and "\n" not in message


def test_run_guarded_turns_os_errors_into_exit_2(capsys):
    def body():
        raise OSError(errno.ENOSPC, "No space left on device", "/full/disk/file")

    assert run_guarded(body) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No space left on device (/full/disk/file): the disk is full")
    assert "Traceback" not in err
