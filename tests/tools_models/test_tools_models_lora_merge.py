"""Merging LoRAs into one (concatenated ranks, SVD), sd-scripts files into a checkpoint, CLI errors."""

from __future__ import annotations

import json

import pytest
import torch

from library.errors import ConfigError, ModelLoadError
from library.tools.models.lora_file import LoraModule, read_lora
from library.tools.models.merge_lora import concat_modules, merge_lora_files
from tests.tools_models.helpers import load_tool, sd_scripts_lora, sd_scripts_metadata

merge_cli = load_tool("merge_lora")
resize_cli = load_tool("resize_lora")

NAMES = ("lora_unet_mid_block_attentions_0_proj_in", "lora_unet_mid_block_resnets_0_conv1")


def two_files(tmp_path):
    gen = torch.Generator().manual_seed(0)

    def modules(rank, alpha):
        return {
            NAMES[0]: (torch.randn(rank, 24, generator=gen), torch.randn(16, rank, generator=gen), alpha),
            NAMES[1]: (
                torch.randn(rank, 8, 3, 3, generator=gen),
                torch.randn(8, rank, 1, 1, generator=gen),
                alpha,
            ),
        }

    a = sd_scripts_lora(tmp_path / "a.safetensors", modules(4, 2.0), metadata=sd_scripts_metadata())
    b = sd_scripts_lora(
        tmp_path / "b.safetensors", modules(6, 6.0), dtype=torch.float32, no_alpha=(NAMES[1],)
    )
    return a, b


def hand_delta(down, up, alpha):
    """ΔW by einsum, independent of the code under test."""
    down, up = down.double(), up.double()
    rank = down.shape[0]
    if down.dim() == 2:
        return torch.einsum("or,ri->oi", up, down) * alpha / rank
    return torch.einsum("or,rikl->oikl", up[:, :, 0, 0], down) * alpha / rank


def expected_sum(paths, ratios):
    import safetensors.torch

    total = {}
    for path, ratio in zip(paths, ratios, strict=True):
        sd = safetensors.torch.load_file(str(path))
        for name in NAMES:
            down, up = sd[f"{name}.lora_down.weight"], sd[f"{name}.lora_up.weight"]
            alpha = float(sd.get(f"{name}.alpha", torch.tensor(float(down.shape[0]))))
            total[name] = total.get(name, 0) + ratio * hand_delta(down, up, alpha)
    return total


def test_concat_merge_is_exact(tmp_path):
    a, b = two_files(tmp_path)
    out, rows = merge_lora_files(
        [str(a), str(b)], [0.8, -0.5], tmp_path / "ab.safetensors", save_precision="float"
    )
    assert rows == []
    merged = read_lora(out)
    want = expected_sum([a, b], [0.8, -0.5])
    for name in NAMES:
        assert merged.modules[name].rank == 10
        torch.testing.assert_close(merged.modules[name].delta().double(), want[name], atol=1e-4, rtol=1e-3)
    assert merged.metadata["ss_network_dim"] == "10"
    assert json.loads(merged.metadata["ss_network_args"])["conv_dim"] == "10"
    assert merged.metadata["modelspec.merged_from"] == "a.safetensors:0.8, b.safetensors:-0.5"
    assert merged.metadata["sshs_model_hash"]


def test_svd_merge_to_full_rank_is_exact_and_lower_rank_keeps_the_top(tmp_path):
    a, b = two_files(tmp_path)
    want = expected_sum([a, b], [1.0, 0.5])
    out, rows = merge_lora_files(
        [str(a), str(b)], [1.0, 0.5], tmp_path / "svd.safetensors", new_rank=10, save_precision="float"
    )
    merged = read_lora(out)
    for name in NAMES:
        torch.testing.assert_close(merged.modules[name].delta().double(), want[name], atol=1e-4, rtol=1e-3)
    out3, rows3 = merge_lora_files(
        [str(a), str(b)], [1.0, 0.5], tmp_path / "svd3.safetensors", new_rank=3, new_conv_rank=2
    )
    merged3 = read_lora(out3)
    assert merged3.modules[NAMES[0]].rank == 3 and merged3.modules[NAMES[1]].rank == 2
    s = torch.linalg.svdvals(want[NAMES[0]])
    err = torch.linalg.matrix_norm(merged3.modules[NAMES[0]].delta().double() - want[NAMES[0]])
    assert float(err) == pytest.approx(float(s[3:].pow(2).sum().sqrt()), rel=1e-2)  # fp16 output
    assert {r.name for r in rows3} == set(NAMES)


