"""SDXL size/crop conditioning of the batches: (h, w) original size, (top, left) crop, (h, w) target size,
the same with pixels, latents cached in memory and latents read back from disk, flipped or not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from library.data.augment import hflip, to_tensor
from library.data.buckets import cover_size, crop_origin, flipped_crop_left
from library.data.dataset import TrainDataset
from library.data.dataset_config import specs_from_folders
from library.data.images import load_image
from library.data.latent_cache import cache_file_path, cache_latents, load_cached

STEPS = 16

# Hand-computed with the repo's rules (resolution 256x192, steps of 64 -> buckets (256, 192), (192, 256)):
# wide 301x200 -> bucket 256x192; scale max(256/301, 192/200) = 0.96 -> covered 289x192 (int(288.96 + .5));
#   centre crop left = 33 // 2 = 16, top 0; flipped left = 289 - 16 - 256 = 17.
# tall 200x301 -> bucket 192x256; covered 192x289; crop left 0, top 16; flipped left = 192 - 0 - 192 = 0.
# rotated: a JPEG stored 301x200 with EXIF orientation 6 shows as 200x301, i.e. like tall.
EXPECTED = {
    # name: (original (h, w), (top, left), (top, left) when flipped, target (h, w))
    "wide.png": ((200, 301), (0, 16), (0, 17), (192, 256)),
    "tall.png": ((301, 200), (16, 0), (16, 0), (256, 192)),
    "rotated.jpg": ((301, 200), (16, 0), (16, 0), (256, 192)),
}


def make_noise(path: Path, size: tuple[int, int], seed: int, orientation: int | None = None) -> Path:
    """A picture of random pixels, so that every crop and its mirror image differ; ``orientation``: the
    EXIF orientation tag to write (6 = shown rotated by 90 degrees)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    if orientation is None:
        Image.fromarray(pixels).save(path)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(pixels).save(path, format="JPEG", exif=exif.tobytes(), quality=95)
    return path


