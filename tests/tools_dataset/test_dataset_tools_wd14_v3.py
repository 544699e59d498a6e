"""WD14 tagger, sd-scripts' later options: --output_path (JSON/JSONL), v3 categories and their
thresholds, quality tags and --character_tag_expand."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from library.errors import ModelLoadError
from library.tools.dataset.wd14 import TagSelection, expand_character_tag, select_tags
from library.tools.dataset.wd14_model import (
    CATEGORY_BY_NAME,
    CATEGORY_QUALITY,
    TagTable,
    load_tag_table,
    parse_category,
)
from tests.tools_dataset.helpers import solid

ROOT = Path(__file__).resolve().parents[2]
RED, GREEN = (255, 0, 0), (0, 255, 0)
RED_TAGS = "solo, red, long_hair, ^_^, simple_background, red_hood"

# The tiny tagger's 13 output columns renamed as a v3-style table (category numbers and names mixed).
# Probabilities for red / green pictures are in tiny_tagger.TINY_TAGS.
V3_ROWS = [
    ("general", "9"),  # .5 / .5
    ("sensitive", "9"),  # .9 / 0
    ("masterpiece", "Quality"),  # 0 / .9
    ("normal_quality", "quality"),  # .1 / .1
    ("solo", "0"),  # .9 / .9
    ("red_artist", "1"),  # 1 / 0
    ("green_series", "3"),  # 0 / 1
    ("blue_model", "Model"),  # 0 / 0
    ("highres", "5"),  # .5 / .5
    ("^_^", "0"),  # .8 / 0
    ("red_series", "copyright"),  # .6 / .6
    ("miku_(vocaloid)", "4"),  # 0 / .7
    ("little_red_(costume)_(folk_tale)", "Character"),  # .8 / 0
]
V3_RED = "solo, red_artist, highres, ^_^, red_series, little_red_(costume)_(folk_tale)"
V3_GREEN = "solo, green_series, highres, red_series, miku_(vocaloid)"


def tag(folder: Path, model_dir: Path, *options: str) -> int:
    spec = importlib.util.spec_from_file_location(
        "wd14_tool", ROOT / "tools" / "tag_images_by_wd14_tagger.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main([str(folder), "--model_dir", str(model_dir), "--repo_id", "", *map(str, options)])


def caption(folder: Path, name: str) -> str:
    return (folder / name).with_suffix(".txt").read_text(encoding="utf-8").strip()


@pytest.fixture
def red_green(tmp_path):
    folder = tmp_path / "pics"
    solid(folder / "a_red.png", RED)
    solid(folder / "b_green.png", GREEN)
    return folder


@pytest.fixture
def v3_tagger_dir(tmp_path, tiny_tagger_dir):
    """The tiny tagger's model with the :data:`V3_ROWS` tag table."""
    folder = tmp_path / "v3_tagger"
    folder.mkdir()
    shutil.copy(tiny_tagger_dir / "model.onnx", folder / "model.onnx")
    with (folder / "selected_tags.csv").open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["tag_id", "name", "category", "count"])
        writer.writerows([i, name, category, 10] for i, (name, category) in enumerate(V3_ROWS))
    return folder


# --- --output_path ---------------------------------------------------------------------------------


def test_output_path_writes_one_json_and_no_caption_files(red_green, tiny_tagger_dir, tmp_path, capsys):
    solid(red_green / "c_white.png", (255, 255, 255), (40, 30))  # white padding keeps the mean colour
    out = tmp_path / "meta" / "tags.json"
    assert tag(red_green, tiny_tagger_dir, "--output_path", out) == 0
    assert sorted(p.name for p in red_green.iterdir()) == ["a_red.png", "b_green.png", "c_white.png"]
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data == {
        str(red_green / "a_red.png"): {"tags": RED_TAGS, "image_size": [32, 32]},
        str(red_green / "b_green.png"): {
            "tags": "solo, green, long_hair, simple_background, hatsune_miku",
            "image_size": [32, 32],
        },
        str(red_green / "c_white.png"): {
            "tags": "solo, red, green, blue, long_hair, ^_^, simple_background, hatsune_miku, red_hood",
            "image_size": [40, 30],
        },
    }
    assert out.read_text(encoding="utf-8").startswith('{\n    "')  # indent 4 as sd-scripts
    assert [p.name for p in out.parent.iterdir()] == ["tags.json"]  # no temporary file left
    assert f"tags written to {out}" in capsys.readouterr().out


def test_output_path_jsonl_and_append_tags(red_green, tiny_tagger_dir, tmp_path):
    (red_green / "a_red.txt").write_text("my own words, red\n", encoding="utf-8")
    out = tmp_path / "tags.jsonl"
    assert tag(red_green, tiny_tagger_dir, "--output_path", out, "--append_tags", "--thresh", "0.95") == 0
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert lines == [
        {"image_path": str(red_green / "a_red.png"), "caption": "my own words, red", "image_size": [32, 32]},
        {"image_path": str(red_green / "b_green.png"), "caption": "green", "image_size": [32, 32]},
    ]
    assert caption(red_green, "a_red") == "my own words, red"  # caption file left alone
    assert not (red_green / "b_green.txt").exists()


def test_output_path_is_replaced_atomically_on_a_second_run(red_green, tiny_tagger_dir, tmp_path):
    out = tmp_path / "tags.json"
    out.write_text("old", encoding="utf-8")
    assert tag(red_green, tiny_tagger_dir, "--output_path", out, "--thresh", "0.95") == 0
    assert json.loads(out.read_text(encoding="utf-8"))[str(red_green / "a_red.png")]["tags"] == "red"


