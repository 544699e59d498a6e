"""The WD14 tagger without network (issue 12): it fails at once with one paragraph naming --model_dir
(huggingface_hub alone retries for about 25 s and prints each retry twice), reports a missing image folder
before any download, and takes a local folder given as --repo_id as the model folder."""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import pytest
from huggingface_hub import constants

from library.cli import setup_logging
from library.errors import ModelLoadError
from library.tools.dataset import wd14_model
from library.tools.dataset.wd14_model import resolve_model_files
from tests.tools_dataset.helpers import load_wd14_tool, solid

ROOT = Path(__file__).resolve().parents[2]


def _tool():
    return load_wd14_tool("wd14_tool_offline")


@pytest.fixture
def dead_hub(monkeypatch):
    """The hub endpoint is a local port nothing listens on (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for name in ("http_proxy", "https_proxy", "all_proxy"):  # a proxy would be probed instead
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return port


def test_unreachable_hub_fails_at_once_naming_model_dir(tmp_path, dead_hub, caplog):
    started = time.monotonic()
    with caplog.at_level(logging.INFO), pytest.raises(ModelLoadError) as info:
        resolve_model_files(tmp_path / "models", "Owner/tagger")
    assert time.monotonic() - started < 5  # huggingface_hub's own retries take ~25 s
    message = str(info.value)
    assert f"127.0.0.1:{dead_hub}" in message and "cannot be reached" in message
    assert (
        "--model_dir" in message and "https://huggingface.co/Owner/tagger" in message and "\n" not in message
    )
    assert "Retrying" not in caplog.text


def test_offline_cli_prints_one_paragraph(tmp_path, dead_hub, capsys):
    solid(tmp_path / "pics" / "a.png", (255, 0, 0))
    started = time.monotonic()
    assert _tool().main([str(tmp_path / "pics"), "--model_dir", str(tmp_path / "models")]) == 2
    assert time.monotonic() - started < 5
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "--model_dir" in err and "SmilingWolf" in err
    assert "Traceback" not in err and "Retrying" not in err


def test_hub_retry_messages_show_once(tmp_path, monkeypatch, capfd):
    import huggingface_hub

    def fake_download(repo_id, filename, local_dir, force_download):
        logging.getLogger("huggingface_hub.utils._http").warning("Retrying in 1s [Retry 1/5].")
        return str(Path(local_dir) / filename)

    monkeypatch.setattr(wd14_model, "hub_unreachable_reason", lambda: None, raising=False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    setup_logging()
    handlers = list(logging.getLogger("huggingface_hub").handlers)
    assert wd14_model._hub_download("Owner/x", "model.onnx", tmp_path, False) == tmp_path / "model.onnx"
    assert capfd.readouterr().err.count("Retrying in 1s") == 1
    assert logging.getLogger("huggingface_hub").handlers == handlers  # put back afterwards


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_missing_image_folder_is_reported_before_any_download(tmp_path, monkeypatch, capsys, kind):
    def no_download(*args, **kwargs):
        raise AssertionError("the model was looked for before the image folder was checked")

    monkeypatch.setattr(wd14_model, "resolve_model_files", no_download)
    folder = tmp_path / "my pics"
    if kind == "file":
        folder.write_text("not a folder", encoding="utf-8")
    assert _tool().main([str(folder)]) == 2
    err = capsys.readouterr().err
    assert f"'{folder}'" in err and ("does not exist" if kind == "missing" else "is a file") in err
    assert err.count("error:") == 1 and "Traceback" not in err


def test_a_local_folder_given_as_repo_id_is_the_model_folder(tmp_path, tiny_tagger_dir, capsys):
    def no_download(*args):
        raise AssertionError("nothing may be downloaded for a local folder")

    found = resolve_model_files(tmp_path / "default_dir", str(tiny_tagger_dir), download=no_download)
    assert found == (tiny_tagger_dir / "model.onnx", tiny_tagger_dir / "selected_tags.csv")
    solid(tmp_path / "pics" / "a.png", (255, 0, 0))
    assert _tool().main([str(tmp_path / "pics"), "--repo_id", str(tiny_tagger_dir)]) == 0
    assert (tmp_path / "pics" / "a.txt").read_text(encoding="utf-8").startswith("solo, red")


def test_behind_a_proxy_the_proxy_is_probed(monkeypatch, dead_hub):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{listener.getsockname()[1]}")
        monkeypatch.setenv("NO_PROXY", "")
        assert wd14_model.hub_unreachable_reason("http://hub.invalid") is None  # the proxy answers
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{dead_hub}")
    assert f"127.0.0.1:{dead_hub}" in wd14_model.hub_unreachable_reason("http://hub.invalid")
