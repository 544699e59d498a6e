"""Fixtures for the network tests: the built-in tiny SD1 model, fresh copies per test, its diffusers folder."""

from __future__ import annotations

import copy

import pytest
import torch

from library.models.tiny import save_tiny_diffusers, tiny_components


@pytest.fixture(scope="session")
def tiny_sd1() -> dict:
    """The tiny SD1 components (seed 0); never modify these, use ``fresh_models``."""
    return tiny_components(family="sd1", seed=0)


@pytest.fixture
def fresh_models(tiny_sd1) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Independent (unet, text_encoder) copies of the tiny model, in eval mode."""
    return copy.deepcopy(tiny_sd1["unet"]).eval(), copy.deepcopy(tiny_sd1["text_encoder"]).eval()


@pytest.fixture(scope="session")
def tiny_sd1_dir(tmp_path_factory):
    """The same tiny model written as a diffusers folder (for StableDiffusionPipeline)."""
    return save_tiny_diffusers(tmp_path_factory.mktemp("tiny_sd1") / "model", "sd1")
