"""Dataset preparation: the folder layout, captions, resize/crop, aspect groups, links and safety."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from PIL import Image

from library.data.folders import discover_concept_folders
from library.tools.dataset.prepare import group_target, keep_aspect_size
from tests.tools_dataset.helpers import textured

ROOT = Path(__file__).resolve().parents[2]


def prepare(*argv) -> int:
    spec = importlib.util.spec_from_file_location("prepare_tool", ROOT / "tools" / "prepare_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main([str(a) for a in argv])


@pytest.fixture
def raw(tmp_path):
    folder = tmp_path / "raw"
    textured(folder / "wide.png", 1, (200, 100))
    textured(folder / "square.jpg", 2, (100, 100))
    textured(folder / "tall.png", 3, (50, 100))
    (folder / "wide.txt").write_text("sks dog, grass\n", encoding="utf-8")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (folder / "notes.pdf").write_bytes(b"%PDF")
    reg = tmp_path / "raw_reg"
    textured(reg / "r.png", 9, (64, 64))
    return folder, reg


def sizes(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: Image.open(p).size for p in folder.iterdir() if p.suffix in (".png", ".jpg")}


def test_layout_copies_pictures_and_captions(raw, tmp_path, capsys):
    folder, reg = raw
    out = tmp_path / "out"
    assert (
        prepare(
            folder,
            out,
            "--trigger",
            "sks",
            "--class_name",
            "dog",
            "--repeats",
            "10",
            "--reg_dir",
            reg,
            "--reg_repeats",
            "2",
        )
        == 0
    )
    train = out / "train" / "10_sks dog"
    assert sorted(p.name for p in train.iterdir()) == ["square.jpg", "tall.png", "wide.png", "wide.txt"]
    assert (train / "wide.png").read_bytes() == (folder / "wide.png").read_bytes()
    assert (train / "wide.txt").read_text(encoding="utf-8") == "sks dog, grass\n"
    assert sorted(p.name for p in (out / "reg" / "2_dog").iterdir()) == ["r.png"]
    concepts = discover_concept_folders(out / "train")
    assert [(c.repeats, c.class_tokens, len(c.images)) for c in concepts] == [(10, "sks dog", 3)]
    captured = capsys.readouterr()
    assert (
        "skipped 1 unreadable" in captured.out
        and "broken.png" in captured.err
        and "notes.pdf" in captured.err
    )


def test_existing_output_is_not_overwritten_without_flag(raw, tmp_path, capsys):
    folder, _ = raw
    out = tmp_path / "out"
    assert prepare(folder, out, "--class_name", "dog") == 0
    assert (out / "train" / "10_dog").is_dir()
    assert prepare(folder, out, "--class_name", "dog") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert prepare(folder, out, "--class_name", "dog", "--overwrite") == 0


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--resolution", "64"], {"wide.png": (90, 45), "square.jpg": (64, 64), "tall.png": (45, 90)}),
        (
            ["--resolution", "64", "--resize_mode", "crop"],
            {"wide.png": (64, 64), "square.jpg": (64, 64), "tall.png": (64, 64)},
        ),
        (
            ["--resolution", "64", "--group_size", "2", "--bucket_reso_steps", "8"],
            {"tall.png": (48, 80), "square.jpg": (48, 80), "wide.png": (88, 40)},
        ),
        (["--group_size", "2"], {"tall.png": (50, 67), "square.jpg": (75, 100), "wide.png": (200, 100)}),
    ],
)
def test_resize_crop_and_groups(raw, tmp_path, options, expected):
    folder, _ = raw
    out = tmp_path / "out"
    assert prepare(folder, out, "--trigger", "sks", "--class_name", "dog", *options) == 0
    assert sizes(out / "train" / "10_sks dog") == expected


def test_hardlink_and_symlink(raw, tmp_path):
    folder, _ = raw
    assert prepare(folder, tmp_path / "h", "--class_name", "dog", "--link", "hardlink") == 0
    assert (tmp_path / "h" / "train" / "10_dog" / "wide.png").stat().st_ino == (
        folder / "wide.png"
    ).stat().st_ino
    assert prepare(folder, tmp_path / "s", "--class_name", "dog", "--link", "symlink") == 0
    link = tmp_path / "s" / "train" / "10_dog" / "tall.png"
    assert link.is_symlink() and link.resolve() == (folder / "tall.png").resolve()


def test_size_functions():
    assert keep_aspect_size((2000, 1000), 512) == (724, 362)
    assert keep_aspect_size((100, 50), 512) == (100, 50)  # never enlarged
    assert group_target([0.5, 1.0], 64, 8, [(50, 100), (100, 100)]) == [(48, 80), (48, 80)]


def test_recursive_takes_pictures_of_subfolders(tmp_path):
    folder = tmp_path / "raw"
    textured(folder / "top.png", 1, (64, 64))
    textured(folder / "set1" / "a.png", 2, (64, 64))
    textured(folder / "set1" / "deeper" / "b.jpg", 3, (64, 64))
    (folder / "set1" / "a.txt").write_text("sks dog, beach\n", encoding="utf-8")
    textured(folder / ".hidden" / "c.png", 4, (64, 64))
    out = tmp_path / "out"
    args = (folder, out, "--trigger", "sks", "--class_name", "dog", "--repeats", "3")
    assert prepare(*args) == 0
    train = out / "train" / "3_sks dog"
    assert sorted(p.name for p in train.iterdir()) == ["top.png"]
    assert prepare(*args, "--recursive", "--overwrite") == 0
    assert sorted(p.name for p in train.iterdir()) == [
        "set1_a.png",
        "set1_a.txt",
        "set1_deeper_b.jpg",
        "top.png",
    ]
    assert (train / "set1_a.txt").read_text(encoding="utf-8") == "sks dog, beach\n"
    assert (train / "set1_deeper_b.jpg").read_bytes() == (folder / "set1" / "deeper" / "b.jpg").read_bytes()


def test_recursive_name_clash_and_output_inside_the_raw_folder(tmp_path, capsys):
    folder = tmp_path / "raw"
    textured(folder / "set1_a.png", 1, (64, 64))
    textured(folder / "set1" / "a.png", 2, (64, 64))
    assert prepare(folder, tmp_path / "out", "--class_name", "dog", "--recursive") == 2
    err = capsys.readouterr().err
    assert "set1_a.png" in err and "Rename" in err and "Traceback" not in err
    (folder / "set1_a.png").unlink()
    assert prepare(folder, folder / "out", "--class_name", "dog", "--recursive") == 0
    train = folder / "out" / "train" / "10_dog"
    assert [p.name for p in train.iterdir()] == ["set1_a.png"]
    # a second run does not pick up the pictures it placed itself
    assert prepare(folder, folder / "out", "--class_name", "dog", "--recursive", "--overwrite") == 0
    assert [p.name for p in train.iterdir()] == ["set1_a.png"]


@pytest.mark.parametrize(
    ("flag", "word", "why"),
    [
        ("--class_name", "../../x", "path separator"),
        ("--class_name", "dog/cat", "path separator"),
        ("--class_name", "dog\\cat", "path separator"),
        ("--class_name", "dog\n[INFO] forged", "control character"),
        ("--class_name", "..", "refers to a folder"),
        ("--trigger", "../sks", "path separator"),
        ("--trigger", "sks\tdog", "control character"),
    ],
)
def test_concept_words_that_would_leave_the_output_are_refused(tmp_path, capsys, flag, word, why):
    folder = tmp_path / "raw"
    textured(folder / "a.png", 1, (64, 64))
    out = tmp_path / "deep" / "er" / "out"
    words = {"--class_name": "dog", "--trigger": "sks", flag: word}
    assert prepare(folder, out, *[x for pair in words.items() for x in pair], "--reg_dir", folder) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err
    assert flag in err and repr(word) in err and why in err
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["raw", "raw/a.png"]


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--class_name", " "], ("--class_name is empty",)),
        (["--repeats", "0"], ("--repeats 0", "1 to 10000")),
        (["--repeats", "1000000000"], ("--repeats 1000000000", "1 to 10000")),
        (["--reg_repeats", "-1"], ("--reg_repeats -1",)),
        (["--resolution", "-5"], ("--resolution -5", "1 to 8192")),
        (["--resolution", "100000"], ("--resolution 100000",)),
        (["--group_size", "0"], ("--group_size 0", "at least 1")),
        (["--bucket_reso_steps", "0"], ("--bucket_reso_steps 0",)),
        (["--caption_extension", ""], ("--caption_extension ''", "empty")),
        (["--caption_extension", "/../x"], ("--caption_extension '/../x'", "path separator")),
        (["--caption_extension", ".t\nxt"], ("control character",)),
        (["--reg_dir", "{tmp}/noreg"], ("--reg_dir", "noreg", "is not a folder")),
    ],
)
def test_bad_options_name_their_flag_and_write_nothing(tmp_path, capsys, extra, words):
    folder = tmp_path / "raw"
    textured(folder / "a.png", 1, (64, 64))
    argv = ["--class_name", "dog", *[a.replace("{tmp}", str(tmp_path)) for a in extra]]
    assert prepare(folder, tmp_path / "out", *argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err
    for word in words:
        assert word in err, err
    assert not (tmp_path / "out").exists()
