from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from data_helpers import make_concept, make_image

from library.data.dataset import TrainDataset
from library.data.dataset_config import specs_from_folders
from library.data.latent_cache import cache_file_path, cache_latents
from library.errors import DatasetError


class FakeVae:
    """avg-pool ×8; records the batch size of every call."""

    def __init__(self):
        self.calls: list[int] = []

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        self.calls.append(pixels.shape[0])
        return F.avg_pool2d(pixels, 8)


def build(root, **defaults):
    base = {
        "train_batch_size": 2,
        "resolution": 64,
        "enable_bucket": True,
        "min_bucket_reso": 32,
        "max_bucket_reso": 128,
        "bucket_reso_steps": 32,
    }
    base.update(defaults)
    return TrainDataset(specs_from_folders(root / "train", None, base))


@pytest.fixture
def tree(tmp_path):
    make_concept(tmp_path / "train" / "2_a", [(64, 64), (70, 64), (128, 40)])
    return tmp_path


def test_in_memory_cache_and_latent_batches(tree):
    ds = build(tree)
    vae = FakeVae()
    assert cache_latents(ds, vae, to_disk=False, batch_size=2) == 3
    assert sum(vae.calls) == 3 and max(vae.calls) <= 2
    assert not list((tree / "train" / "2_a").glob("*.npz"))
    for ref, item in enumerate(ds.items):
        expected = F.avg_pool2d(ds.load_pixels(ref, None, False)[0][None], 8)[0]
        assert torch.allclose(item.latents, expected, atol=1e-6)
    batch = next(b for b in ds.epoch_batches(1, 0) if ds.items[b[0]].bucket == (64, 64))
    out = ds.load_batch(batch, epoch=1, seed=0, step=0)
    assert "pixels" not in out and out["latents"].shape == (len(batch), 3, 8, 8)


def test_disk_cache_written_reused_and_invalidated(tree):
    ds = build(tree)
    vae = FakeVae()
    cache_latents(ds, vae, to_disk=True, batch_size=4)
    names = sorted(p.name for p in (tree / "train" / "2_a").glob("*.npz"))
    assert names == ["img_000_0064x0064_sd.npz", "img_001_0064x0064_sd.npz", "img_002_0096x0032_sd.npz"]
    assert not list((tree / "train" / "2_a").glob(".*tmp"))
    with np.load(tree / "train" / "2_a" / "img_002_0096x0032_sd.npz") as data:
        assert data["latents"].shape == (3, 4, 12)
        assert data["original_size"].tolist() == [128, 40]
        assert data["crop_ltrb"].tolist() == [3, 0, 99, 32]  # 128x40 -> 102x32 cover, centre crop
        assert "latents_flipped" not in data

    vae2 = FakeVae()
    ds2 = build(tree)
    assert cache_latents(ds2, vae2, to_disk=True) == 0 and vae2.calls == []
    for a, b in zip(ds.items, ds2.items, strict=True):
        assert torch.equal(a.latents, b.latents)

    changed = make_image(tree / "train" / "2_a" / "img_001.png", (70, 64), color=(0, 255, 0))
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    vae3 = FakeVae()
    ds3 = build(tree)
    assert cache_latents(ds3, vae3, to_disk=True) == 1 and vae3.calls == [1]
    assert not torch.equal(ds3.items[1].latents, ds.items[1].latents)


def test_flip_aug_stores_flipped_latents(tree):
    ds = build(tree, flip_aug=True)
    vae = FakeVae()
    cache_latents(ds, vae, to_disk=True, batch_size=2)
    assert sum(vae.calls) == 6
    item = ds.items[2]
    assert torch.allclose(item.latents_flipped, torch.flip(item.latents, dims=[-1]), atol=1e-6)
    with np.load(cache_file_path(item.path, item.bucket)) as data:
        assert "latents_flipped" in data
    seen = {torch.equal(ds.load_batch([2], 1, 0, s)["latents"][0], item.latents_flipped) for s in range(12)}
    assert seen == {True, False}
    # a cache written without flips is not valid once flip_aug is on
    ds_noflip = build(tree)
    for p in (tree / "train" / "2_a").glob("*.npz"):
        p.unlink()
    cache_latents(ds_noflip, FakeVae(), to_disk=True)
    vae2 = FakeVae()
    assert cache_latents(build(tree, flip_aug=True), vae2, to_disk=True) == 3


def test_corrupt_cache_file_is_reencoded(tree, caplog):
    ds = build(tree)
    cache_latents(ds, FakeVae(), to_disk=True)
    (tree / "train" / "2_a" / "img_000_0064x0064_sd.npz").write_bytes(b"garbage")
    vae = FakeVae()
    with caplog.at_level(logging.WARNING):
        assert cache_latents(build(tree), vae, to_disk=True) == 1
    assert "img_000_0064x0064_sd.npz" in caplog.text


@pytest.mark.parametrize("option", ["color_aug", "random_crop"])
def test_cache_rejects_random_pixel_augmentations(tree, option):
    with pytest.raises(DatasetError, match="cache_latents"):
        cache_latents(build(tree, **{option: True}), FakeVae(), to_disk=False)


def test_the_next_pictures_are_decoded_while_the_vae_encodes(tmp_path):
    """While the VAE encodes one batch, the pictures of the next are loaded (in a thread), not after it."""
    import time

    make_concept(tmp_path / "train" / "1_a", [(64, 64)] * 6)
    ds = build(tmp_path, enable_bucket=False)
    real_load = ds.load_pixels
    started: list[int] = []  # refs whose loading began, in order
    overlapped = []

    def load_pixels(ref, *args):
        started.append(ref)
        return real_load(ref, *args)

    def vae(pixels):
        seen = len(started)  # this batch's pictures and any loaded ahead
        deadline = time.monotonic() + 10
        while len(started) <= seen and len(started) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)  # a serial loader would load nothing more until this call returns
        overlapped.append(len(started) > 2 * (len(overlapped) + 1))
        return F.avg_pool2d(pixels, 8)

    ds.load_pixels = load_pixels
    assert cache_latents(ds, vae, to_disk=False, batch_size=2) == 6
    assert overlapped[:2] == [True, True]  # the next batch was being loaded during the first two encodes
    for ref, item in enumerate(ds.items):
        torch.testing.assert_close(item.latents, F.avg_pool2d(real_load(ref, None, False)[0][None], 8)[0])
