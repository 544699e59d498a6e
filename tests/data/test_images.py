from __future__ import annotations

import logging

import numpy as np
import pytest
from data_helpers import (
    make_exif_rotated_jpeg,
    make_image,
    make_rgba_png,
    make_truncated_jpeg,
    make_truncated_png,
)
from PIL import Image

from library.data.images import load_image, probe_image, probe_images
from library.errors import DatasetError


def test_exif_orientation_applied(tmp_path):
    path = make_exif_rotated_jpeg(tmp_path / "r.jpg", (40, 20), orientation=6)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (20, 40)
    arr = np.asarray(img).astype(int)
    # stored: left half red, right half blue; rotated 90° clockwise -> top half red, bottom blue
    assert arr[5, 10, 0] > 200 and arr[5, 10, 2] < 60
    assert arr[35, 10, 2] > 200 and arr[35, 10, 0] < 60
    assert probe_image(path) == (20, 40)


def test_rgba_composited_on_white(tmp_path):
    img = load_image(make_rgba_png(tmp_path / "a.png", (16, 16)))
    arr = np.asarray(img)
    assert img.mode == "RGB"
    assert tuple(arr[8, 2]) == (255, 0, 0) and tuple(arr[8, 12]) == (255, 255, 255)


def test_la_and_palette_transparency(tmp_path):
    la = Image.new("LA", (4, 4), (0, 0))
    la.save(tmp_path / "la.png")
    assert tuple(np.asarray(load_image(tmp_path / "la.png"))[0, 0]) == (255, 255, 255)
    p = Image.new("P", (4, 4), 0)
    p.putpalette([0, 0, 0, 10, 200, 10] + [0] * 762)
    p.putpixel((1, 1), 1)
    p.save(tmp_path / "p.png", transparency=0)
    arr = np.asarray(load_image(tmp_path / "p.png"))
    assert tuple(arr[0, 0]) == (255, 255, 255) and tuple(arr[1, 1]) == (10, 200, 10)


def test_cmyk_greyscale_and_16bit(tmp_path):
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    c = np.asarray(load_image(tmp_path / "c.jpg")).astype(int)
    assert c[0, 0, 0] > 200 and c[0, 0, 1] < 60 and c[0, 0, 2] < 60
    Image.new("L", (4, 4), 77).save(tmp_path / "g.png")
    assert tuple(np.asarray(load_image(tmp_path / "g.png"))[0, 0]) == (77, 77, 77)
    Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)).save(tmp_path / "w16.png")
    assert tuple(np.asarray(load_image(tmp_path / "w16.png"))[0, 0]) == (255, 255, 255)
    Image.fromarray(np.full((4, 4), 32896, dtype=np.uint16)).save(tmp_path / "m16.png")
    assert tuple(np.asarray(load_image(tmp_path / "m16.png"))[0, 0]) == (128, 128, 128)


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp", "bmp"])
def test_probe_sizes(tmp_path, fmt):
    path = make_image(tmp_path / f"a.{fmt}", (37, 21))
    assert probe_image(path) == (37, 21)


@pytest.mark.parametrize("maker", [make_truncated_jpeg, make_truncated_png])
def test_probe_detects_truncation(tmp_path, maker):
    path = maker(tmp_path / ("t.jpg" if maker is make_truncated_jpeg else "t.png"))
    with pytest.raises(DatasetError, match=path.name):
        probe_image(path)


def test_probe_truncated_webp_and_garbage(tmp_path):
    good = make_image(tmp_path / "w.webp", (64, 64))
    data = good.read_bytes()
    (tmp_path / "cut.webp").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.png").write_bytes(b"not an image")
    for name in ("cut.webp", "junk.png"):
        with pytest.raises(DatasetError, match=name):
            probe_image(tmp_path / name)


def test_probe_many_reports_failures(tmp_path, caplog):
    good = [make_image(tmp_path / f"g{i}.png", (10 + i, 5)) for i in range(6)]
    bad = make_truncated_jpeg(tmp_path / "bad.jpg")
    with caplog.at_level(logging.WARNING):
        sizes, failures = probe_images(good + [bad], max_workers=3)
    assert sizes == {p: (10 + i, 5) for i, p in enumerate(good)}
    assert list(failures) == [bad] and "bad.jpg" in caplog.text


def test_load_unreadable_names_file(tmp_path):
    (tmp_path / "x.png").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="x.png"):
        load_image(tmp_path / "x.png")