# --- v3 categories ---------------------------------------------------------------------------------


def test_category_mapping_numbers_and_names():
    assert [parse_category(v) for v in ("0", "1", "3", "4", "5", "9")] == [0, 1, 3, 4, 5, 9]
    assert parse_category(" Quality ") == CATEGORY_QUALITY == CATEGORY_BY_NAME["quality"]
    assert {name: parse_category(name.capitalize()) for name in CATEGORY_BY_NAME} == CATEGORY_BY_NAME
    with pytest.raises(ValueError, match="'Banana'"):
        parse_category("Banana")


def test_unknown_category_word_is_a_clear_error(tmp_path):
    path = tmp_path / "selected_tags.csv"
    path.write_text("tag_id,name,category,count\n1,solo,0,5\n2,odd,Banana,3\n", encoding="utf-8")
    with pytest.raises(ModelLoadError, match="selected_tags.csv.*Banana"):
        load_tag_table(path)


def test_v3_categories_default_to_thresh(red_green, v3_tagger_dir):
    assert tag(red_green, v3_tagger_dir) == 0
    assert caption(red_green, "a_red") == V3_RED
    assert caption(red_green, "b_green") == V3_GREEN


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--artist_threshold", "1.5"], "solo, highres, ^_^, red_series, little_red_(costume)_(folk_tale)"),
        (["--meta_threshold", "0.55"], "solo, red_artist, ^_^, red_series, little_red_(costume)_(folk_tale)"),
        (["--copyright_threshold", "2"], "solo, red_artist, highres, ^_^, little_red_(costume)_(folk_tale)"),
        (
            ["--model_threshold", "0"],
            "solo, red_artist, blue_model, highres, ^_^, red_series, little_red_(costume)_(folk_tale)",
        ),
        (["--thresh", "0.7"], "solo, red_artist, ^_^, little_red_(costume)_(folk_tale)"),
        (
            ["--thresh", "0.7", "--meta_threshold", "0.4"],
            "solo, red_artist, highres, ^_^, little_red_(costume)_(folk_tale)",
        ),
        (["--general_threshold", "1.1", "--character_threshold", "1.1"], "red_artist, highres, red_series"),
        (["--use_quality_tags"], "normal_quality, " + V3_RED),
        (["--use_quality_tags", "--use_rating_tags"], "sensitive, normal_quality, " + V3_RED),
        (
            ["--use_quality_tags_as_last_tag", "--use_rating_tags_as_last_tag"],
            V3_RED + ", normal_quality, sensitive",
        ),
        (
            ["--use_quality_tags", "--use_rating_tags_as_last_tag"],
            "normal_quality, " + V3_RED + ", sensitive",
        ),
        (["--use_quality_tags", "--undesired_tags", "normal_quality"], V3_RED),
        (
            ["--character_tags_first", "--thresh", "0.7"],
            "little_red_(costume)_(folk_tale), solo, red_artist, ^_^",
        ),
    ],
)
def test_v3_thresholds_and_quality(red_green, v3_tagger_dir, options, expected):
    assert tag(red_green, v3_tagger_dir, *options) == 0
    assert caption(red_green, "a_red") == expected


def test_quality_is_the_argmax_of_the_quality_columns(red_green, v3_tagger_dir):
    assert tag(red_green, v3_tagger_dir, "--use_quality_tags_as_last_tag") == 0
    assert caption(red_green, "a_red") == V3_RED + ", normal_quality"
    assert caption(red_green, "b_green") == V3_GREEN + ", masterpiece"


def test_quality_option_without_quality_rows_changes_nothing(red_green, tiny_tagger_dir):
    assert tag(red_green, tiny_tagger_dir, "--use_quality_tags") == 0
    assert caption(red_green, "a_red") == RED_TAGS


# --- --character_tag_expand ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "parts"),
    [
        ("chara_name_(series)", ["chara_name", "series"]),
        ("chara_name_(costume)_(series)", ["chara_name_(costume)", "series"]),
        ("name(series)", ["name", "series"]),
        ("hatsune_miku", ["hatsune_miku"]),
        (":)", [":)"]),
        ("(series)", ["series"]),
    ],
)
def test_expand_character_tag(name, parts):
    assert expand_character_tag(name) == parts


def test_character_tag_expand_cli(red_green, v3_tagger_dir):
    assert tag(red_green, v3_tagger_dir, "--character_tag_expand", "--overwrite") == 0
    assert caption(red_green, "a_red") == V3_RED.replace("_(folk_tale)", ", folk_tale")
    assert caption(red_green, "b_green") == "solo, green_series, highres, red_series, miku, vocaloid"
    options = ("--character_tag_expand", "--remove_underscore", "--character_tags_first", "--overwrite")
    assert tag(red_green, v3_tagger_dir, *options) == 0
    assert (
        caption(red_green, "a_red")
        == "little red (costume), folk tale, solo, red artist, highres, ^_^, red series"
    )


def test_character_tag_expand_only_touches_character_tags():
    table = TagTable(("a_(b)", "c_(d)"), np.array([0, 4]))
    probs = np.array([0.9, 0.9], dtype=np.float32)
    assert select_tags(probs, table, TagSelection(character_tag_expand=True)) == ["a_(b)", "c", "d"]
    assert select_tags(probs, table, TagSelection()) == ["a_(b)", "c_(d)"]
    # the expanded series tag is deduplicated against a general tag of the same name
    table = TagTable(("d", "c_(d)"), np.array([0, 4]))
    assert select_tags(probs, table, TagSelection(character_tag_expand=True)) == ["d", "c"]
