"""LoRA files: save/load round trip, metadata and sshs hashes, size mismatches, sd-scripts-style files."""

from __future__ import annotations

import datetime
import hashlib
import json
import struct

import pytest
import safetensors.torch
import torch
from lora_helpers import randomize_up_weights

from library.errors import ModelLoadError
from library.networks.lora import create_network, network_from_weights
from library.networks.metadata import lora_architecture, modelspec_metadata
from library.util.safetensors_io import (
    hashes_of_bytes,
    precalculate_hashes,
    read_metadata,
    save_safetensors,
)


@pytest.fixture
def trained(fresh_models):
    unet, te = fresh_models
    network = create_network(unet, te, dim=4, alpha=2, conv_dim=2, conv_alpha=1)
    randomize_up_weights(network)
    return network


def test_round_trip_gives_equal_tensors(trained, fresh_models, tmp_path):
    unet, te = fresh_models
    path = trained.save(tmp_path / "out.safetensors", metadata={"ss_network_dim": "4"})
    other = create_network(unet, te, dim=4, alpha=2, conv_dim=2, conv_alpha=1)
    report = other.load_weights(path)
    assert len(report.loaded) == 201 and not report.missing and not report.unexpected
    a, b = trained.state_dict(), other.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_bundled_embeddings_are_reported_as_such_not_as_ignored_modules(trained, fresh_models):
    unet, te = fresh_models
    state = {**trained.state_dict(), "bundle_emb.sks.string_to_param.*": torch.zeros(2, 32)}
    report = create_network(unet, te, dim=4, alpha=2, conv_dim=2, conv_alpha=1).load_weights(state)
    assert report.bundled == ["sks"] and not report.unexpected
    assert "bundled embeddings sks (loaded by pivotal tuning" in report.summary()
    assert "not in the network" not in report.summary()


def test_fp16_save_and_pt_format(trained, fresh_models, tmp_path):
    unet, te = fresh_models
    path = trained.save(tmp_path / "half.safetensors", dtype=torch.float16)
    stored = safetensors.torch.load_file(str(path))
    assert {v.dtype for v in stored.values()} == {torch.float16}
    pt = trained.save(tmp_path / "out.pt")
    loaded = torch.load(pt, weights_only=True)
    assert set(loaded) == set(trained.state_dict())
    other = create_network(unet, te, dim=4, alpha=2, conv_dim=2, conv_alpha=1)
    other.load_weights(pt)
    key = "lora_unet_mid_block_resnets_0_conv1.lora_up.weight"
    assert torch.equal(other.state_dict()[key], trained.state_dict()[key])


