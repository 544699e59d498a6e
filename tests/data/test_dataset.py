from __future__ import annotations

import logging
import math
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from data_helpers import make_concept, make_truncated_jpeg, write_caption

from library.data.dataset import TrainDataset
from library.data.dataset_config import specs_from_dataset_config, specs_from_folders
from library.data.scan import balance_reg_repeats
from library.errors import DatasetError

FIXTURES = Path(__file__).parent / "fixtures"


def build_tree(root: Path) -> None:
    make_concept(root / "train" / "10_sks dog", [(64, 64)] * 3)
    make_concept(root / "train" / "5_wide", [(120, 40), (126, 40)], captions=["wide, red, dog", "wide, blue"])
    make_concept(root / "reg" / "1_dog", [(64, 64)] * 4)


def make_dataset(root: Path, prior_loss_weight: float = 0.5, **defaults) -> TrainDataset:
    build_tree(root)
    base = {
        "train_batch_size": 4,
        "resolution": 64,
        "enable_bucket": True,
        "min_bucket_reso": 32,
        "max_bucket_reso": 128,
        "bucket_reso_steps": 32,
    }
    base.update(defaults)
    specs = specs_from_folders(root / "train", root / "reg", base)
    return TrainDataset(specs, prior_loss_weight=prior_loss_weight)


@pytest.mark.parametrize(
    ("reg", "num_train", "expected"),
    [
        ([1, 1, 1], 7, [3, 2, 2]),
        ([1, 1, 1, 1, 1], 2, [1, 1, 0, 0, 0]),
        ([2, 2], 3, [2, 2]),
        ([3, 1], 10, [6, 4]),
        ([], 5, []),
        ([1, 1], 0, [0, 0]),
    ],
)
def test_balance_reg_repeats(reg, num_train, expected):
    assert balance_reg_repeats(reg, num_train) == expected


def test_counts_buckets_and_metadata(tmp_path):
    ds = make_dataset(tmp_path)
    assert ds.num_train_images == 3 * 10 + 2 * 5
    assert ds.num_reg_images == 4
    assert ds.num_reg_items_per_epoch == 40
    assert sorted(it.repeats for it in ds.items if it.is_reg) == [10, 10, 10, 10]
    assert {it.path.name: it.bucket for it in ds.items if it.folder == "5_wide"} == {
        "img_000.png": (96, 32),
        "img_001.png": (96, 32),
    }
    assert ds.bucket_counts() == {(0, (64, 64)): 70, (0, (96, 32)): 10}
    assert ds.dataset_dirs() == {
        "10_sks dog": {"n_repeats": 10, "img_count": 3},
        "5_wide": {"n_repeats": 5, "img_count": 2},
    }
    assert ds.reg_dataset_dirs() == {"1_dog": {"n_repeats": 1, "img_count": 4}}
    freq = ds.tag_frequency()
    assert freq["5_wide"] == {"wide": 2, "red": 1, "dog": 1, "blue": 1}
    assert freq["10_sks dog"] == {"sks dog": 3} and freq["1_dog"] == {"dog": 4}
    info = ds.bucket_info()
    assert info["buckets"]["0"] == {"resolution": [64, 64], "count": 70}
    assert info["mean_img_ar_error"] == pytest.approx((126 / 40 - 3) / 9)


def test_surplus_reg_images_warn(tmp_path, caplog):
    make_concept(tmp_path / "t" / "1_a", [(32, 32)] * 2)
    make_concept(tmp_path / "r" / "1_b", [(32, 32)] * 5)
    specs = specs_from_folders(tmp_path / "t", tmp_path / "r", {"resolution": 32})
    with caplog.at_level(logging.WARNING):
        ds = TrainDataset(specs)
    assert [it.repeats for it in ds.items if it.is_reg] == [1, 1, 0, 0, 0]
    assert "3 of 5 regularisation images are not used" in caplog.text
    assert sum(len(b) for b in ds.epoch_batches(1, 0)) == 4


def test_epoch_plan_is_deterministic_and_complete(tmp_path):
    ds = make_dataset(tmp_path)
    plan = ds.epoch_batches(epoch=3, seed=42)
    assert plan == ds.epoch_batches(epoch=3, seed=42)
    assert plan != ds.epoch_batches(epoch=4, seed=42)
    assert plan != ds.epoch_batches(epoch=3, seed=43)
    counts = Counter(ref for batch in plan for ref in batch)
    assert counts == {ref: it.repeats for ref, it in enumerate(ds.items) if it.repeats}
    for batch in plan:
        assert 1 <= len(batch) <= 4
        assert len({ds.items[r].bucket for r in batch}) == 1
    # buckets of 70 and 10 samples -> 18 + 3 batches, not (70 + 10) / 4 = 20
    assert len(plan) == ds.num_batches() == 21
    assert sorted(len(b) for b in plan)[:2] == [2, 2]


