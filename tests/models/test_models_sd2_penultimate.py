"""Foreign SD 2.x single files: the unused 24th OpenCLIP block is dropped, as diffusers' SD2 has 23 layers."""

from __future__ import annotations

import torch

from library.models.ldm_convert import _drop_unused_open_clip_layer


def _te_keys(layers: int) -> dict:
    sd = {"embeddings.token_embedding.weight": torch.zeros(1)}
    for i in range(layers):
        sd[f"encoder.layers.{i}.mlp.fc1.weight"] = torch.zeros(1)
    return sd


def test_24_block_open_clip_loses_its_last_block():
    out = _drop_unused_open_clip_layer(_te_keys(24), "open_clip")
    assert {k.split(".")[2] for k in out if k.startswith("encoder.")} == {str(i) for i in range(23)}
    assert "embeddings.token_embedding.weight" in out


def test_other_counts_and_layouts_are_kept():
    assert len(_drop_unused_open_clip_layer(_te_keys(23), "open_clip")) == 24
    assert len(_drop_unused_open_clip_layer(_te_keys(24), "hf_clip")) == 25
