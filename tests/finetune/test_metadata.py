"""The metadata JSON as the dataset reads it: format, captions + tags, image keys, errors, dataset specs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from library.data.dataset import TrainDataset
from library.data.dataset_config import specs_from_dataset_config, specs_from_in_json
from library.data.metadata import (
    entry_caption,
    metadata_captions,
    read_metadata,
    resolve_image,
    write_metadata,
)
from library.errors import DatasetError
from tests.finetune.ft_helpers import make_pictures, write_json


@pytest.mark.parametrize(
    ("entry", "separator", "expected"),
    [
        (
            {"caption": "a dog", "tags": "dog, grass"},
            ",",
            "a dog,dog, grass",
        ),  # sd-scripts: caption + separator + tags
        ({"caption": "a dog", "tags": "dog"}, ";", "a dog;dog"),
        ({"caption": "a dog"}, ",", "a dog"),
        ({"tags": "dog, grass"}, ",", "dog, grass"),
        ({"caption": "", "tags": "dog"}, ",", "dog"),
        ({"caption": "a dog", "tags": ""}, ",", "a dog"),
        ({"caption": "a dog\n", "tags": "dog"}, ",", "a dog,dog"),
        (
            {"caption": "a dog\na {red|blue} ball\n", "tags": "dog\nball"},
            ",",
            "a dog,dog,ball\na {red|blue} ball,dog,ball",
        ),
        ({"caption": None, "tags": None, "train_resolution": [64, 64]}, ",", None),
        ({"train_resolution": [64, 64]}, ",", None),
    ],
)
def test_entry_caption(entry, separator, expected):
    assert entry_caption(entry, separator) == expected


def test_read_json_and_jsonl_and_write_round_trip(tmp_path):
    data = {
        "img0": {"caption": "a cat", "tags": "cat", "train_resolution": [64, 32]},
        "sub/ü.png": {"tags": "x"},
    }
    write_metadata(tmp_path / "m.json", data)
    text = (tmp_path / "m.json").read_text(encoding="utf-8")
    assert json.loads(text) == data and text.startswith('{\n  "img0"')  # indent 2, as sd-scripts writes
    assert read_metadata(tmp_path / "m.json") == data
    lines = [
        '{"image_path": "/p/a.png", "caption": "one", "image_size": [10, 20]}',
        "",
        '{"image_path": "b.png", "tags": "t"}',
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(lines), encoding="utf-8")
    assert read_metadata(tmp_path / "m.jsonl") == {
        "/p/a.png": {"caption": "one", "image_size": [10, 20]},
        "b.png": {"tags": "t"},
    }


@pytest.mark.parametrize(
    ("name", "text", "needles"),
    [
        (
            "bad.json",
            '{"img0": {"caption": "a"},\n "img1": {"caption": "b",}}',
            ["bad.json", "line 2", "not valid JSON"],
        ),
        ("list.json", '[{"caption": "a"}]', ["list.json", "list", "image key"]),
        ("entry.json", '{"img0": "a cat"}', ["entry.json", "'img0'", "not an object"]),
        (
            "cap.json",
            '{"img0": {"caption": ["a", "b"]}}',
            ["cap.json", "'img0'", '"caption" must be a string'],
        ),
        (
            "reso.json",
            '{"img7": {"caption": "a", "train_resolution": [64]}}',
            ["reso.json", "'img7'", "train_resolution", "[width, height]"],
        ),
        (
            "lines.jsonl",
            '{"image_path": "a.png"}\n{"caption": "no path"}\n',
            ["lines.jsonl", "line 2", "image_path"],
        ),
        (
            "broken.jsonl",
            '{"image_path": "a.png"}\n{"image_path": \n',
            ["broken.jsonl", "line 2", "not valid JSON"],
        ),
    ],
)
def test_bad_files_name_the_file_and_key(tmp_path, name, text, needles):
    (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises(DatasetError) as err:
        read_metadata(tmp_path / name)
    for needle in needles:
        assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(
        DatasetError, match=r"in_json '.*nope.json' does not exist.*merge_captions_to_metadata"
    ):
        read_metadata(tmp_path / "nope.json")


def test_resolve_image_keys(tmp_path, monkeypatch):
    make_pictures(tmp_path / "img", [(16, 16)], captions=False, tags=False)
    (tmp_path / "img" / "IMG9.JPG").write_bytes(b"x")
    picture = tmp_path / "img" / "img0.png"
    assert resolve_image("img0", tmp_path / "img") == picture  # stem key (sd-scripts' default)
    assert resolve_image("img0.png", tmp_path / "img") == picture  # relative name
    assert resolve_image("IMG9", tmp_path / "img") == tmp_path / "img" / "IMG9.JPG"  # upper-case extension
    assert resolve_image(str(picture), None) == picture  # --full_path key
    monkeypatch.chdir(tmp_path)
    assert resolve_image("img/img0.png", None) == Path(
        "img/img0.png"
    )  # --full_path written from a relative folder
    assert resolve_image("img1", tmp_path / "img") is None


def test_captions_errors_name_file_and_keys(tmp_path):
    make_pictures(tmp_path / "img", [(16, 16), (16, 16)], captions=False, tags=False)
    no_text = write_json(
        tmp_path / "no_text.json", {"img0": {"caption": "a"}, "img1": {"train_resolution": [16, 16]}}
    )
    with pytest.raises(DatasetError) as err:
        metadata_captions(no_text, tmp_path / "img")
    assert "no_text.json" in str(err.value) and "'img1'" in str(err.value) and "neither" in str(err.value)
    missing = write_json(tmp_path / "missing.json", {"img0": {"caption": "a"}, "gone": {"caption": "b"}})
    with pytest.raises(DatasetError) as err:
        metadata_captions(missing, tmp_path / "img")
    assert (
        "missing.json" in str(err.value) and "'gone'" in str(err.value) and "train_data_dir" in str(err.value)
    )
    assert metadata_captions(
        write_json(tmp_path / "ok.json", {"img0": {"caption": "a", "tags": "b"}}), tmp_path / "img"
    ) == {tmp_path / "img" / "img0.png": "a,b"}


def test_in_json_dataset_items(tmp_path):
    make_pictures(tmp_path / "img", [(16, 16), (32, 16)], captions=False, tags=False)
    meta = write_json(
        tmp_path / "meta.json", {"img0": {"caption": "first", "tags": "t1, t2"}, "img1": {"tags": "t2"}}
    )
    specs = specs_from_in_json(meta, tmp_path / "img", 3, {"resolution": "16", "caption_separator": ", "})
    subset = specs[0].subsets[0]
    assert (subset.metadata_file, subset.image_dir, subset.num_repeats) == (meta, tmp_path / "img", 3)
    data = TrainDataset(specs, max_workers=1)
    assert {it.path.name: it.caption for it in data.items} == {"img0.png": "first, t1, t2", "img1.png": "t2"}
    assert {it.caption_source for it in data.items} == {"metadata"}
    assert data.num_train_images == 6
    assert data.dataset_dirs() == {
        "meta.json": {"n_repeats": 3, "img_count": 2}
    }  # sd-scripts names it by the file
    assert data.tag_frequency() == {"meta.json": {"first": 1, "t1": 1, "t2": 2}}


def test_dataset_config_metadata_subsets(tmp_path, monkeypatch):
    make_pictures(tmp_path / "a", [(16, 16)], captions=False, tags=False)
    make_pictures(tmp_path / "b", [(16, 16), (16, 16)], captions=False, tags=False)
    write_json(tmp_path / "a" / "a.json", {"img0": {"caption": "in a"}})
    write_json(
        tmp_path / "b.json", {str(tmp_path / "b" / "img0.png"): {"tags": "x"}, "img1": {"caption": "y"}}
    )
    (tmp_path / "ds.toml").write_text(
        "[general]\nresolution = 16\n[[datasets]]\n"
        "[[datasets.subsets]]\nmetadata_file = 'a/a.json'\nnum_repeats = 2\nflip_aug = true\n"  # image_dir: its folder
        "[[datasets.subsets]]\nmetadata_file = 'b.json'\nimage_dir = 'b'\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    specs = specs_from_dataset_config(tmp_path / "ds.toml", {})
    first, second = specs[0].subsets
    assert (first.image_dir, first.num_repeats, first.flip_aug) == (Path("a"), 2, True)
    data = TrainDataset(specs, max_workers=1)
    assert sorted((it.folder, it.path.name, it.caption, it.repeats) for it in data.items) == [
        ("a.json", "img0.png", "in a", 2),
        ("b.json", "img0.png", "x", 1),
        ("b.json", "img1.png", "y", 1),
    ]


@pytest.mark.parametrize(
    ("subsets", "needles"),
    [
        (
            "[[datasets.subsets]]\nmetadata_file = 'm.json'\n[[datasets.subsets]]\nimage_dir = 'img'\n",
            ["cannot mix", "metadata_file"],
        ),
        (
            "[[datasets.subsets]]\nmetadata_file = 'm.json'\nis_reg = true\n",
            ["is_reg", "m.json", "regularisation"],
        ),
        ("[[datasets.subsets]]\nnum_repeats = 2\n", ["image_dir", "metadata_file"]),
    ],
)
def test_dataset_config_metadata_rules(tmp_path, subsets, needles):
    (tmp_path / "ds.toml").write_text("[[datasets]]\n" + subsets, encoding="utf-8")
    with pytest.raises(DatasetError) as err:
        specs_from_dataset_config(tmp_path / "ds.toml", {})
    for needle in needles:
        assert needle in str(err.value)


def test_dataset_repeats_is_the_num_repeats_fallback(tmp_path):
    """sd-scripts maps --dataset_repeats onto num_repeats of dataset_config subsets that set none."""
    make_pictures(tmp_path / "a", [(16, 16)], captions=False, tags=False)
    write_json(tmp_path / "a" / "m.json", {"img0": {"caption": "x"}})
    (tmp_path / "ds.toml").write_text(
        f"[[datasets]]\n[[datasets.subsets]]\nmetadata_file = '{tmp_path / 'a' / 'm.json'}'\n"
        f"[[datasets.subsets]]\nmetadata_file = '{tmp_path / 'a' / 'm.json'}'\nimage_dir = '{tmp_path / 'a'}'\n"
        "num_repeats = 2\n",
        encoding="utf-8",
    )
    specs = specs_from_dataset_config(tmp_path / "ds.toml", {"dataset_repeats": 5})
    assert [s.num_repeats for s in specs[0].subsets] == [5, 2]