@pytest.mark.parametrize(
    ("procs", "accum", "expected"), [(1, 1, 21), (2, 1, 11), (1, 4, 6), (2, 4, 3), (3, 2, 4)]
)
def test_steps_per_epoch(tmp_path, procs, accum, expected):
    ds = make_dataset(tmp_path)
    assert ds.steps_per_epoch(procs, accum) == expected == math.ceil(math.ceil(21 / procs) / accum)


def test_load_batch_pixels_captions_weights(tmp_path):
    ds = make_dataset(tmp_path, prior_loss_weight=0.25)
    plan = ds.epoch_batches(1, 7)
    batch = next(b for b in plan if ds.items[b[0]].bucket == (64, 64) and len(b) == 4)
    out = ds.load_batch(batch, epoch=1, seed=7, step=0)
    assert out["pixels"].shape == (4, 3, 64, 64) and out["pixels"].dtype == torch.float32
    assert out["pixels"].min() >= -1.0 and out["pixels"].max() <= 1.0
    expected_w = [0.25 if ds.items[r].is_reg else 1.0 for r in batch]
    assert out["loss_weights"].tolist() == expected_w and out["is_reg"] == [w == 0.25 for w in expected_w]
    assert out["captions"] == [ds.items[r].caption for r in batch]
    assert out["paths"] == [ds.items[r].path for r in batch]
    again = ds.load_batch(batch, epoch=1, seed=7, step=0)
    assert torch.equal(out["pixels"], again["pixels"])


def test_load_batch_rng_drives_flip_and_shuffle(tmp_path):
    ds = make_dataset(tmp_path, flip_aug=True, shuffle_caption=True)
    ref = next(r for r, it in enumerate(ds.items) if it.path.name == "img_000.png" and it.folder == "5_wide")
    loads = [ds.load_batch([ref], epoch=1, seed=0, step=s) for s in range(12)]
    plain = ds.load_pixels(ref, None, False)[0]
    flipped = torch.flip(plain, dims=[-1])
    kinds = []
    for out in loads:
        px = out["pixels"][0]
        kinds.append("flip" if torch.allclose(px, flipped) else "plain" if torch.allclose(px, plain) else "?")
    assert "?" not in kinds and {"flip", "plain"} <= set(kinds)
    assert len({out["captions"][0] for out in loads}) > 1
    assert all(sorted(out["captions"][0].split(", ")) == ["dog", "red", "wide"] for out in loads)


def test_caption_dropout_every_n_epochs_in_batches(tmp_path):
    ds = make_dataset(tmp_path, caption_dropout_every_n_epochs=2)
    batch = ds.epoch_batches(1, 0)[0]
    assert all(c for c in ds.load_batch(batch, epoch=1, seed=0, step=0)["captions"])
    assert all(c == "" for c in ds.load_batch(batch, epoch=2, seed=0, step=0)["captions"])


def test_no_bucket_single_resolution(tmp_path):
    ds = make_dataset(tmp_path, enable_bucket=False, resolution="48,32")
    assert {it.bucket for it in ds.items} == {(48, 32)}
    out = ds.load_batch(ds.epoch_batches(1, 0)[0], epoch=1, seed=0, step=0)
    assert out["pixels"].shape[1:] == (3, 32, 48)


def test_bucket_no_upscale_per_image(tmp_path, caplog):
    make_concept(tmp_path / "train" / "1_small", [(50, 40), (200, 20)])
    ds = make_dataset(tmp_path, bucket_no_upscale=True, resolution=64)
    buckets = {(it.folder, it.path.name): it.bucket for it in ds.items}
    assert buckets[("1_small", "img_000.png")] == (32, 32)  # never upscaled (would be 64x64 otherwise)
    assert ("1_small", "img_001.png") not in buckets  # 20 px high: below bucket_reso_steps, skipped
    assert buckets[("5_wide", "img_000.png")] == (96, 32)  # 120x40 scaled to area 4096: 110.9x37.0
    assert buckets[("10_sks dog", "img_000.png")] == (64, 64)
    assert "img_001.png" in caplog.text and "smaller than bucket_reso_steps" in caplog.text


