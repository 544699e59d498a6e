"""Fixtures of the dataset-tool tests: the tiny WD14 tagger and tiny BLIP / GIT captioners on disk."""

from __future__ import annotations

import warnings

import pytest


@pytest.fixture(scope="session")
def tiny_tagger_dir(tmp_path_factory):
    """A folder with the tiny tagger's model.onnx (64x64 input) and selected_tags.csv, built once."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from library.tools.dataset.tiny_tagger import build_tiny_tagger

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_tiny_tagger(tmp_path_factory.mktemp("tiny_tagger"))


@pytest.fixture(scope="session")
def tiny_captioner_dirs(tmp_path_factory):
    """{"blip": folder, "git": folder}: tiny random captioning models with their processors."""
    from tests.tools_dataset.helpers import build_tiny_blip, build_tiny_git

    root = tmp_path_factory.mktemp("tiny_captioners")
    return {"blip": build_tiny_blip(root / "blip"), "git": build_tiny_git(root / "git")}
