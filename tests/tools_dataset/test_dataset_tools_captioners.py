"""BLIP and GIT captioning end to end on tiny random models built by the tests; options and bad input."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from library.tools.dataset.captioners import GenerationOptions, remove_text_phrases
from tests.tools_dataset.helpers import WORDS, solid

ROOT = Path(__file__).resolve().parents[2]


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def pictures(tmp_path):
    folder = tmp_path / "pics"
    for i, colour in enumerate([(200, 10, 10), (10, 200, 10), (10, 10, 200)]):
        solid(folder / f"{i}.png", colour, (40, 30))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 broken")
    return folder


def _words_ok(text: str) -> bool:
    return all(w in WORDS for w in text.split())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("tool", "kind", "flag"),
    [("make_captions", "blip", "--caption_weights"), ("make_captions_by_git", "git", "--model_id")],
)
def test_captioners_write_captions(pictures, tiny_captioner_dirs, tool, kind, flag, capsys):
    argv = [
        str(pictures),
        flag,
        str(tiny_captioner_dirs[kind]),
        "--batch_size",
        "2",
        "--beam_search",
        "--num_beams",
        "2",
        "--max_length",
        "8",
        "--min_length",
        "3",
        "--caption_prefix",
        "sks, ",
        "--caption_suffix",
        " [end]",
        "--debug",
    ]
    assert _tool(tool).main(argv) == 0
    for i in range(3):
        text = (pictures / f"{i}.caption").read_text(encoding="utf-8").strip()
        assert text.startswith("sks, ") and text.endswith(" [end]")
        body = text[len("sks, ") : -len(" [end]")]
        assert body and _words_ok(body), text
    assert not (pictures / "broken.caption").exists()
    out = capsys.readouterr()
    assert "captioned 3 of 4 pictures" in out.out and "broken.jpg" in out.err


@pytest.mark.slow
def test_existing_captions_kept_unless_overwrite_and_sampling(pictures, tiny_captioner_dirs):
    (pictures / "0.txt").write_text("mine\n", encoding="utf-8")
    argv = [
        str(pictures),
        "--model_id",
        str(tiny_captioner_dirs["git"]),
        "--caption_extension",
        ".txt",
        "--max_length",
        "6",
        "--min_length",
        "2",
        "--top_p",
        "0.5",
    ]
    tool = _tool("make_captions_by_git")
    assert tool.main(argv) == 0
    assert (pictures / "0.txt").read_text(encoding="utf-8") == "mine\n"
    assert _words_ok((pictures / "1.txt").read_text(encoding="utf-8"))
    assert tool.main([*argv, "--overwrite", "--recursive"]) == 0
    assert (pictures / "0.txt").read_text(encoding="utf-8") != "mine\n"


def test_missing_captioning_model_is_a_clear_error(pictures, tmp_path, capsys):
    assert _tool("make_captions").main([str(pictures), "--caption_weights", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "BLIP" in err and "empty" in err and "Traceback" not in err


def test_generation_options():
    assert GenerationOptions(
        beam_search=True, num_beams=3, max_length=20, min_length=4
    ).generate_kwargs() == {"max_length": 20, "min_length": 4, "num_beams": 3, "do_sample": False}
    assert GenerationOptions(top_p=0.8).generate_kwargs() == {
        "max_length": 75,
        "min_length": 5,
        "do_sample": True,
        "top_p": 0.8,
        "num_beams": 1,
    }


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ('a sign with the words "open late" on the door', "a sign"),
        ("a poster that says hello on it", "a poster"),
        ("a book and the name zorro in red", "a book"),
        ("a red car", "a red car"),
    ],
)
def test_git_remove_words(raw, clean):
    assert remove_text_phrases(raw) == clean


def test_local_path_detection():
    from library.tools.dataset.captioners import looks_like_local_path

    assert looks_like_local_path("/models/blip") and looks_like_local_path("./blip")
    assert looks_like_local_path("a/b/c") and not looks_like_local_path(
        "Salesforce/blip-image-captioning-large"
    )