def test_metadata_and_hashes(trained, tmp_path):
    meta = {"ss_network_dim": "4", "ss_network_alpha": "2.0", "ss_network_module": "networks.lora"}
    meta |= modelspec_metadata(
        lora_architecture(v2=False, v_parameterization=False),
        "my lora",
        512,
        "epsilon",
        date=datetime.datetime(2024, 5, 1, 12, 30, 5, 123),
    )
    path = trained.save(tmp_path / "m.safetensors", metadata=meta)
    stored = read_metadata(path)
    for key, value in meta.items():
        assert stored[key] == value
    assert stored["modelspec.sai_model_spec"] == "1.0.1"
    assert stored["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert stored["modelspec.date"] == "2024-05-01T12:30:05"
    assert stored["modelspec.resolution"] == "512x512"
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    assert json.loads(data[8 : 8 + n])["__metadata__"]["sshs_model_hash"] == stored["sshs_model_hash"]
    assert stored["sshs_model_hash"] == hashlib.sha256(data[8 + n :]).hexdigest()
    assert len(stored["sshs_legacy_hash"]) == 8
    # legacy hash: computed on the file written with only the ss_* metadata
    ss_only = {k: v for k, v in meta.items() if k.startswith("ss_")}
    raw = safetensors.torch.save({k: v.contiguous() for k, v in trained.state_dict().items()}, ss_only)
    assert stored["sshs_legacy_hash"] == hashlib.sha256(raw[0x100000:0x110000]).hexdigest()[:8]


def test_legacy_hash_reads_the_second_mebibyte(tmp_path):
    big = {"w": torch.arange(600_000, dtype=torch.float32)}  # 2.4 MB
    model_hash, legacy = precalculate_hashes(big, {"ss_x": "1", "other": "dropped"})
    raw = safetensors.torch.save(big, {"ss_x": "1"})
    assert legacy == hashlib.sha256(raw[0x100000:0x110000]).hexdigest()[:8]
    assert legacy != hashlib.sha256(b"").hexdigest()[:8]
    assert (model_hash, legacy) == hashes_of_bytes(raw)
    path = save_safetensors(tmp_path / "big.safetensors", big, {"ss_x": "1", "other": "y"})
    assert read_metadata(path)["sshs_model_hash"] == model_hash
    with pytest.raises(TypeError, match="strings"):
        save_safetensors(tmp_path / "bad.safetensors", big, {"ss_x": 1})


def test_save_is_atomic(trained, tmp_path, monkeypatch):
    path = trained.save(tmp_path / "keep.safetensors")
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        trained.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.safetensors"]


def test_dim_mismatch_is_a_clear_error(trained, fresh_models, tmp_path):
    unet, te = fresh_models
    path = trained.save(tmp_path / "r4.safetensors")
    other = create_network(unet, te, dim=8, alpha=2, conv_dim=2)
    with pytest.raises(ModelLoadError) as info:
        other.load_weights(path)
    message = str(info.value)
    assert "r4.safetensors" in message and "network_dim=8" in message
    assert "file (4, " in message and "network (8, " in message and "dim_from_weights" in message


def test_missing_and_unexpected_modules_are_reported(trained, fresh_models, tmp_path):
    unet, te = fresh_models
    path = trained.save(tmp_path / "locon.safetensors")
    plain = create_network(unet, te, dim=4, alpha=2)  # no conv modules
    report = plain.load_weights(path)
    assert len(report.loaded) == 144 and not report.missing
    assert len(report.unexpected) == 57 and "lora_unet_mid_block_resnets_0_conv1" in report.unexpected
    with pytest.raises(ModelLoadError, match="57 file modules not in the network"):
        plain.load_weights(path, strict=True)


def test_network_from_weights_sizes_from_the_file(fresh_models, tmp_path):
    """An sd-scripts-style file: fp16, mixed ranks, some modules without alpha (alpha = rank then)."""
    unet, te = fresh_models
    gen = torch.Generator().manual_seed(3)
    sd = {
        "lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.randn(8, 64, 1, 1, generator=gen),
        "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight": torch.randn(64, 8, 1, 1, generator=gen),
        "lora_unet_mid_block_attentions_0_proj_in.alpha": torch.tensor(4.0),
        "lora_unet_mid_block_resnets_0_conv1.lora_down.weight": torch.randn(2, 64, 3, 3, generator=gen),
        "lora_unet_mid_block_resnets_0_conv1.lora_up.weight": torch.randn(64, 2, 1, 1, generator=gen),
        "lora_te_text_model_encoder_layers_1_mlp_fc2.lora_down.weight": torch.randn(3, 128, generator=gen),
        "lora_te_text_model_encoder_layers_1_mlp_fc2.lora_up.weight": torch.randn(32, 3, generator=gen),
        "lora_te_text_model_encoder_layers_9_mlp_fc2.lora_down.weight": torch.randn(3, 128, generator=gen),
        "lora_te_text_model_encoder_layers_9_mlp_fc2.lora_up.weight": torch.randn(32, 3, generator=gen),
    }
    path = tmp_path / "kohya.safetensors"
    safetensors.torch.save_file({k: v.half() for k, v in sd.items()}, str(path))
    network, report = network_from_weights(path, unet, te)
    assert sorted(report.loaded) == [
        "lora_te_text_model_encoder_layers_1_mlp_fc2",
        "lora_unet_mid_block_attentions_0_proj_in",
        "lora_unet_mid_block_resnets_0_conv1",
    ]
    assert report.unexpected == ["lora_te_text_model_encoder_layers_9_mlp_fc2"]
    assert sorted(report.alpha_defaulted) == [
        "lora_te_text_model_encoder_layers_1_mlp_fc2",
        "lora_unet_mid_block_resnets_0_conv1",
    ]
    own = network.state_dict()
    assert own["lora_unet_mid_block_resnets_0_conv1.alpha"].item() == 2.0
    assert own["lora_unet_mid_block_attentions_0_proj_in.alpha"].item() == 4.0
    module = network.lora_unet_mid_block_attentions_0_proj_in
    assert module.scale == 0.5 and module.lora_dim == 8
    key = "lora_te_text_model_encoder_layers_1_mlp_fc2.lora_up.weight"
    assert own[key].dtype == torch.float32 and torch.equal(own[key], sd[key].half().float())


def test_foreign_file_is_refused(fresh_models, tmp_path):
    unet, te = fresh_models
    path = tmp_path / "sdxl.safetensors"
    safetensors.torch.save_file(
        {"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": torch.zeros(4, 8)}, str(path)
    )
    with pytest.raises(ModelLoadError, match="No module of .*sdxl.safetensors matches this model"):
        network_from_weights(path, unet, te)
    with pytest.raises(ModelLoadError, match="does not exist"):
        network_from_weights(tmp_path / "nope.safetensors", unet, te)


@pytest.mark.parametrize(
    ("v2", "v_pred", "expected"),
    [
        (False, False, "stable-diffusion-v1/lora"),
        (True, False, "stable-diffusion-v2-512/lora"),
        (True, True, "stable-diffusion-v2-768-v/lora"),
    ],
)
def test_lora_architecture(v2, v_pred, expected):
    assert lora_architecture(v2, v_pred) == expected


def test_modelspec_fields():
    meta = modelspec_metadata("stable-diffusion-v2-768-v/lora", "t", (768, 512), "v", author="me")
    assert meta["modelspec.implementation"] == "diffusers"
    assert meta["modelspec.resolution"] == "768x512"
    assert meta["modelspec.prediction_type"] == "v"
    assert meta["modelspec.author"] == "me"
    assert "modelspec.license" not in meta
    with pytest.raises(ValueError, match="prediction_type"):
        modelspec_metadata("x", "t", 512, "eps")