def fake_vae(pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 4, H/8, W/8): the 8x8 means of the 3 channels and of their mean."""
    pooled = F.avg_pool2d(pixels, 8)
    return torch.cat([pooled, pooled.mean(dim=1, keepdim=True)], dim=1)


@pytest.fixture
def tree(tmp_path):
    folder = tmp_path / "train" / "1_pics"
    folder.mkdir(parents=True)
    make_noise(folder / "wide.png", (301, 200), 0)
    make_noise(folder / "tall.png", (200, 301), 1)
    make_noise(folder / "rotated.jpg", (301, 200), 2, orientation=6)
    return tmp_path


def build(root: Path, **options) -> TrainDataset:
    values = {
        "train_batch_size": 1,
        "resolution": [256, 192],
        "enable_bucket": True,
        "min_bucket_reso": 64,
        "max_bucket_reso": 512,
        "bucket_reso_steps": 64,
    }
    values.update(options)
    return TrainDataset(specs_from_folders(root / "train", None, values))


def ref_of(ds: TrainDataset, name: str) -> int:
    return next(r for r, it in enumerate(ds.items) if it.path.name == name)


def conditioning(out: dict) -> tuple:
    return out["original_sizes_hw"][0], out["crop_top_lefts"][0], out["target_sizes_hw"][0]


def is_flipped(ds: TrainDataset, ref: int, out: dict) -> bool:
    """Whether a one-sample batch holds the flipped picture (pixels or cached latents)."""
    if "latents" in out:
        item = ds.items[ref]
        if item.latents_flipped is not None and torch.equal(out["latents"][0], item.latents_flipped):
            return True
        assert torch.equal(out["latents"][0], item.latents)
        return False
    if torch.equal(out["pixels"][0], ds.load_pixels(ref, None, True)[0]):
        return True
    assert torch.equal(out["pixels"][0], ds.load_pixels(ref, None, False)[0])
    return False


def check_expected(ds: TrainDataset, flip_aug: bool) -> dict[tuple[int, int], tuple]:
    """Assert the hand-computed values of every picture over STEPS batches; (ref, step) -> values."""
    seen: dict[tuple[int, int], tuple] = {}
    for name, (orig, crop, crop_flipped, target) in EXPECTED.items():
        ref = ref_of(ds, name)
        flips = set()
        for step in range(STEPS):
            out = ds.load_batch([ref], epoch=1, seed=0, step=step)
            flipped = is_flipped(ds, ref, out)
            flips.add(flipped)
            assert conditioning(out) == (orig, crop_flipped if flipped else crop, target), (name, step)
            seen[(ref, step)] = conditioning(out)
        assert flips == ({False, True} if flip_aug else {False})
    return seen


@pytest.mark.parametrize(
    ("left", "covered_width", "crop_width", "expected"),
    [(16, 289, 256, 17), (0, 192, 192, 0), (0, 300, 256, 44), (44, 300, 256, 0), (10, 300, 256, 34)],
)
def test_flipped_crop_left(left, covered_width, crop_width, expected):
    assert flipped_crop_left(left, covered_width, crop_width) == expected


def test_hand_computed_values_follow_the_bucket_rules():
    assert cover_size(301, 200, (256, 192)) == (289, 192)
    assert crop_origin((289, 192), (256, 192), None) == (16, 0)
    assert cover_size(200, 301, (192, 256)) == (192, 289)
    assert crop_origin((192, 289), (192, 256), None) == (0, 16)


def test_batch_fields_are_hw_ordered(tree):
    ds = build(tree)
    assert {it.path.name: it.bucket for it in ds.items} == {
        "wide.png": (256, 192),
        "tall.png": (192, 256),
        "rotated.jpg": (192, 256),
    }
    out = ds.load_batch([ref_of(ds, "wide.png")], epoch=1, seed=0, step=0)
    assert not {"original_sizes", "target_sizes"} & out.keys()
    assert out["pixels"].shape == (1, 3, 192, 256)


@pytest.mark.parametrize("flip_aug", [False, True])
def test_pixels(tree, flip_aug):
    check_expected(build(tree, flip_aug=flip_aug), flip_aug)


@pytest.mark.parametrize("flip_aug", [False, True])
@pytest.mark.parametrize("to_disk", [False, True])
def test_cached_latents_give_the_same_values(tree, flip_aug, to_disk):
    from_pixels = check_expected(build(tree, flip_aug=flip_aug), flip_aug)
    ds = build(tree, flip_aug=flip_aug)
    assert cache_latents(ds, fake_vae, to_disk=to_disk) == 3
    assert check_expected(ds, flip_aug) == from_pixels
    if to_disk:  # a second run reads the cache files
        ds2 = build(tree, flip_aug=flip_aug)
        assert cache_latents(ds2, fake_vae, to_disk=True) == 0
        assert check_expected(ds2, flip_aug) == from_pixels
    else:
        assert not list(tree.rglob("*.npz"))


def test_load_cached_returns_the_crop(tree):
    ds = build(tree)
    cache_latents(ds, fake_vae, to_disk=True)
    item = ds.items[ref_of(ds, "wide.png")]
    cached = load_cached(cache_file_path(item.path, item.bucket), item.path, need_flipped=False)
    assert cached is not None and cached.crop_ltrb == (16, 0, 272, 192)
    assert cached.latents.shape == (4, 24, 32) and cached.latents_flipped is None


def test_cache_file_without_crop_or_with_another_crop_is_reencoded(tree):
    cache_latents(build(tree), fake_vae, to_disk=True)
    wide, tall = (next(tree.rglob(f"{stem}_*.npz")) for stem in ("wide", "tall"))
    with np.load(wide) as data:
        arrays = {k: data[k] for k in data.files if k != "crop_ltrb"}
    with wide.open("wb") as f:
        np.savez(f, **arrays)
    with np.load(tall) as data:
        arrays = dict(data)
    arrays["crop_ltrb"] = np.array([0, 0, 192, 256], dtype=np.int64)
    with tall.open("wb") as f:
        np.savez(f, **arrays)
    ds = build(tree)
    assert cache_latents(ds, fake_vae, to_disk=True) == 2
    check_expected(ds, flip_aug=False)
    with np.load(wide) as data:
        assert data["crop_ltrb"].tolist() == [16, 0, 272, 192]


def test_sdxl_suffix(tree):
    assert cache_file_path(Path("a/b.png"), (256, 192)) == Path("a/b_0256x0192_sd.npz")
    assert cache_file_path(Path("a/b.png"), (256, 192), "sdxl") == Path("a/b_0256x0192_sdxl.npz")
    assert cache_latents(build(tree), fake_vae, to_disk=True, suffix="sdxl") == 3
    names = sorted(p.name for p in tree.rglob("*.npz"))
    assert names == ["rotated_0192x0256_sdxl.npz", "tall_0192x0256_sdxl.npz", "wide_0256x0192_sdxl.npz"]
    ds = build(tree)
    assert cache_latents(ds, fake_vae, to_disk=True, suffix="sdxl") == 0
    check_expected(ds, flip_aug=False)
    assert cache_latents(build(tree), fake_vae, to_disk=True) == 3  # the SD cache is a different file
    assert len(list(tree.rglob("*_sd.npz"))) == 3


@pytest.mark.parametrize("flip_aug", [False, True])
def test_random_crop_reports_the_crop_taken(tree, flip_aug):
    ds = build(tree, random_crop=True, flip_aug=flip_aug)
    for name in ("wide.png", "tall.png"):
        ref = ref_of(ds, name)
        item = ds.items[ref]
        covered = load_image(item.path).resize(cover_size(*item.size, item.bucket), Image.Resampling.LANCZOS)
        offsets, flips = set(), set()
        for step in range(STEPS):
            out = ds.load_batch([ref], epoch=1, seed=0, step=step)
            orig, (top, left), target = conditioning(out)
            assert (orig, target) == EXPECTED[name][0::3]
            box = (left, top, left + item.bucket[0], top + item.bucket[1])
            # the crop is measured in the picture as trained: the mirrored picture for flipped samples
            matches = [
                flip
                for flip in (False, True)
                if torch.equal(out["pixels"][0], to_tensor((hflip(covered) if flip else covered).crop(box)))
            ]
            assert len(matches) == 1, (name, step, top, left)
            flips.add(matches[0])
            offsets.add((top, left))
        assert flips == ({False, True} if flip_aug else {False})
        assert len(offsets) > 1  # the crops are random
