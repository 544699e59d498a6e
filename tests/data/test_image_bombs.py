"""Pictures over PIL's decompression-bomb limit: skipped with a warning naming them wherever pictures are
read (dataset scan, check_dataset, prepare_dataset, tagger, captioners), an error only when nothing is left.

PIL refuses a picture above 2x ``Image.MAX_IMAGE_PIXELS`` and only warns between 1x and 2x; the tests
lower the limit (300x300 pictures against 10,000 pixels) instead of writing real 20000x20000 files, and
use a PNG whose header alone claims 20000x20000 for the default limit.
"""

from __future__ import annotations

import importlib.util
import logging
import struct
import warnings
import zlib
from pathlib import Path

import pytest
from data_helpers import make_concept, make_image
from PIL import Image

from library.data.dataset import TrainDataset
from library.data.dataset_config import specs_from_folders
from library.data.images import load_image, load_image_and_alpha, load_mask_picture, probe_image, probe_images
from library.errors import DatasetError

ROOT = Path(__file__).resolve().parents[2]


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"bomb_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def header_bomb(path: Path, width: int = 20000, height: int = 20000) -> Path:
    """A PNG of a few bytes whose IHDR claims ``width`` x ``height`` (the pixel data is not there)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


@pytest.fixture
def low_limit(monkeypatch):
    """PIL's bomb limit at 10,000 pixels: 300x300 (90,000) is over 2x the limit, 120x120 (14,400) over 1x."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)


def _folder_with_bomb(folder: Path, bomb_size=(300, 300), good=2) -> Path:
    make_concept(folder, [(64, 64)] * good)
    make_image(folder / "huge.png", bomb_size)
    (folder / "huge.txt").write_text("a huge picture", encoding="utf-8")
    return folder / "huge.png"


@pytest.mark.parametrize("size", [(300, 300), (120, 120)], ids=["over-2x-error", "over-1x-warning"])
def test_loaders_refuse_a_bomb_naming_it(tmp_path, low_limit, size):
    path = make_image(tmp_path / "huge.png", size)
    with warnings.catch_warnings(record=True) as shown:
        for read in (probe_image, load_image, load_image_and_alpha, lambda p: load_mask_picture(p, (8, 8))):
            with pytest.raises(DatasetError, match="decompression-bomb limit of 10000 pixels") as info:
                read(path)
            assert str(path) in str(info.value) and "Downscale it" in str(info.value)
    assert not [w for w in shown if issubclass(w.category, Image.DecompressionBombWarning)]  # ours instead
    assert probe_image(make_image(tmp_path / "ok.png", (90, 90))) == (90, 90)  # under the limit


def test_header_only_bomb_with_the_default_limit(tmp_path):
    path = header_bomb(tmp_path / "bomb.png")
    with pytest.raises(DatasetError, match="400000000 pixels"):
        probe_image(path)
    with pytest.raises(DatasetError, match="decompression-bomb"):
        load_image(path)


def test_probe_images_skips_the_bomb_with_a_warning(tmp_path, low_limit, caplog):
    bomb = _folder_with_bomb(tmp_path / "pics")
    good = sorted(p for p in (tmp_path / "pics").glob("img_*.png"))
    with caplog.at_level(logging.WARNING):
        sizes, failures = probe_images([*good, bomb])
    assert set(sizes) == set(good) and list(failures) == [bomb]
    assert "huge.png" in caplog.text and "decompression-bomb" in caplog.text


def test_training_scan_skips_the_bomb(tmp_path, low_limit, caplog):
    _folder_with_bomb(tmp_path / "t" / "2_a")
    with caplog.at_level(logging.WARNING):
        ds = TrainDataset(specs_from_folders(tmp_path / "t", None, {"resolution": 32}))
    assert sorted(it.path.name for it in ds.items) == ["img_000.png", "img_001.png"]
    assert "huge.png" in caplog.text


