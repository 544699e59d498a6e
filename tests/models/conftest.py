"""Shared fixtures: the tiny model written once per session as a diffusers folder and single files."""

from __future__ import annotations

import pytest

from library.models.tiny import save_tiny_diffusers, save_tiny_single_file


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory):
    """{family: {"folder": Path, "single": Path}} for sd1 and sd2, built once."""
    root = tmp_path_factory.mktemp("tiny_models")
    files = {}
    for family in ("sd1", "sd2"):
        files[family] = {
            "folder": save_tiny_diffusers(root / family, family),
            "single": save_tiny_single_file(root / f"{family}.safetensors", family),
        }
    return files
