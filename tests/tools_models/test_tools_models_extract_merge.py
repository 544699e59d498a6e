"""Extract a LoRA from a perturbed tiny model and merge it back (issue 6: "Extract then merge")."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from library.models.loading import load_base_model
from library.models.single_file import save_single_file
from library.models.tiny import tiny_components
from library.networks import keys
from library.tools.models.extract_lora import extract_lora_file
from library.tools.models.merge_lora import merge_into_checkpoint
from tests.tools_models.helpers import module_layers

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tuned_file(tmp_path_factory):
    """The tiny SD1 model with every LoRA-targetable weight (incl. LoCon convs and the text encoder) perturbed."""
    parts = tiny_components("sd1")
    gen = torch.Generator().manual_seed(7)
    targets = keys.find_unet_targets(parts["unet"], include_conv_blocks=True)
    targets += keys.find_text_encoder_targets(parts["text_encoder"])
    with torch.no_grad():
        for target in targets:
            weight = target.module.weight
            weight.add_(torch.randn(weight.shape, generator=gen) * 0.05)
    path = tmp_path_factory.mktemp("tuned") / "tuned.safetensors"
    return save_single_file(path, parts["unet"], parts["vae"], parts["text_encoder"], "sd1")


def layers_of(path):
    model = load_base_model(str(path))
    return module_layers(model.unet, model.text_encoder), model


def test_full_rank_extract_then_merge_gives_the_tuned_model(tiny_model_files, tuned_file, tmp_path):
    org = tiny_model_files["sd1"]["single"]
    lora_path, report = extract_lora_file(
        str(org),
        str(tuned_file),
        tmp_path / "full.safetensors",
        dim=10_000,
        conv_dim=10_000,
        clamp_quantile=1.0,
        min_diff=0.0,
    )
    assert not report.text_encoder_skipped
    assert all(report.predicted_error(n) < 1e-4 for n in report.ranks)
    with safe_open(str(lora_path), "pt") as f:
        meta = f.metadata()
        names = {k.rsplit(".", 2)[0] for k in f.keys() if k.endswith(".lora_down.weight")}
    assert meta["ss_network_module"] == "networks.lora"
    assert meta["ss_base_model_version"] == "sd_v1"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert any(n.startswith("lora_te_text_model_encoder_layers_0_") for n in names)
    assert any("resnets" in n for n in names)  # LoCon modules

    merged = tmp_path / "merged.safetensors"
    merge_into_checkpoint(str(org), [str(lora_path)], [1.0], str(merged))
    with safe_open(str(merged), "pt") as got, safe_open(str(tuned_file), "pt") as want:
        assert set(got.keys()) == set(want.keys())
        worst = max(float((got.get_tensor(k) - want.get_tensor(k)).abs().max()) for k in want.keys())
    assert worst < 2e-5


def test_low_rank_error_is_what_the_discarded_singular_values_predict(tiny_model_files, tuned_file, tmp_path):
    org = tiny_model_files["sd1"]["single"]
    lora_path, report = extract_lora_file(
        str(org),
        str(tuned_file),
        tmp_path / "r2.safetensors",
        dim=2,
        conv_dim=3,
        clamp_quantile=1.0,
        min_diff=0.0,
    )
    assert set(report.ranks.values()) == {2, 3}
    merged = tmp_path / "merged_r2.safetensors"
    merge_into_checkpoint(str(org), [str(lora_path)], [1.0], str(merged))
    got, _ = layers_of(merged)
    want, _ = layers_of(tuned_file)
    checked = 0
    for name in report.ranks:
        error = float(torch.linalg.vector_norm((got[name].weight - want[name].weight).detach().double()))
        predicted = report.predicted_error(name)
        assert predicted > 1e-3  # low rank really discards something
        assert error == pytest.approx(predicted, rel=2e-3), name
        checked += 1
    assert checked == len(report.ranks) > 100


def test_unchanged_text_encoder_is_skipped(tiny_model_files, tmp_path):
    parts = tiny_components("sd1")
    with torch.no_grad():
        parts["unet"].down_blocks[0].attentions[0].proj_in.weight.add_(0.5)
    tuned = save_single_file(
        tmp_path / "t.safetensors", parts["unet"], parts["vae"], parts["text_encoder"], "sd1"
    )
    path, report = extract_lora_file(
        str(tiny_model_files["sd1"]["single"]), str(tuned), tmp_path / "l.safetensors", dim=4
    )
    assert report.text_encoder_skipped
    assert not any(n.startswith("lora_te_") for n in report.ranks)
    assert report.ranks["lora_unet_down_blocks_0_attentions_0_proj_in"] == 4