def test_unreadable_images_skipped(tmp_path, caplog):
    make_concept(tmp_path / "t" / "2_a", [(32, 32)] * 2)
    make_truncated_jpeg(tmp_path / "t" / "2_a" / "broken.jpg")
    with caplog.at_level(logging.WARNING):
        ds = TrainDataset(specs_from_folders(tmp_path / "t", None, {"resolution": 32}))
    assert sorted(it.path.name for it in ds.items) == ["img_000.png", "img_001.png"]
    assert "broken.jpg" in caplog.text


def test_all_images_unreadable_is_an_error(tmp_path):
    make_truncated_jpeg(tmp_path / "t" / "2_a" / "broken.jpg")
    with pytest.raises(DatasetError, match="1 unreadable"):
        TrainDataset(specs_from_folders(tmp_path / "t", None, {"resolution": 32}))


def test_missing_image_dir_in_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(FIXTURES / "config_readme_example.toml", tmp_path / "ds.toml")
    with pytest.raises(DatasetError, match="image_dir 'hoge' does not exist"):
        TrainDataset(specs_from_dataset_config(tmp_path / "ds.toml", {}))


def test_two_datasets_from_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(FIXTURES / "config_two_datasets.toml", tmp_path / "ds.toml")
    make_concept(tmp_path / "hoge", [(40, 40)] * 2, captions=["a, b, c", None])
    make_concept(tmp_path / "fuga", [(40, 40)])
    make_concept(tmp_path / "reg", [(40, 40)] * 3)
    make_concept(tmp_path / "piyo", [(90, 60), (60, 90), (80, 80)])
    write_caption(tmp_path / "piyo" / "img_000.txt", "x ||| y;;;z, w")
    specs = specs_from_dataset_config(tmp_path / "ds.toml", {})
    specs[0].resolution, specs[1].resolution = (32, 32), (48, 32)
    specs[1].min_bucket_reso, specs[1].max_bucket_reso, specs[1].bucket_reso_steps = 16, 96, 16
    ds = TrainDataset(specs)
    assert ds.num_train_images == 2 * 10 + 5 + 3 * 2
    assert sum(it.repeats for it in ds.items if it.is_reg) == 25
    plan = ds.epoch_batches(1, 0)
    for batch in plan:
        d = {ds.items[r].dataset_index for r in batch}
        assert len(d) == 1 and len(batch) <= (4 if d == {0} else 2)
    assert len(plan) == math.ceil(50 / 4) + 3 == ds.num_batches()
    piyo = next(r for r, it in enumerate(ds.items) if it.folder == "piyo" and it.path.name == "img_000.png")
    captions = [ds.load_batch([piyo], epoch=1, seed=0, step=s)["captions"][0] for s in range(30)]
    non_empty = [c for c in captions if c]
    assert len(non_empty) >= 20 and all(c.startswith("masterpiece x") and ";;;" not in c for c in non_empty)
    assert any(c.endswith("w") for c in non_empty) and any(c.endswith("y,z") for c in non_empty)
    text = ds.summary()
    for needle in ("hoge", "reg: reg", "piyo", "class tokens 1, txt 1", "steps per epoch 16", "48x32"):
        assert needle in text, needle


def test_summary_lists_folders_buckets_and_steps(tmp_path):
    ds = make_dataset(tmp_path)
    text = ds.summary()
    assert "10_sks dog" in text and "reg: 1_dog" in text and "txt 2" in text and "class tokens 3" in text
    assert "96x32" in text and "steps per epoch 21" in text and "batch size 4" in text
    assert "steps per epoch 6" in ds.summary(num_processes=2, grad_accum=2)


def test_duplicate_subset_and_missing_captions_warn(tmp_path, caplog):
    make_concept(tmp_path / "imgs", [(32, 32)] * 2)
    (tmp_path / "ds.toml").write_text(
        "[[datasets]]\nresolution = 32\n"
        f"[[datasets.subsets]]\nimage_dir = '{tmp_path / 'imgs'}'\n"
        f"[[datasets.subsets]]\nimage_dir = '{tmp_path / 'imgs'}'\nnum_repeats = 3\n"
    )
    with caplog.at_level(logging.WARNING):
        ds = TrainDataset(specs_from_dataset_config(tmp_path / "ds.toml", {}))
    assert ds.num_train_images == 2
    assert (
        "listed twice" in caplog.text
        and "2 images have neither a caption file nor class tokens" in caplog.text
    )
    assert [it.caption_source for it in ds.items] == ["none", "none"]
