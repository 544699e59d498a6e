"""Fixtures of the FLUX tests: the tiny FLUX on disk, built once per session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_flux_files(tmp_path_factory):
    """{"folder": Path, "files": {"transformer", "clip_l", "t5xxl", "ae": Path}}: the tiny FLUX.1-dev (seed 0) as a
    diffusers FluxPipeline folder and as sd-scripts' four separate files, from one build, written once per session."""
    from library.models.tiny_flux import save_tiny_flux

    return save_tiny_flux(tmp_path_factory.mktemp("tiny_flux"), "dev")


@pytest.fixture(scope="session")
def tiny_flux_schnell_files(tmp_path_factory):
    """The tiny FLUX.1-schnell (no guidance embedder, shift-1 scheduler) in both layouts, as tiny_flux_files."""
    from library.models.tiny_flux import save_tiny_flux

    return save_tiny_flux(tmp_path_factory.mktemp("tiny_flux_schnell"), "schnell")
