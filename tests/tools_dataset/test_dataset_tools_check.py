"""The dataset doctor: planted problems are found, the exit code follows errors; hashes; JSON output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from library.tools.dataset.check import CheckOptions, check_dataset
from library.tools.dataset.phash import _dct_matrix, dhash, hamming, hash_picture, near_duplicate_pairs
from tests.tools_dataset.helpers import doctor, textured


@pytest.fixture
def clean(tmp_path):
    train = tmp_path / "train" / "3_sks dog"
    reg = tmp_path / "reg" / "1_dog"
    for i in range(6):
        textured(train / f"t{i}.png", i, (96, 64) if i % 2 else (64, 64))
        (train / f"t{i}.txt").write_text(f"sks dog, brown fur, collar, pose {i}", encoding="utf-8")
    for i in range(3):
        textured(reg / f"r{i}.png", 100 + i)
    return tmp_path


def codes(report) -> dict[str, list[tuple[str, ...]]]:
    out: dict[str, list] = {}
    for f in report.findings:
        out.setdefault(f.code, []).append(f.paths)
    return out


def test_clean_dataset_has_no_errors(clean):
    report = check_dataset(
        clean / "train",
        clean / "reg",
        CheckOptions(resolution=64, batch_size=2, min_pair_count=3, pair_share=0.9),
    )
    assert report.errors == [] and "duplicate" not in codes(report)
    assert report.summary["train_images"] == 6 and report.summary["reg_images"] == 3
    # 6 pictures x 3 repeats = 18 train samples + 18 balanced reg samples; buckets 64x64 and 64x64-ish
    assert report.summary["samples_per_epoch"] == 36
    assert sum(b["samples"] for b in report.buckets) == 36
    stats = report.tag_stats["3_sks dog"]
    assert [t for t, _ in stats.common] == ["brown fur", "collar", "sks dog"]
    assert doctor(clean / "train", "--reg_data_dir", clean / "reg", "--resolution", "64") == 0


def test_planted_problems_are_found_and_exit_1(clean, capsys):
    train, reg = clean / "train" / "3_sks dog", clean / "reg" / "1_dog"
    shutil.copy(train / "t0.png", reg / "copy_of_t0.png")  # exact copy across train/reg
    Image.open(train / "t2.png").resize((50, 50), Image.Resampling.LANCZOS).save(
        train / "t2_small.jpg", quality=90
    )
    data = (train / "t4.png").read_bytes()
    (train / "broken.png").write_bytes(data[: len(data) // 2])  # truncated
    (train / "t1.txt").unlink()  # missing caption
    report = check_dataset(clean / "train", clean / "reg", CheckOptions(resolution=64))
    found = codes(report)
    assert (str(train / "t0.png"), str(reg / "copy_of_t0.png")) in found["train_reg_overlap"]
    assert found["duplicate"] == [(str(train / "t2.png"), str(train / "t2_small.jpg"))]
    assert found["unreadable"] == [(str(train / "broken.png"),)]
    assert str(train / "t1.png") in found["missing_caption"][0]
    assert str(train / "t2_small.jpg") in found["small"][0]
    assert {f.code for f in report.errors} == {"train_reg_overlap", "unreadable"}

    assert doctor(clean / "train", "--reg_data_dir", clean / "reg", "--resolution", "64") == 1
    out = capsys.readouterr().out
    assert "ERROR [train_reg_overlap]" in out and "copy_of_t0.png" in out and "FAILED: 2 errors" in out
    assert doctor(clean / "train", "--reg_data_dir", clean / "reg", "--json") == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False and data["errors"] == 2
    assert {f["code"] for f in data["findings"]} >= {
        "train_reg_overlap",
        "duplicate",
        "unreadable",
        "missing_caption",
        "small",
    }


def test_near_duplicate_across_train_and_reg(clean):
    train, reg = clean / "train" / "3_sks dog", clean / "reg" / "1_dog"
    Image.open(train / "t3.png").resize((80, 53)).save(reg / "resized_t3.jpg", quality=85)
    report = check_dataset(clean / "train", clean / "reg", CheckOptions(resolution=64))
    assert codes(report)["train_reg_overlap"] == [(str(train / "t3.png"), str(reg / "resized_t3.jpg"))]


def test_dataset_toml_and_training_config(clean, tmp_path):
    dataset_toml = tmp_path / "ds.toml"
    dataset_toml.write_text(
        f"[general]\ncaption_extension = '.txt'\n[[datasets]]\nresolution = 64\nbatch_size = 3\n"
        f"[[datasets.subsets]]\nimage_dir = '{clean / 'train' / '3_sks dog'}'\nnum_repeats = 2\n",
        encoding="utf-8",
    )
    report = check_dataset(dataset_toml)
    assert report.errors == [] and report.summary["train_images"] == 6 and report.summary["batch_size"] == [3]
    config = tmp_path / "train.toml"
    config.write_text(
        f"[model]\npretrained_model_name_or_path = 'builtin:tiny'\n[folders]\n"
        f"train_data_dir = '{clean / 'train'}'\nreg_data_dir = '{clean / 'reg'}'\n"
        f"[training]\nresolution = '64'\ntrain_batch_size = 2\n",
        encoding="utf-8",
    )
    report = check_dataset(config)
    assert report.errors == [] and report.summary["reg_images"] == 3 and report.summary["batch_size"] == [2]


def test_wrong_layout_is_an_error_finding(tmp_path, capsys):
    textured(tmp_path / "pics" / "a.png", 1)
    assert doctor(tmp_path / "pics") == 1
    out = capsys.readouterr().out
    assert "ERROR [layout]" in out and "PARENT" in out


def test_dhash_by_hand_and_dct_orthonormal():
    gradient = Image.fromarray(np.tile(np.arange(9, 0, -1, dtype=np.uint8) * 20, (8, 1)), mode="L")
    assert dhash(gradient) == np.uint64(2**64 - 1)  # every pixel brighter than its right neighbour
    assert dhash(gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT)) == np.uint64(0)
    c = _dct_matrix(32)
    np.testing.assert_allclose(c @ c.T, np.eye(32), atol=1e-12)
    assert hamming(np.uint64(0b1011), np.uint64(0b0001)) == 2


def test_near_duplicate_pairs_on_pictures(tmp_path):
    a = textured(tmp_path / "a.png", 7, (128, 128))
    Image.open(a).resize((60, 60)).save(tmp_path / "b.jpg", quality=75)
    textured(tmp_path / "c.png", 8, (128, 128))
    hashes = [hash_picture(tmp_path / n) for n in ("a.png", "b.jpg", "c.png")]
    pairs = near_duplicate_pairs(hashes)
    assert [(i, j) for i, j, _ in pairs] == [(0, 1)]


def test_missing_mask_pictures_are_an_error(clean, tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    for i in range(5):  # t5 has no mask
        Image.new("L", (64, 64), 255).save(masks / f"t{i}.png")
    config = tmp_path / "train.toml"
    config.write_text(f"train_data_dir = '{clean / 'train'}'\nreg_data_dir = '{clean / 'reg'}'\nresolution = 64\n"
                      f"masked_loss = true\nconditioning_data_dir = '{masks}'\n", encoding="utf-8")
    report = check_dataset(config)
    assert [Path(p).name for p in codes(report)["missing_mask"][0]] == ["t5.png"]  # reg pictures need none
    Image.new("L", (64, 64), 255).save(masks / "t5.png")
    assert "missing_mask" not in codes(check_dataset(config))