def test_concat_rejects_different_shapes():
    one = LoraModule("x", torch.zeros(2, 4), torch.zeros(8, 2), 1.0)
    other = LoraModule("x", torch.zeros(2, 5), torch.zeros(8, 2), 1.0)
    from library.tools.models.lora_file import LoraFile

    with pytest.raises(ModelLoadError, match="different base models"):
        concat_modules([(LoraFile("a", {"x": one}), 1.0), (LoraFile("b", {"x": other}), 1.0)])


def test_ratios_must_match_models(tmp_path):
    a, b = two_files(tmp_path)
    with pytest.raises(ConfigError, match="one ratio per model"):
        merge_lora_files([str(a), str(b)], [1.0], tmp_path / "x.safetensors")


def test_cli_merge_and_resize(tmp_path, capsys):
    a, b = two_files(tmp_path)
    assert (
        merge_cli.main(
            [
                "--models",
                str(a),
                str(b),
                "--ratios",
                "1",
                "1",
                "--svd",
                "--new_rank",
                "4",
                "--save_to",
                str(tmp_path / "m.safetensors"),
            ]
        )
        == 0
    )
    assert "Frobenius norm retained" in capsys.readouterr().out
    assert (
        resize_cli.main(
            [
                "--model",
                str(a),
                "--new_rank",
                "8",
                "--dynamic_method",
                "sv_fro",
                "--dynamic_param",
                "0.5",
                "--save_to",
                str(tmp_path / "r.safetensors"),
                "--verbose",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert f"{NAMES[0]}: rank 4 ->" in out
    assert read_lora(tmp_path / "r.safetensors").metadata["ss_network_dim"] == "Dynamic"
    # a checkpoint given as a LoRA: one clear error line, exit code 2
    ckpt = tmp_path / "model.safetensors"
    import safetensors.torch

    safetensors.torch.save_file({"model.diffusion_model.conv_in.weight": torch.zeros(1)}, str(ckpt))
    assert (
        resize_cli.main(
            ["--model", str(ckpt), "--new_rank", "4", "--save_to", str(tmp_path / "z.safetensors")]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error:") and "full Stable Diffusion checkpoint" in err


@pytest.mark.slow
def test_sd_scripts_file_merges_into_a_checkpoint(tiny_model_files, tmp_path):
    """fp16 tensors, a module without alpha, a LoCon 3x3 conv: merged as sd-scripts' loaders apply them."""
    from library.models.loading import load_base_model
    from library.tools.models.merge_lora import merge_into_checkpoint
    from tests.tools_models.test_tools_models_inspect import CONV, LINEAR, build_modules

    modules = build_modules()
    path = sd_scripts_lora(tmp_path / "sks.safetensors", modules, no_alpha=(LINEAR[4],))
    single = tiny_model_files["sd1"]["single"]
    report = merge_into_checkpoint(str(single), [str(path)], [0.6], str(tmp_path / "out.safetensors"))
    assert report.entries[0]["merged"] == 6 and report.entries[0]["unmatched"] == []
    base, merged = load_base_model(str(single)), load_base_model(str(tmp_path / "out.safetensors"))
    from tests.tools_models.helpers import module_layers

    before = module_layers(base.unet, base.text_encoder)
    after = module_layers(merged.unet, merged.text_encoder)
    for name in LINEAR + CONV:
        down, up, alpha = modules[name]
        down, up = down.half().float(), up.half().float()
        alpha = down.shape[0] if name == LINEAR[4] else alpha
        want = before[name].weight.double() + 0.6 * hand_delta(down, up, alpha).reshape(
            before[name].weight.shape
        )
        torch.testing.assert_close(after[name].weight.double(), want, atol=1e-5, rtol=1e-5)
