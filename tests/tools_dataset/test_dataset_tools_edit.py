"""Caption edits: the pure tag functions, folder runs with dry-run / backups, and the stats report."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from library.tools.dataset.stats import tag_stats
from library.tools.dataset.tags import (
    add_tags,
    dedupe,
    fold_tags,
    parse_tag_replacement,
    remove_tags,
    replace_tag,
)
from tests.tools_dataset.helpers import solid

ROOT = Path(__file__).resolve().parents[2]
SMITH = "1boy, facial hair, beard, smith_group, apron"


def edit(*argv: str) -> int:
    spec = importlib.util.spec_from_file_location("edit_tool", ROOT / "tools" / "edit_captions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main([str(a) for a in argv])


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "10_smith man"
    for name, text in [("a", SMITH), ("b", "beard, apron, apron, smile"), ("c", "tree, sky")]:
        solid(root / f"{name}.png", (100, 100, 100))
        (root / f"{name}.txt").write_text(text + "\n", encoding="utf-8")
    solid(root / "d.png", (0, 0, 0))  # no caption
    return root


def read(folder: Path, name: str) -> str:
    return (folder / f"{name}.txt").read_text(encoding="utf-8").strip()


@pytest.mark.parametrize(
    ("func", "tags", "expected"),
    [
        (
            lambda t: fold_tags(t, "Smith", ["1boy", "facial hair", "beard"]),
            SMITH.split(", "),
            ["Smith", "smith_group", "apron"],
        ),
        (lambda t: fold_tags(t, "Smith", ["beard"]), ["apron", "Smith", "beard"], ["Smith", "apron"]),
        (lambda t: add_tags(t, ["sks"], ["best"]), ["a", "sks", "best", "b"], ["sks", "a", "best", "b"]),
        (lambda t: add_tags(t, [], ["x"]), ["a"], ["a", "x"]),
        (lambda t: replace_tag(t, "a", "b"), ["a", "b", "c"], ["b", "c"]),
        (lambda t: replace_tag(t, "a", ""), ["a", "c"], ["c"]),
        (lambda t: remove_tags(t, ["a", "z"]), ["a", "b", "a"], ["b"]),
        (dedupe, ["a", "b", "a", "c", "b"], ["a", "b", "c"]),
    ],
)
def test_tag_functions(func, tags, expected):
    before = list(tags)
    assert func(tags) == expected
    assert tags == before  # inputs are never mutated


def test_tag_replacement_parsing():
    assert parse_tag_replacement("a,b;c\\,d,e\\;f") == [("a", "b"), ("c,d", "e;f")]
    with pytest.raises(ValueError):
        parse_tag_replacement("a,b,c")


def test_fold_dry_run_changes_nothing_then_real_run_backs_up(folder, capsys):
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert edit(folder, "fold", "Smith", "1boy", "facial hair", "beard", "--dry-run") == 0
    out = capsys.readouterr().out
    assert f"-{SMITH}" in out and "+Smith, smith_group, apron" in out and "would change 3 of 3" in out
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert not (folder / ".caption_backups").exists()

    assert edit(folder, "fold", "Smith", "1boy", "facial hair", "beard") == 0
    assert read(folder, "a") == "Smith, smith_group, apron"
    assert read(folder, "b") == "Smith, apron, smile"
    backups = list((folder / ".caption_backups").glob("*/a.txt"))
    assert len(backups) == 1 and backups[0].read_text(encoding="utf-8").strip() == SMITH
    assert "1 pictures have no caption file" in capsys.readouterr().out


def test_fold_only_matching_and_no_backup(folder):
    assert edit(folder, "--no-backup", "fold", "Smith", "beard", "--only_matching") == 0
    assert read(folder, "c") == "tree, sky"
    assert read(folder, "a") == "Smith, 1boy, facial hair, smith_group, apron"
    assert not (folder / ".caption_backups").exists()


@pytest.mark.parametrize(
    ("argv", "a", "b"),
    [
        (
            ["add", "--trigger", "sks", "--suffix", "apron, best"],
            "sks, " + SMITH + ", best",
            "sks, beard, apron, smile, best",
        ),
        (["replace", "apron", "smock"], SMITH.replace("apron", "smock"), "beard, smock, smile"),
        (["remove", "apron", "beard"], "1boy, facial hair, smith_group", "smile"),
        (["dedupe"], SMITH, "beard, apron, smile"),
    ],
)
def test_other_edits(folder, argv, a, b):
    assert edit(folder, *argv) == 0
    assert read(folder, "a") == a and read(folder, "b") == b


def test_recursive_and_extension(tmp_path):
    solid(tmp_path / "sub" / "x.png", (1, 2, 3))
    (tmp_path / "sub" / "x.caption").write_text("a, a\n", encoding="utf-8")
    assert edit(tmp_path, "dedupe", "--caption_extension", ".caption") == 0
    assert (tmp_path / "sub" / "x.caption").read_text(encoding="utf-8") == "a, a\n"
    assert edit(tmp_path, "dedupe", "--caption_extension", ".caption", "--recursive") == 0
    assert (tmp_path / "sub" / "x.caption").read_text(encoding="utf-8") == "a\n"


def test_tag_stats_common_and_pairs():
    captions = [
        ["sks", "red hair", "blue eyes", "smile"],
        ["sks", "red hair", "blue eyes"],
        ["sks", "red hair", "blue eyes", "hat"],
        ["sks", "hat", "smile"],
        ["sks", "tree"],
    ]
    s = tag_stats(captions, min_share=0.8, pair_share=0.75, min_pair_count=3)
    assert s.images == 5 and s.frequency["sks"] == 5 and s.frequency["hat"] == 2
    assert s.common == [("sks", 1.0)]
    assert s.pairs == [("blue eyes", "red hair", 3, 1.0)]


def test_stats_command_json(folder, capsys):
    assert edit(folder.parent, "stats", "--json", "--min_share", "0.5", "--min_pair_count", "2") == 0
    data = json.loads(capsys.readouterr().out)
    stats = data["10_smith man"]
    assert stats["images"] == 4 and stats["frequency"]["apron"] == 2 and stats["frequency"]["beard"] == 2
    assert {"tag": "apron", "share": 0.5} in stats["common"]
    assert edit(folder.parent, "stats") == 0
    assert "10_smith man: 4 pictures" in capsys.readouterr().out


def test_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert edit(tmp_path / "nope", "dedupe") == 2
    assert "nope" in capsys.readouterr().err


def test_empty_caption_files_change_only_when_tags_are_added(tmp_path):
    from library.tools.dataset.edit import edit_text
    from library.tools.dataset.tags import dedupe

    assert edit_text("", dedupe) == ""
    assert edit_text("\n", lambda tags: add_tags(tags, ["sks"])) == "sks\n"
    assert edit_text("a, a\n\nb, c, b", dedupe) == "a\n\nb, c"