def test_training_scan_with_only_a_bomb_is_an_error(tmp_path):
    header_bomb(tmp_path / "t" / "2_a" / "bomb.png")
    with pytest.raises(DatasetError, match="1 unreadable"):
        TrainDataset(specs_from_folders(tmp_path / "t", None, {"resolution": 32}))


def test_check_dataset_reports_the_bomb_as_a_finding(tmp_path, low_limit, capsys):
    bomb = _folder_with_bomb(tmp_path / "t" / "2_a")
    header = header_bomb(tmp_path / "t" / "2_a" / "header.png")
    assert _tool("check_dataset").main([str(tmp_path / "t"), "--resolution", "32"]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "[unreadable]" in captured.out and str(bomb) in captured.out and str(header) in captured.out
    assert "decompression-bomb" in captured.out


def test_prepare_dataset_skips_the_bomb(tmp_path, low_limit, capsys):
    _folder_with_bomb(tmp_path / "raw")
    out = tmp_path / "out"
    assert _tool("prepare_dataset").main([str(tmp_path / "raw"), str(out), "--class_name", "dog"]) == 0
    placed = sorted(p.name for p in (out / "train" / "10_dog").iterdir())
    assert "huge.png" not in placed and "img_000.png" in placed
    captured = capsys.readouterr()
    assert "skipped 1 unreadable" in captured.out
    assert "WARNING" in captured.err and "huge.png" in captured.err and "Traceback" not in captured.err


def test_prepare_dataset_with_only_bombs_is_an_error(tmp_path, capsys):
    header_bomb(tmp_path / "raw" / "bomb.png")
    out = tmp_path / "out"
    assert _tool("prepare_dataset").main([str(tmp_path / "raw"), str(out), "--class_name", "dog"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error: None of the 1 pictures" in err
    assert not (out / "train").exists()


class _FakeCaptioner:
    def caption(self, images, options):
        return [f"a picture {img.size[0]}" for img in images]


def test_captioners_skip_the_bomb(tmp_path, low_limit, caplog):
    from library.tools.dataset.captioners import CaptionRun, GenerationOptions, caption_folder

    bomb = _folder_with_bomb(tmp_path / "pics")
    with caplog.at_level(logging.WARNING):
        report = caption_folder(
            tmp_path / "pics", _FakeCaptioner(), GenerationOptions(), CaptionRun(workers=1)
        )
    assert report.unreadable == [bomb] and len(report.written) == 2
    assert not bomb.with_suffix(".caption").exists() and "huge.png" in caplog.text


def test_captioners_with_only_bombs_is_an_error(tmp_path):
    from library.tools.dataset.captioners import CaptionRun, GenerationOptions, caption_folder

    header_bomb(tmp_path / "pics" / "bomb.png")
    with pytest.raises(DatasetError, match="None of the 1 pictures"):
        caption_folder(tmp_path / "pics", _FakeCaptioner(), GenerationOptions(), CaptionRun())


def test_tagger_skips_the_bomb(tmp_path, low_limit, tmp_path_factory):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from library.tools.dataset.tiny_tagger import build_tiny_tagger
    from library.tools.dataset.wd14 import TaggingRun, TagSelection, tag_folder
    from library.tools.dataset.wd14_model import WD14Model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model_dir = build_tiny_tagger(tmp_path_factory.mktemp("tagger"))
    model = WD14Model(model_dir / "model.onnx", model_dir / "selected_tags.csv")
    bomb = _folder_with_bomb(tmp_path / "pics")
    (tmp_path / "pics" / "huge.txt").unlink()
    report = tag_folder(tmp_path / "pics", model, TagSelection(), TaggingRun(batch_size=2))
    assert report.unreadable == [bomb] and len(report.written) == 2
    assert not bomb.with_suffix(".txt").exists()
    only = tmp_path / "only"
    header_bomb(only / "bomb.png")
    with pytest.raises(DatasetError, match="None of the 1 pictures"):
        tag_folder(only, model, TagSelection(), TaggingRun())
