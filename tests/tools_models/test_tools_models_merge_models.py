"""Checkpoint merging: weighted sum / add difference tensor by tensor, per-block weights on the right keys."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors import safe_open

from library.errors import ConfigError, ModelLoadError
from library.models.single_file import save_single_file
from library.models.tiny import tiny_components, tiny_unet_config
from library.tools.models.merge_models import (
    add_difference,
    merge_checkpoints,
    merge_state_dicts,
    weighted_sum,
)


def test_formulas():
    a, b, c = torch.tensor([1.0, 2.0]), torch.tensor([3.0, -2.0]), torch.tensor([1.0, 1.0])
    torch.testing.assert_close(weighted_sum(a, b, None, 0.25), torch.tensor([1.5, 1.0]))
    torch.testing.assert_close(add_difference(a, b, c, 0.5), torch.tensor([2.0, 0.5]))


def test_merge_state_dicts_copies_integers_and_rejects_other_shapes():
    a = {"w": torch.ones(2), "ids": torch.arange(3)}
    b = {"w": torch.zeros(2), "ids": torch.arange(3) + 5}
    out = merge_state_dicts(a, b, None, lambda k: 0.5)
    assert out["ids"].tolist() == [0, 1, 2]
    torch.testing.assert_close(out["w"], torch.full((2,), 0.5))
    with pytest.raises(ModelLoadError, match=r"w is \(2,\)"):
        merge_state_dicts(a, {"w": torch.zeros(3), "ids": b["ids"]}, None, lambda k: 0.5)
    with pytest.raises(ConfigError, match="merge mode"):
        merge_state_dicts(a, b, None, lambda k: 0.5, mode="average")


def tensors(path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.fixture(scope="module")
def three_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge_models")
    paths = []
    for seed in (1, 2, 3):
        parts = tiny_components("sd1", seed=seed)
        paths.append(
            save_single_file(
                root / f"m{seed}.safetensors", parts["unet"], parts["vae"], parts["text_encoder"], "sd1"
            )
        )
    return paths


@pytest.mark.slow
def test_weighted_sum_and_add_difference_tensor_by_tensor(three_models, tmp_path):
    a, b, c = (tensors(p) for p in three_models)
    merge_checkpoints([str(p) for p in three_models[:2]], tmp_path / "ws.safetensors", ratio=0.3)
    ws = tensors(tmp_path / "ws.safetensors")
    assert set(ws) == set(a)
    for key in a:
        if not a[key].is_floating_point():  # position ids: copied from A
            assert torch.equal(ws[key], a[key])
            continue
        torch.testing.assert_close(ws[key], a[key] * 0.7 + b[key] * 0.3, atol=1e-6, rtol=1e-6, msg=key)
    report = merge_checkpoints(
        [str(p) for p in three_models], tmp_path / "ad.safetensors", ratio=0.8, save_precision="fp16"
    )
    assert report.mode == "add_difference"
    ad = tensors(tmp_path / "ad.safetensors")
    for key in (k for k in a if a[k].is_floating_point()):
        assert ad[key].dtype == torch.float16
        torch.testing.assert_close(ad[key], (a[key] + (b[key] - c[key]) * 0.8).half(), msg=key)


@pytest.mark.slow
def test_merge_rejects_wrong_model_count_and_families(three_models, tiny_model_files, tmp_path):
    with pytest.raises(ConfigError, match="needs 3 models"):
        merge_checkpoints(
            [str(p) for p in three_models[:2]], tmp_path / "x.safetensors", mode="add_difference"
        )
    with pytest.raises(ModelLoadError, match="different families"):
        merge_checkpoints(
            [str(three_models[0]), str(tiny_model_files["sd2"]["single"])], tmp_path / "y.safetensors"
        )


def constant_model(path, value: float):
    """SD's real block layout (layers_per_block 2 -> 12 input / 12 output blocks), every weight = value."""
    from diffusers import UNet2DConditionModel

    parts = tiny_components("sd1")
    unet = UNet2DConditionModel(**{**tiny_unet_config("sd1"), "layers_per_block": 2})
    with torch.no_grad():
        for module in (unet, parts["vae"], parts["text_encoder"]):
            for tensor in module.state_dict().values():
                if tensor.is_floating_point():
                    tensor.fill_(value)
    return save_single_file(path, unet, parts["vae"], parts["text_encoder"], "sd1")


@pytest.mark.slow
def test_block_weights_land_on_their_blocks(tmp_path):
    zeros, ones = (
        constant_model(tmp_path / "zeros.safetensors", 0.0),
        constant_model(tmp_path / "ones.safetensors", 1.0),
    )
    weights = [
        round(0.01 * (i + 1), 2) for i in range(25)
    ]  # IN00=.01 … IN11=.12, M00=.13, OUT00=.14 … OUT11=.25
    report = merge_checkpoints(
        [str(zeros), str(ones)],
        tmp_path / "bw.safetensors",
        ratio=0.9,
        block_weights=",".join(map(str, weights)),
        text_encoder_ratio=0.6,
    )
    assert len(report.block_counts) == 25
    out = tensors(tmp_path / "bw.safetensors")
    seen = set()
    for key, value in out.items():
        if not value.is_floating_point():
            continue
        ldm = key.removeprefix("model.diffusion_model.")
        if m := re.match(r"input_blocks\.(\d+)\.", ldm):
            expected, block = weights[int(m.group(1))], f"IN{int(m.group(1)):02d}"
        elif ldm.startswith("middle_block."):
            expected, block = weights[12], "M00"
        elif m := re.match(r"output_blocks\.(\d+)\.", ldm):
            expected, block = weights[13 + int(m.group(1))], f"OUT{int(m.group(1)):02d}"
        elif key.startswith("model.diffusion_model."):
            expected, block = 0.9, "unet other"  # time_embed, out.0, out.2
        elif key.startswith("cond_stage_model."):
            expected, block = 0.6, "text encoder"
        else:
            expected, block = 0.9, "vae"
        seen.add(block)
        assert torch.allclose(value, torch.full_like(value, expected)), (
            key,
            float(value.flatten()[0]),
            expected,
        )
    assert len(seen) == 28
