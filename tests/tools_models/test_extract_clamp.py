"""extract's ``clamp_quantile`` clips outliers only, and reports what it costs (issue 16, part 8)."""

from __future__ import annotations

import pytest
import torch

from library.tools.models import lowrank
from library.tools.models.extract_lora import DEFAULT_CLAMP_QUANTILE, ExtractReport, extract_difference


def rank_two(out: int, inp: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(out, 2, generator=gen) @ torch.randn(2, inp, generator=gen) * 0.01


def rebuilt(module) -> torch.Tensor:
    return module.up.flatten(1) @ module.down.flatten(1) * (module.alpha / module.rank)


def relative_error(module, diff) -> float:
    return float(torch.linalg.vector_norm(rebuilt(module) - diff) / torch.linalg.vector_norm(diff))


@pytest.mark.parametrize("shape", [(32, 32), (64, 32), (128, 96)])
def test_rank_two_change_at_dim_8_survives_the_default_clamp(shape):
    diff = rank_two(*shape)
    report = ExtractReport()
    module, _ = extract_difference("m", diff, 8, DEFAULT_CLAMP_QUANTILE, None, report)
    assert relative_error(module, diff) < 1e-4
    assert report.clamps == {}
    # sd-scripts' plain clamp to the 0.99 quantile cuts real signal out of the same factors
    u, s, vh = lowrank.svd(diff)
    up, down = lowrank.clamp_factors(*lowrank.split_factors(u, s, vh, 8), 0.99)
    assert float(torch.linalg.vector_norm(up @ down - diff) / torch.linalg.vector_norm(diff)) > 0.1


def test_planted_outlier_in_a_factor_is_clipped_and_nothing_else_changes():
    gen = torch.Generator().manual_seed(1)
    up, down = torch.randn(64, 4, generator=gen), torch.randn(4, 48, generator=gen)
    up[5, 2] = 100.0
    c_up, c_down, result = lowrank.clamp_outliers(up, down, 0.99, torch.ones(4))
    assert result.clipped == 1
    q = float(torch.quantile(torch.cat([up.flatten(), down.flatten()]).abs(), 0.99))
    assert float(c_up[5, 2]) == pytest.approx(lowrank.OUTLIER_FENCE * q)
    assert c_up[5, 2] < 20
    keep = torch.ones_like(up, dtype=torch.bool)
    keep[5, 2] = False
    assert torch.equal(c_up[keep], up[keep]) and torch.equal(c_down, down)
    # no clamp at quantile 1 or None
    assert lowrank.clamp_outliers(up, down, 1.0)[2].clipped == 0
    assert lowrank.clamp_outliers(up, down, None)[0] is up


def test_spike_in_the_difference_is_clipped_and_its_cost_reported():
    diff = rank_two(48, 40)
    diff[3, 7] += 5.0  # one weight changed far more than the rest: its SVD component is a spike
    report = ExtractReport()
    module, s = extract_difference("lora_unet_x", diff, 8, DEFAULT_CLAMP_QUANTILE, None, report)
    before, after, clipped = report.clamps["lora_unet_x"]
    assert clipped >= 1
    assert before == pytest.approx(lowrank.discarded_error(s, 8) / float(torch.linalg.vector_norm(diff)), abs=1e-6)
    assert after == pytest.approx(relative_error(module, diff), rel=1e-4)
    assert after > before + 0.1
    assert float(max(module.up.abs().max(), module.down.abs().max())) < float(5.0**0.5) * 0.9
    lines = "\n".join(report.lines())
    assert "clipped outliers in 1 module" in lines and "lora_unet_x" in lines


@pytest.mark.slow
def test_tiny_model_rank_two_changes_extract_exactly_with_the_default(tiny_model_files, tmp_path):
    from library.models.single_file import save_single_file
    from library.models.tiny import tiny_components
    from library.networks import keys
    from library.tools.models.extract_lora import extract_lora_file

    parts = tiny_components("sd1")
    targets = keys.find_unet_targets(parts["unet"])
    with torch.no_grad():
        for i, target in enumerate(targets):
            weight = target.module.weight
            weight.add_(rank_two(weight.shape[0], weight[0].numel(), seed=i).reshape(weight.shape))
    tuned = save_single_file(tmp_path / "t.safetensors", parts["unet"], parts["vae"], parts["text_encoder"], "sd1")
    _, report = extract_lora_file(str(tiny_model_files["sd1"]["single"]), str(tuned), tmp_path / "l.safetensors",
                                  dim=8)
    assert len(report.ranks) == len(targets) and report.clamps == {}
    assert "nothing clipped" in "\n".join(report.lines())
    assert all(lowrank.fro_retained(report.singular_values[n], 8) > 1 - 1e-9 for n in report.ranks)
