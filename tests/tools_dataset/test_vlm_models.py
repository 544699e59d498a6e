"""Each transformers backend end to end on a tiny random model of its architecture (Florence-2, LLaVA /
JoyCaption, Qwen2.5-VL, Qwen3-VL) built here and loaded through the backend's real loading code."""

from __future__ import annotations

from pathlib import Path

import pytest

from library.tools.dataset.vlm.tiny import TINY_BUILDERS, WORDS
from tests.tools_dataset.helpers import solid
from tests.tools_dataset.test_vlm_cli import _tool

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_vlms(tmp_path_factory):
    """{backend name: folder of its tiny model}, built once for this module."""
    root = tmp_path_factory.mktemp("tiny_vlms")
    return {name: build(root / name) for name, build in TINY_BUILDERS.items()}


@pytest.fixture
def pictures(tmp_path):
    folder = tmp_path / "pics"
    for i, size in enumerate([(40, 30), (64, 64), (30, 50)]):
        solid(folder / f"{i}.png", (80 * i, 200 - 60 * i, 40), size)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 broken")
    return folder


@pytest.mark.parametrize("backend", list(TINY_BUILDERS))
def test_backend_writes_captions_with_the_trigger_first(backend, tiny_vlms, pictures, capsys):
    argv = [
        str(pictures),
        "--backend",
        backend,
        "--model_id",
        str(tiny_vlms[backend]),
        "--batch_size",
        "2",
        "--max_new_tokens",
        "4",
        "--trigger_word",
        "sks",
        "--prompt_style",
        "tags",
        "--device",
        "cpu",
        "--dtype",
        "fp32",
        *(("--task", "<CAPTION>") if backend == "florence2" else ()),
    ]
    assert _tool().main(argv) == 1  # broken.jpg has no caption
    for i in range(3):
        text = (pictures / f"{i}.txt").read_text(encoding="utf-8").strip()
        assert text.startswith("sks, ")
        words = text[len("sks, ") :].split()
        assert 1 <= len(words) <= 4 and all(w in WORDS for w in words), text
    out = capsys.readouterr()
    assert "captioned 3 of 4" in out.out and "broken.jpg" in out.err


def test_rerun_skips_done_pictures_and_overwrite_redoes_them(tiny_vlms, pictures, monkeypatch):
    from library.tools.dataset.vlm.florence2 import Florence2Backend

    (pictures / "broken.jpg").unlink()
    calls: list[int] = []
    real = Florence2Backend.caption

    def counted(self, images, prompt):
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed after two pictures
        calls.append(len(images))
        return real(self, images, prompt)

    monkeypatch.setattr(Florence2Backend, "caption", counted)
    argv = [
        str(pictures),
        "--backend",
        "florence2",
        "--model_id",
        str(tiny_vlms["florence2"]),
        "--max_new_tokens",
        "3",
        "--caption_extension",
        ".caption",
    ]
    assert _tool().main(argv) == 130
    done = {p.name: p.stat().st_mtime_ns for p in pictures.glob("*.caption")}
    assert sorted(done) == ["0.caption", "1.caption"]
    calls.clear()
    assert _tool().main(argv) == 0
    assert calls == [1] and {n: (pictures / n).stat().st_mtime_ns for n in done} == done
    calls.clear()
    (pictures / "0.caption").write_text("mine\n", encoding="utf-8")
    assert _tool().main([*argv, "--overwrite", "--batch_size", "3"]) == 0
    assert calls == [3] and (pictures / "0.caption").read_text(encoding="utf-8") != "mine\n"


def test_missing_model_is_one_error_and_offline_mode_is_named(pictures, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    argv = [str(pictures), "--backend", "qwen2.5-vl", "--model_id", "nobody/not-cached-vl"]
    assert _tool().main(argv) == 2
    err = capsys.readouterr().err
    assert "nobody/not-cached-vl" in err and "HF_HUB_OFFLINE" in err and "Traceback" not in err
    empty = tmp_path / "empty_model"
    empty.mkdir()
    assert _tool().main([str(pictures), "--backend", "joycaption", "--model_id", str(empty)]) == 2
    assert "local folder" in capsys.readouterr().err
    assert not list(Path(pictures).glob("*.txt"))
