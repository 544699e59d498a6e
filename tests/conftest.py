"""Fixtures shared by all test folders: the tiny model on disk and a tiny captioned dataset."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

from fast_tier_limit import pytest_runtest_makereport, pytest_sessionstart  # noqa: E402,F401 - the fast tier's limit


@pytest.fixture(scope="session")
def tiny_model_files(tmp_path_factory):
    """{family: {"folder": Path, "single": Path}}: the built-in tiny model as a diffusers folder and as an
    original-layout single file, for sd1 and sd2, written once per session."""
    from library.models.tiny import save_tiny_diffusers, save_tiny_single_file

    root = tmp_path_factory.mktemp("tiny_models")
    return {
        family: {
            "folder": save_tiny_diffusers(root / family, family),
            "single": save_tiny_single_file(root / f"{family}.safetensors", family),
        }
        for family in ("sd1", "sd2")
    }


@pytest.fixture(scope="session")
def tiny_sdxl_files(tmp_path_factory):
    """{"folder": Path, "single": Path}: the tiny SDXL model (seed 0) as a diffusers folder and as an SGM
    single file, written once per session."""
    from library.models.tiny_sdxl import save_tiny_sdxl_diffusers, save_tiny_sdxl_single_file

    root = tmp_path_factory.mktemp("tiny_sdxl")
    return {"folder": save_tiny_sdxl_diffusers(root / "sdxl"), "single": save_tiny_sdxl_single_file(root / "sdxl.safetensors")}


def draw_picture(path: Path, size: tuple[int, int], color: tuple[int, int, int], seed: int) -> None:
    """A simple picture: a coloured disc on a shaded background (deterministic from ``seed``)."""
    w, h = size
    img = Image.new("RGB", size, (seed * 37 % 255, seed * 91 % 255, 128))
    draw = ImageDraw.Draw(img)
    r = min(w, h) // 3
    draw.ellipse([w // 2 - r, h // 2 - r, w // 2 + r, h // 2 + r], fill=color)
    img.save(path)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A dataset in the real layout: train/2_sks disc (4 captioned images), reg/1_disc (2 images)."""
    root = tmp_path_factory.mktemp("dataset")
    train = root / "train" / "2_sks disc"
    reg = root / "reg" / "1_disc"
    train.mkdir(parents=True)
    reg.mkdir(parents=True)
    for i in range(4):
        draw_picture(train / f"img{i}.png", (64, 64) if i % 2 == 0 else (96, 64), (220, 30, 30), i)
        (train / f"img{i}.txt").write_text(f"sks disc, red, picture {i}", encoding="utf-8")
    for i in range(2):
        draw_picture(reg / f"reg{i}.png", (64, 64), (30, 30, 220), 10 + i)
    return root


@pytest.fixture(scope="session")
def shared_gui(tmp_path_factory):
    """One plain ``gui.py`` (127.0.0.1, no login, no --lang) for the browser tests that only read and fill
    forms or run tools on files of their own (absolute paths), started once per session: each start costs
    about 9 s on 2 cores. Tests that start trainings or look at the queue start their own."""
    from tests.gui.server import GuiServer, need_browser

    need_browser()
    root = tmp_path_factory.mktemp("gui_shared")
    server = GuiServer(root)
    yield server
    server.close()
