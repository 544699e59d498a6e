"""sd-scripts' metadata preparation tools: merge captions, merge tags, clean captions and tags (fast, no model)."""

from __future__ import annotations

import pytest

from library.errors import UserError
from library.tools.dataset.finetune_metadata import clean_caption, clean_tags, parse_max_resolution
from tests.finetune.ft_helpers import make_pictures, read_json, tool_main, write_json


def test_merge_captions_then_tags(tmp_path, capsys):
    make_pictures(tmp_path / "img", [(16, 16), (16, 16)])
    assert tool_main("merge_captions_to_metadata")([str(tmp_path / "img"), str(tmp_path / "cap.json")]) == 0
    assert read_json(tmp_path / "cap.json") == {
        "img0": {"caption": "a photo of a disc 0"},
        "img1": {"caption": "a photo of a disc 1"},
    }
    assert "merged 2 captions" in capsys.readouterr().out
    code = tool_main("merge_dd_tags_to_metadata")(
        [str(tmp_path / "img"), str(tmp_path / "dd.json"), "--in_json", str(tmp_path / "cap.json")]
    )
    assert code == 0
    assert read_json(tmp_path / "dd.json")["img1"] == {
        "caption": "a photo of a disc 1",
        "tags": "red_disc, white_shirt, shirt, tag_1",
    }
    assert read_json(tmp_path / "cap.json") == {
        "img0": {"caption": "a photo of a disc 0"},
        "img1": {"caption": "a photo of a disc 1"},
    }  # input left alone


def test_merge_full_path_existing_out_json_and_old_spelling(tmp_path):
    pictures = make_pictures(tmp_path / "img", [(16, 16), (16, 16)])
    (tmp_path / "img" / "img1.caption").unlink()
    (tmp_path / "img" / "img0.cap").write_text("other text", encoding="utf-8")
    out = write_json(tmp_path / "m.json", {str(pictures[1]): {"tags": "kept"}})
    # without --in_json an existing OUT_JSON is read and updated (sd-scripts)
    code = tool_main("merge_captions_to_metadata")(
        [str(tmp_path / "img"), str(out), "--full_path", "--caption_extention", ".cap"]
    )
    assert code == 0
    assert read_json(out) == {str(pictures[1]): {"tags": "kept"}, str(pictures[0]): {"caption": "other text"}}


def test_merge_recursive_needs_full_path(tmp_path, capsys):
    make_pictures(tmp_path / "img", [(16, 16)])
    code = tool_main("merge_dd_tags_to_metadata")(
        [str(tmp_path / "img"), str(tmp_path / "m.json"), "--recursive"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "--full_path" in err and "Traceback" not in err
    assert not (tmp_path / "m.json").exists()


def test_merge_bad_in_json_is_one_paragraph(tmp_path, capsys):
    make_pictures(tmp_path / "img", [(16, 16)])
    (tmp_path / "bad.json").write_text("{'img0': 1}", encoding="utf-8")
    code = tool_main("merge_captions_to_metadata")(
        [str(tmp_path / "img"), str(tmp_path / "m.json"), "--in_json", str(tmp_path / "bad.json")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "bad.json" in err and "not valid JSON" in err and "Traceback" not in err


# expected values computed with sd-scripts' own finetune/clean_captions_and_tags.py
@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        (
            "1girl, solo, long_hair, blonde_hair, blue_eyes, white_shirt, shirt, smile",
            "1girl, solo, long hair, blonde hair, blue eyes, white shirt, smile",
        ),
        (
            "2girls, long hair, short hair, blonde hair, black hair, blue eyes, red eyes, smile",
            "2girls, smile",
        ),
        (
            "2girls, long hair, blonde hair, black hair, ponytail, twintails, hair ornament, star hair ornament",
            "2girls, long hair, star hair ornament",
        ),
        ("1girl, ^_^, smile_face, rating:safe, rating:general", "1girl, ^_^, smile face"),
        (
            "multiple boys, long sleeves, sleeveless, white shirt, shirt, skirt, pleated skirt",
            "multiple boys, white shirt, pleated skirt",
        ),
        (
            "1girl, long hair, blonde hair, hair bun, double bun",
            "1girl, long hair, blonde hair, hair bun, double bun",
        ),
        ("2girls, long hair, blonde hair, brown hair, short hair", "2girls"),
        ("1girl, dress, white dress, black dress, rating:explicit", "1girl, white dress, black dress"),
        ("solo", "solo"),
        ("", ""),
    ],
)
def test_clean_tags_as_sd_scripts(tags, expected):
    assert clean_tags("key", tags) == expected


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        ("a young anime girl with a cartoon woman", "a girl with a girl"),
        ("a cartoon anime drawing of a person and people", "a drawing of a girl and girls"),
        ("anime anime anime girl girl girl", "girl"),
        ("a lady and a female person", "a girl and a girl"),
        ("a dog on grass", "a dog on grass"),
    ],
)
def test_clean_caption_as_sd_scripts(caption, expected):
    assert clean_caption(caption) == expected


def test_clean_tool_both_argument_forms(tmp_path, capsys):
    meta = write_json(
        tmp_path / "in.json",
        {
            "a": {"caption": "a cartoon woman", "tags": "1girl, white_shirt, shirt"},
            "b": {"caption": "a cat", "train_resolution": [64, 64]},
        },
    )
    assert tool_main("clean_captions_and_tags")([str(meta), str(tmp_path / "out.json")]) == 0
    assert read_json(tmp_path / "out.json") == {
        "a": {"caption": "a girl", "tags": "1girl, white shirt"},
        "b": {"caption": "a cat", "train_resolution": [64, 64]},
    }
    assert "1 entries have no tags: b" in capsys.readouterr().err  # logged as sd-scripts does
    # sd-scripts' old form TRAIN_DATA_DIR IN_JSON OUT_JSON
    assert tool_main("clean_captions_and_tags")([str(tmp_path), str(meta), str(tmp_path / "old.json")]) == 0
    assert read_json(tmp_path / "old.json") == read_json(tmp_path / "out.json")


@pytest.mark.parametrize(
    ("text", "expected"), [("512,768", (512, 768)), ("640", (640, 640)), (" 64 , 32", (64, 32))]
)
def test_parse_max_resolution(text, expected):
    assert parse_max_resolution(text) == expected


@pytest.mark.parametrize("text", ["512x512", "0,512", "a,b", "1,2,3"])
def test_parse_max_resolution_refuses(text):
    with pytest.raises(UserError, match="max_resolution"):
        parse_max_resolution(text)
