from __future__ import annotations

import json
from pathlib import Path

import pytest
from data_helpers import make_concept

from library.data.dataset_config import parse_resolution, specs_from_dataset_config, specs_from_folders
from library.errors import DatasetError

FIXTURES = Path(__file__).parent / "fixtures"


def write_toml(tmp_path, text):
    path = tmp_path / "ds.toml"
    path.write_text(text, encoding="utf-8")
    return path


MINIMAL = """
[[datasets]]
[[datasets.subsets]]
image_dir = 'imgs'
"""


def test_readme_example_parses():
    specs = specs_from_dataset_config(FIXTURES / "config_readme_example.toml", {})
    assert len(specs) == 1
    ds = specs[0]
    assert (ds.resolution, ds.batch_size, ds.enable_bucket) == ((512, 512), 4, False)
    hoge, reg = ds.subsets
    assert (hoge.image_dir, hoge.class_tokens, hoge.is_reg) == (Path("hoge"), "hoge girl", False)
    assert (reg.image_dir, reg.class_tokens, reg.is_reg) == (Path("reg"), "human", True)
    for sub in ds.subsets:
        assert (sub.shuffle_caption, sub.caption_extension, sub.keep_tokens) == (True, ".txt", 1)


def test_two_datasets_example_parses_with_lookup_order():
    specs = specs_from_dataset_config(FIXTURES / "config_two_datasets.toml", {"train_batch_size": 9})
    first, second = specs
    assert [s.keep_tokens for s in first.subsets] == [2, 3, 1]
    assert [s.num_repeats for s in first.subsets] == [10, 5, 1]
    assert all(s.flip_aug for s in first.subsets)
    assert (first.resolution, first.batch_size) == ((512, 512), 4)
    assert (second.resolution, second.batch_size, second.enable_bucket) == ((768, 512), 2, True)
    piyo = second.subsets[0]
    assert piyo.keep_tokens == 1 and piyo.flip_aug is False and piyo.color_aug and piyo.random_crop
    assert (piyo.caption_prefix, piyo.keep_tokens_separator, piyo.secondary_separator) == (
        "masterpiece",
        "|||",
        ";;;",
    )
    assert piyo.caption_dropout_rate == pytest.approx(0.05) and isinstance(
        piyo.caption_tag_dropout_rate, float
    )
    assert piyo.caption_extension == ".txt" and piyo.class_tokens is None


def test_defaults_from_training_config_are_lowest(tmp_path):
    defaults = {
        "train_batch_size": 3,
        "resolution": "640,448",
        "caption_extension": ".caption",
        "shuffle_caption": True,
        "learning_rate": 1e-4,  # unrelated keys are ignored
    }
    (ds,) = specs_from_dataset_config(
        write_toml(tmp_path, "[general]\nshuffle_caption = false\n" + MINIMAL), defaults
    )
    assert (ds.batch_size, ds.resolution) == (3, (640, 448))
    assert ds.subsets[0].caption_extension == ".caption" and ds.subsets[0].shuffle_caption is False


