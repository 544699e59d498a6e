from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from library.data.buckets import (
    bucket_for_size,
    bucket_no_upscale,
    cover_size,
    make_bucket_resolutions,
    resize_and_crop,
)

SD_512_BUCKETS = [
    (256, 832), (256, 896), (256, 960), (256, 1024), (320, 704), (320, 768), (384, 640), (448, 576),
    (512, 512), (576, 448), (640, 384), (704, 320), (768, 320), (832, 256), (896, 256), (960, 256),
    (1024, 256),
]  # fmt: skip


def test_bucket_resolutions_512_match_sd_scripts():
    assert make_bucket_resolutions((512, 512), 256, 1024, 64) == SD_512_BUCKETS


def test_bucket_resolutions_properties_768x512_step32():
    buckets = make_bucket_resolutions((768, 512), 320, 960, 32)
    assert buckets == sorted(set(buckets))
    assert (608, 608) in buckets  # floor(sqrt(393216)=627.06 / 32) * 32
    for w, h in buckets:
        assert w % 32 == 0 and h % 32 == 0
        assert w * h <= 768 * 512
        assert (h, w) in buckets
        assert 320 <= min(w, h) and max(w, h) <= 960


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((512, 512), (512, 512)),
        ((1000, 1000), (512, 512)),
        ((1000, 500), (704, 320)),  # ar 2.0: 2.2 is nearer than 1.667
        ((500, 1000), (320, 704)),
        ((640, 384), (640, 384)),  # exact size wins
        ((600, 450), (576, 448)),  # ar 1.333 vs 1.286 / 1.667
        ((4000, 100), (1024, 256)),
    ],
)
def test_bucket_for_size(size, expected):
    assert bucket_for_size(*size, SD_512_BUCKETS) == expected


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((300, 200), (256, 192)),  # small: never upscaled, rounded down
        ((512, 512), (512, 512)),
        ((1024, 1024), (512, 512)),
        ((1000, 600), (640, 384)),  # 661.1 x 396.6 after scaling to area 512*512
        ((2000, 500), (1024, 256)),
        ((64, 64), (64, 64)),
    ],
)
def test_bucket_no_upscale(size, expected):
    bucket = bucket_no_upscale(*size, 512 * 512, 64)
    assert bucket == expected
    assert bucket[0] <= size[0] and bucket[1] <= size[1]


def test_bucket_no_upscale_too_small():
    with pytest.raises(ValueError, match="smaller than bucket_reso_steps"):
        bucket_no_upscale(50, 100, 512 * 512, 64)


def test_cover_size():
    assert cover_size(100, 50, (64, 64)) == (128, 64)
    assert cover_size(1000, 500, (704, 320)) == (704, 352)
    assert cover_size(64, 64, (64, 64)) == (64, 64)


def _gradient(w, h):
    x = np.tile(np.arange(w, dtype=np.uint8), (h, 1))
    return Image.fromarray(np.stack([x, x, x], axis=-1))


def test_resize_and_crop_center():
    img = _gradient(200, 100)
    out, origin, original = resize_and_crop(img, (64, 64))
    assert out.size == (64, 64) and original == (200, 100)
    assert origin == (32, 0)  # resized to 128x64, centre crop
    arr = np.asarray(out)[..., 0].astype(int)
    assert 48 <= arr[0, 0] <= 53 and 146 <= arr[0, -1] <= 151  # columns 50..150 of the original


def test_resize_and_crop_random_uses_rng():
    img = _gradient(200, 100)
    origins = {resize_and_crop(img, (64, 64), random.Random(s))[1] for s in range(30)}
    assert all(0 <= left <= 64 and top == 0 for left, top in origins) and len(origins) > 5
    rng = random.Random(4)
    expected = (rng.randint(0, 64), rng.randint(0, 0))
    assert resize_and_crop(img, (64, 64), random.Random(4))[1] == expected


def test_resize_and_crop_upscales_small_image():
    out, origin, original = resize_and_crop(_gradient(30, 60), (64, 64))
    assert out.size == (64, 64) and origin == (0, 32) and original == (30, 60)
