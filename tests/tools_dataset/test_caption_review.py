"""Per-picture caption review: the tag operations (tables of cases), the trigger word pinned first, bulk edits,
undo, atomic saves with backups, and the Dataset check's summary as Markdown."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from library.errors import UserError
from library.tools.dataset.caption_review import (
    CaptionReview,
    add_tag,
    matches,
    move_tag,
    remove_tag,
    rename_tag,
    set_tags,
    shift_tag,
)
from library.tools.dataset.files import BACKUP_DIR_NAME
from tests.tools_dataset.helpers import solid

TAGS = ["sks", "1girl", "solo", "smile"]


@pytest.mark.parametrize(
    ("op", "expected"),
    [
        (lambda t: add_tag(t, "hat"), ["sks", "1girl", "solo", "smile", "hat"]),
        (lambda t: add_tag(t, "hat", 1), ["sks", "hat", "1girl", "solo", "smile"]),
        (lambda t: add_tag(t, "hat, red", 99), ["sks", "1girl", "solo", "smile", "hat", "red"]),
        (lambda t: add_tag(t, "solo", 0), TAGS),  # present: stays where it is
        (lambda t: remove_tag(t, "solo"), ["sks", "1girl", "smile"]),
        (lambda t: remove_tag(t, "solo, smile"), ["sks", "1girl"]),
        (lambda t: remove_tag(t, "absent"), TAGS),
        (lambda t: rename_tag(t, "smile", "grin"), ["sks", "1girl", "solo", "grin"]),
        (lambda t: rename_tag(t, "smile", "solo"), ["sks", "1girl", "solo"]),  # no duplicate
        (lambda t: rename_tag(t, "absent", "x"), TAGS),
        (lambda t: move_tag(t, "smile", 0), ["smile", "sks", "1girl", "solo"]),
        (lambda t: move_tag(t, "sks", 99), ["1girl", "solo", "smile", "sks"]),
        (lambda t: shift_tag(t, "solo", -1), ["sks", "solo", "1girl", "smile"]),
        (lambda t: shift_tag(t, "smile", 1), TAGS),  # already last
        (lambda t: set_tags(t, [" a ", "", "b", "a"]), ["a", "b"]),
    ],
)
def test_tag_operations(op, expected):
    before = list(TAGS)
    assert op(before) == expected
    assert before == TAGS  # never mutates its input


@pytest.mark.parametrize(
    ("op", "expected"),
    [
        (lambda t: add_tag(t, "hat", 0, "sks"), ["sks", "hat", "1girl", "solo", "smile"]),
        (lambda t: add_tag(["1girl"], "hat", 0, "sks"), ["sks", "hat", "1girl"]),  # an edit adds the trigger
        (lambda t: move_tag(t, "smile", 0, "sks"), ["sks", "smile", "1girl", "solo"]),
        (lambda t: shift_tag(t, "1girl", -1, "sks"), TAGS),
        (lambda t: rename_tag(["1girl", "sks"], "1girl", "woman", "sks"), ["sks", "woman"]),
        (lambda t: remove_tag(["solo", "sks"], "solo", "sks"), ["sks"]),
        (lambda t: set_tags(t, ["smile", "sks", "solo"], "sks"), ["sks", "smile", "solo"]),
        (lambda t: set_tags(t, ["smile"], "sks"), ["sks", "smile"]),  # the chip removed: it comes back
    ],
)
def test_trigger_stays_first(op, expected):
    assert op(list(TAGS)) == expected


@pytest.mark.parametrize(
    "op",
    [
        lambda t: remove_tag(t, "sks", "sks"),
        lambda t: rename_tag(t, "sks", "other", "sks"),
        lambda t: move_tag(t, "sks", 2, "sks"),
        lambda t: shift_tag(t, "sks", 1, "sks"),
    ],
)
def test_editing_the_trigger_itself_is_refused(op):
    with pytest.raises(UserError, match="'sks' is the trigger word"):
        op(list(TAGS))


@pytest.mark.parametrize(
    ("has", "lacks", "expected"),
    [
        ((), (), True),
        (("solo",), (), True),
        (("solo", "hat"), (), False),
        ((), ("hat",), True),
        ((), ("smile",), False),
        (("sks",), ("hat",), True),
    ],
)
def test_matches(has, lacks, expected):
    assert matches(TAGS, has, lacks) is expected


def _folder(tmp_path: Path, captions: dict[str, str | None]) -> Path:
    folder = tmp_path / "10_sks girl"
    for i, (name, text) in enumerate(captions.items()):
        solid(folder / f"{name}.png", (30 * i, 60, 90), (16, 16))
        if text is not None:
            (folder / f"{name}.txt").write_bytes(text.encode("utf-8"))
    return folder


CAPTIONS = {"a": "sks, 1girl, solo\n", "b": "1girl,smile,hat", "c": None, "d": "sks, 1girl\nsecond line\n"}


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.txt"))}


def test_load_reads_first_lines_and_missing_files(tmp_path):
    review = CaptionReview.load(_folder(tmp_path, CAPTIONS), trigger="sks")
    assert review.names == ["a.png", "b.png", "c.png", "d.png"]
    assert [c.tags for c in review.captions] == [
        ["sks", "1girl", "solo"],
        ["1girl", "smile", "hat"],
        [],
        ["sks", "1girl"],
    ]
    assert review.dirty() == []
    assert review.filtered("1girl", "solo") == [1, 3]
    assert review.filtered(lacks="sks") == [1, 2]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "missing", "is not a folder"),
        (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", "holds no pictures"),
    ],
)
def test_bad_folder_is_one_clear_error(tmp_path, make, message):
    with pytest.raises(UserError, match=message):
        CaptionReview.load(make(tmp_path))


def test_caption_not_utf8_names_the_file(tmp_path):
    folder = _folder(tmp_path, {"a": "x"})
    (folder / "a.txt").write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(UserError, match="a.txt' is not valid UTF-8"):
        CaptionReview.load(folder)


def test_bulk_edit_and_undo_are_one_step_each(tmp_path):
    review = CaptionReview.load(_folder(tmp_path, CAPTIONS), trigger="sks")
    assert review.apply([0], "add", "blue eyes", position=1) == 1
    assert review.apply(review.indices(["a.png", "b.png", "c.png"]), "remove", "1girl") == 2
    assert review.captions[1].tags == ["sks", "smile", "hat"]  # the edit pinned the trigger
    assert review.apply([1, 2], "replace", "hat", "cap") == 1
    assert review.apply([2], "remove", "hat") == 0  # no change: no undo step
    assert len(review.undo_stack) == 3
    assert review.undo() == ["b.png"]
    assert review.undo() == ["a.png", "b.png"]
    assert [c.tags for c in review.captions[:2]] == [
        ["sks", "blue eyes", "1girl", "solo"],
        ["1girl", "smile", "hat"],
    ]
    assert review.undo() == ["a.png"] and review.undo() == []
    assert review.dirty() == []


@pytest.mark.parametrize(
    ("action", "tag", "new", "message"),
    [
        ("add", " ", "", "give the tag"),
        ("replace", "hat", "", "give the tag that replaces"),
        ("fold", "hat", "", "unknown caption action"),
        ("move", "hat", "", "give the position"),
    ],
)
def test_bad_actions(tmp_path, action, tag, new, message):
    review = CaptionReview.load(_folder(tmp_path, {"a": "hat"}))
    with pytest.raises(UserError, match=message):
        review.apply([0], action, tag, new)


def test_save_writes_changed_files_with_backups_and_no_temp_files(tmp_path):
    folder = _folder(tmp_path, CAPTIONS)
    before = _files(folder)
    review = CaptionReview.load(folder, trigger="sks")
    review.apply([1], "move", "hat", position=1)
    review.apply([2], "add", "night")
    review.apply([3], "replace", "1girl", "woman")
    report = review.save(datetime(2026, 1, 2, 3, 4, 5))
    assert [p.name for p in report.written] == ["b.txt", "c.txt", "d.txt"]
    assert report.backup_dir == folder / BACKUP_DIR_NAME / "20260102-030405-000000"
    after = _files(folder)  # each file keeps its line ending (b.txt had none)
    assert after == {
        "a.txt": before["a.txt"],
        "b.txt": b"sks, hat, 1girl, smile",
        "c.txt": b"sks, night\n",
        "d.txt": b"sks, woman\nsecond line\n",
    }
    backups = {p.name: p.read_bytes() for p in report.backup_dir.iterdir()}
    assert backups == {"b.txt": before["b.txt"], "d.txt": before["d.txt"]}  # c.txt had no file to back up
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == [BACKUP_DIR_NAME]
    assert not list(folder.rglob("*.tmp"))
    assert review.dirty() == [] and review.save().written == []


def test_undo_after_save_restores_files_exactly(tmp_path):
    folder = _folder(tmp_path, CAPTIONS)
    before = _files(folder)
    review = CaptionReview.load(folder)
    review.apply([0, 1, 2, 3], "add", "night")
    review.save(datetime(2026, 1, 1))
    assert review.undo() == ["a.png", "b.png", "c.png", "d.png"]
    review.save(datetime(2026, 1, 2))
    assert _files(folder) == before  # "1girl,smile,hat" keeps its spacing; c.txt, created, is gone again
    second = folder / BACKUP_DIR_NAME / "20260102-000000-000000"
    assert (second / "c.txt").read_bytes() == b"night\n"


def test_save_refuses_files_changed_on_disk(tmp_path):
    folder = _folder(tmp_path, CAPTIONS)
    review = CaptionReview.load(folder)
    review.apply([0, 1], "add", "night")
    (folder / "b.txt").write_text("changed elsewhere", encoding="utf-8")
    with pytest.raises(UserError, match="changed on disk since they were loaded: b.png"):
        review.save()
    assert (folder / "a.txt").read_text(encoding="utf-8") == "sks, 1girl, solo\n"  # nothing written
    assert not (folder / BACKUP_DIR_NAME).exists()


def test_stats_and_hints_reuse_the_doctors_near_universal_tags(tmp_path):
    folder = _folder(tmp_path, {f"p{i}": f"sks, 1girl, {'solo' if i < 4 else 'duo'}" for i in range(5)})
    review = CaptionReview.load(folder, trigger="sks")
    stats = review.stats()
    assert stats.frequency["1girl"] == 5 and stats.frequency["solo"] == 4 and stats.images == 5
    hints = review.hints()
    assert hints[0] == "'1girl' is in 100% of the pictures: fold it into the trigger word, or remove it"
    assert any("'solo' is in 80%" in h for h in hints)
    assert not any("'sks'" in h for h in hints)  # the trigger itself is no hint
    review.set_tags(4, ["duo"])
    assert review.captions[4].tags == ["sks", "duo"]


def test_check_summary_is_markdown_with_units_not_a_dict():
    from library.gui.check_summary import check_summary_markdown

    report = {
        "ok": False,
        "errors": 1,
        "warnings": 1,
        "summary": {
            "train_images": 3,
            "reg_images": 0,
            "samples_per_epoch": 30,
            "batch_size": [2],
            "resolution": [[512, 512]],
            "steps_per_epoch": 15,
            "caption_tokens": {"max": 12, "mean": 8.5, "limit": 75, "over_limit": 0},
        },
        "folders": [{"folder": "/d/10_sks", "is_reg": False, "images": 3, "repeats": 10}],
        "findings": [
            {"severity": "error", "code": "unreadable", "message": "cannot be read", "paths": ["/d/x.png"]},
            {"severity": "warning", "code": "no_caption", "message": "no caption", "paths": []},
        ],
    }
    text = check_summary_markdown(report)
    assert "{" not in text and "'" not in text
    assert text.splitlines() == [
        "**❌ problems found**: 1 errors, 1 warnings",
        "",
        "- Training pictures: 3 pictures",
        "- Regularisation pictures: 0 pictures",
        "- Samples per epoch (pictures × repeats): 30 samples",
        "- Batch size: 2 samples per step",
        "- Steps per epoch: 15 steps",
        "- Resolution: 512×512 pixels (width × height)",
        "- Caption length: longest 12 tokens, mean 8.5 tokens; 0 captions over the 75-token limit",
        "- Folder `/d/10_sks` (train): 3 pictures × 10 repeats",
        "- ❌ **unreadable**: cannot be read (1 files)",
        "- ⚠️ **no_caption**: no caption",
    ]