def test_json_config(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(
        json.dumps(
            {"datasets": [{"resolution": [256, 320], "subsets": [{"image_dir": "a", "num_repeats": 4}]}]}
        )
    )
    (ds,) = specs_from_dataset_config(path, {})
    assert ds.resolution == (256, 320) and ds.subsets[0].num_repeats == 4


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("[general]\nshufle_caption = true\n" + MINIMAL, ["shufle_caption", "[general]", "shuffle_caption"]),
        (
            "[[datasets]]\nbatchsize = 2\n[[datasets.subsets]]\nimage_dir='a'\n",
            ["batchsize", "[[datasets]]", "batch_size"],
        ),
        (
            "[[datasets]]\n[[datasets.subsets]]\nimage_dir='a'\nnum_repeat = 2\n",
            ["num_repeat", "[[datasets.subsets]]", "num_repeats"],
        ),
        (
            "[[datasets]]\n[[datasets.subsets]]\nimage_dir='a'\nbatch_size = 2\n",
            ["batch_size", "dataset-level"],
        ),
        ("[general]\nimage_dir = 'a'\n" + MINIMAL, ["image_dir", "only allowed in [[datasets.subsets]]"]),
        ("[[datasets]]\nis_reg = true\n[[datasets.subsets]]\nimage_dir='a'\n", ["is_reg", "only allowed"]),
        ("[[datasets]]\n[[datasets.subsets]]\nclass_tokens = 'x'\n", ["image_dir", "required"]),
        ("[general]\nshuffle_caption = 'yes'\n" + MINIMAL, ["shuffle_caption", "true or false"]),
        ("[general]\nkeep_tokens = 1.5\n" + MINIMAL, ["keep_tokens", "an integer"]),
        ("[general]\nbatch_size = true\n" + MINIMAL, ["batch_size", "an integer"]),
        ("[general]\nresolution = [512]\n" + MINIMAL, ["resolution"]),
        ("[general]\ncaption_dropout_rate = 2\n" + MINIMAL, ["caption_dropout_rate", "between 0 and 1"]),
        ("[general]\nmin_bucket_reso = 2048\n" + MINIMAL, ["min_bucket_reso", "max_bucket_reso"]),
        ("[generals]\n" + MINIMAL, ["generals", "general"]),
        ("[general]\n", ["[[datasets]]"]),
        ("[[datasets]]\nresolution = 512\n", ["[[datasets.subsets]]"]),
        ("[[datasets]]\n[[datasets.subsets]]\nmetadata_file = 'm.json'\n[[datasets.subsets]]\nimage_dir = 'a'\n",
         ["metadata_file", "cannot mix"]),
        ("[general]\nface_crop_aug_range = [2.0, 4.0]\n" + MINIMAL, ["face_crop_aug_range", "not supported"]),
        ("[general\n", ["cannot be parsed"]),
    ],
)
def test_strict_validation(tmp_path, text, needles):
    with pytest.raises(DatasetError) as err:
        specs_from_dataset_config(write_toml(tmp_path, text), {})
    for needle in needles:
        assert needle in str(err.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        specs_from_dataset_config(tmp_path / "nope.toml", {})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (512, (512, 512)),
        ("512", (512, 512)),
        ("768,512", (768, 512)),
        ([640, 448], (640, 448)),
        ((1, 2), (1, 2)),
    ],
)
def test_parse_resolution(value, expected):
    assert parse_resolution(value, "x") == expected


@pytest.mark.parametrize("value", ["abc", "1,2,3", 0, [512, "a"], True, 5.5, "-1"])
def test_parse_resolution_errors(value):
    with pytest.raises(DatasetError, match="resolution"):
        parse_resolution(value, "x")


def test_specs_from_folders(tmp_path):
    make_concept(tmp_path / "train" / "10_sls 1girl", [(8, 8)])
    make_concept(tmp_path / "train" / "3_hat", [(8, 8)])
    make_concept(tmp_path / "reg" / "1_1girl", [(8, 8)])
    defaults = {
        "train_batch_size": 2,
        "resolution": 256,
        "keep_tokens": 1,
        "flip_aug": True,
        "enable_bucket": True,
    }
    (ds,) = specs_from_folders(tmp_path / "train", tmp_path / "reg", defaults)
    assert (ds.batch_size, ds.resolution, ds.enable_bucket) == (2, (256, 256), True)
    assert [(s.image_dir.name, s.num_repeats, s.class_tokens, s.is_reg) for s in ds.subsets] == [
        ("10_sls 1girl", 10, "sls 1girl", False),
        ("3_hat", 3, "hat", False),
        ("1_1girl", 1, "1girl", True),
    ]
    assert all(s.keep_tokens == 1 and s.flip_aug for s in ds.subsets)


def test_num_repeats_that_cannot_fit_are_refused(tmp_path):
    from library.data.dataset_config import _check_ranges
    from library.errors import DatasetError

    with pytest.raises(DatasetError, match="'num_repeats' = 1000000000 is more than 10000"):
        _check_ranges({"num_repeats": 1_000_000_000}, "dataset.toml [[datasets.subsets]] 1")
    _check_ranges({"num_repeats": 10_000}, "dataset.toml")
