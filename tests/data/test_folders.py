from __future__ import annotations

import logging

import pytest
from data_helpers import make_concept, make_image

from library.data.folders import discover_concept_folders, is_image_file, list_images, parse_folder_name
from library.errors import DatasetError


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("10_sls 1girl", (10, "sls 1girl")),
        ("40_black_mamba", (40, "black_mamba")),
        ("1_1girl", (1, "1girl")),
        ("007_x", (7, "x")),
        ("5_", (5, "")),
        ("foo", None),
        ("x_foo", None),
        ("10 sls", None),
        ("-1_neg", None),
        ("1.5_a", None),
        ("_10", None),
    ],
)
def test_parse_folder_name(name, expected):
    assert parse_folder_name(name) == expected


def test_list_images_sorted_any_case_non_recursive(tmp_path):
    for name in ["b.PNG", "a.jpg", "c.JPEG", "d.webp", "e.BmP", "notes.txt", "f.gif"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "z.png").write_bytes(b"x")
    (tmp_path / "dir.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.JPEG", "d.webp", "e.BmP"]
    assert not is_image_file(tmp_path / "dir.png")


def test_discover_valid_and_skips_unprefixed_with_warning(tmp_path, caplog):
    make_concept(tmp_path / "10_sls 1girl", [(8, 8), (8, 8)])
    make_concept(tmp_path / "2_black_mamba", [(8, 8)])
    make_concept(tmp_path / "raw pictures", [(8, 8)])
    (tmp_path / "3_empty").mkdir()
    with caplog.at_level(logging.WARNING):
        found = discover_concept_folders(tmp_path)
    assert [(f.path.name, f.repeats, f.class_tokens, len(f.images)) for f in found] == [
        ("10_sls 1girl", 10, "sls 1girl", 2),
        ("2_black_mamba", 2, "black_mamba", 1),
    ]
    assert "raw pictures" in caplog.text and "10_raw pictures" in caplog.text
    assert "3_empty" in caplog.text


def test_leaf_folder_with_images_is_explained(tmp_path):
    leaf = tmp_path / "10_sls"
    make_concept(leaf, [(8, 8)])
    with pytest.raises(DatasetError) as err:
        discover_concept_folders(leaf)
    msg = str(err.value)
    assert "PARENT" in msg and f"'{tmp_path}'" in msg and f"'{leaf}'" in msg


def test_leaf_folder_by_name_only(tmp_path):
    leaf = tmp_path / "5_dog"
    leaf.mkdir()
    with pytest.raises(DatasetError, match="PARENT"):
        discover_concept_folders(leaf)


def test_images_directly_inside_unprefixed_root_is_leaf_error(tmp_path):
    make_image(tmp_path / "a.png", (8, 8))
    with pytest.raises(DatasetError, match="train_data_dir must be the PARENT"):
        discover_concept_folders(tmp_path)


def test_only_unprefixed_folders_names_them_and_the_fix(tmp_path):
    make_concept(tmp_path / "dog", [(8, 8)])
    make_concept(tmp_path / "cat", [(8, 8)])
    with pytest.raises(DatasetError) as err:
        discover_concept_folders(tmp_path, "reg_data_dir")
    msg = str(err.value)
    assert "'cat' -> '10_cat'" in msg and "'dog' -> '10_dog'" in msg and "reg_data_dir" in msg


@pytest.mark.parametrize("kind", ["missing", "file", "empty", "empty_concept", "zero_repeats"])
def test_missing_or_empty(tmp_path, kind):
    root = tmp_path / "data"
    if kind == "file":
        root.write_text("x")
    elif kind != "missing":
        root.mkdir()
    if kind == "empty_concept":
        (root / "10_dog").mkdir()
    if kind == "zero_repeats":
        make_concept(root / "0_dog", [(8, 8)])
    expected = {
        "missing": "does not exist",
        "file": "is a file",
        "empty": "is empty",
        "empty_concept": "no images",
        "zero_repeats": "0 repeats",
    }[kind]
    with pytest.raises(DatasetError, match=expected):
        discover_concept_folders(root)
