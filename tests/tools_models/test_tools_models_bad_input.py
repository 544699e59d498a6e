"""Bad input to the LoRA / model tools: NaN/inf tensors and ratios, damaged LoRAs, random bytes, paths
that are folders or files. Each must exit 2 with one ``error:`` paragraph naming the problem (inspect:
a "problems:" section too) and write nothing."""

from __future__ import annotations

import math
import os

import pytest
import safetensors.torch
import torch

from library.errors import ConfigError, ModelLoadError
from library.tools.models.lora_file import read_lora
from library.tools.models.resize_lora import check_resize_options
from tests.tools_models.helpers import load_tool, sd_scripts_lora
from tests.tools_models.helpers import one_error_line as _error

inspect_cli = load_tool("inspect_lora")
resize_cli = load_tool("resize_lora")
merge_cli = load_tool("merge_lora")
merge_models_cli = load_tool("merge_models")
tiny_cli = load_tool("make_tiny_model")

TE = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"  # (32, 32) in the tiny SD1 model
UNET = "lora_unet_mid_block_attentions_0_proj_in"


def _factors(rank=4, width=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rank, width, generator=gen) * 0.1, torch.randn(width, rank, generator=gen) * 0.1


def _raw(path, tensors):
    safetensors.torch.save_file(tensors, str(path))
    return path


def _module(name, down, up, alpha):
    out = {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up}
    if alpha is not None:
        out[f"{name}.alpha"] = alpha
    return out


def _bad_files(tmp_path) -> dict:
    down, up = _factors()
    nan_down = down.clone()
    nan_down[0, 0] = math.nan
    inf_up = up.clone()
    inf_up[1, 1] = math.inf
    good_te = _module(TE, *_factors(seed=1), torch.tensor(2.0))
    files = {
        "nan": (_module(TE, nan_down, up, torch.tensor(2.0)), "NaN/inf values in lora_down.weight"),
        "inf": (
            {**good_te, **_module(UNET, down, inf_up, torch.tensor(2.0))},
            "NaN/inf values in lora_up.weight",
        ),
        "nan_alpha": (_module(TE, down, up, torch.tensor(math.nan)), "NaN/inf values in alpha"),
        "rank_mismatch": (_module(TE, down, torch.randn(32, 3), torch.tensor(2.0)), "rank mismatch"),
        "vector_alpha": (_module(TE, down, up, torch.tensor([1.0, 2.0])), "alpha has 2 values"),
        "int": (_module(TE, down.to(torch.int64), up.to(torch.int64), torch.tensor(2)), "int64"),
        "one_dim": (_module(TE, torch.ones(4), up, None), "shape (4,)"),
    }
    return {k: (_raw(tmp_path / f"{k}.safetensors", t), why) for k, (t, why) in files.items()}


@pytest.fixture
def bad(tmp_path):
    return _bad_files(tmp_path)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from library.models.tiny import save_tiny_single_file

    root = tmp_path_factory.mktemp("tiny")
    return save_tiny_single_file(root / "a.safetensors", "sd1", 0), save_tiny_single_file(
        root / "b.safetensors", "sd1", 1
    )


@pytest.fixture
def good(tmp_path):
    return sd_scripts_lora(tmp_path / "good.safetensors", {TE: (*_factors(seed=2), 2.0)}, dtype=torch.float32)


@pytest.mark.parametrize(
    "kind", ["nan", "inf", "nan_alpha", "rank_mismatch", "vector_alpha", "int", "one_dim"]
)
def test_inspect_reports_damaged_modules(bad, kind, capsys):
    path, why = bad[kind]
    assert inspect_cli.main([str(path), "--no_metadata"]) == 2
    captured = capsys.readouterr()
    assert "problems: 1 damaged modules" in captured.out and why in captured.out
    assert "Traceback" not in captured.err
    assert f"error: {path} has 1 damaged LoRA modules" in captured.err and why in captured.err


@pytest.mark.parametrize(
    "kind", ["nan", "inf", "nan_alpha", "rank_mismatch", "vector_alpha", "int", "one_dim"]
)
def test_resize_and_merge_refuse_damaged_loras(bad, kind, tmp_path, capsys):
    path, why = bad[kind]
    out = tmp_path / "out.safetensors"
    assert resize_cli.main(["--model", str(path), "--new_rank", "2", "--save_to", str(out)]) == 2
    line = _error(capsys)
    assert str(path) in line and why in line
    assert merge_cli.main(["--models", str(path), "--save_to", str(out)]) == 2
    assert why in _error(capsys)
    assert not out.exists()
    with pytest.raises(ModelLoadError, match="damaged LoRA modules"):
        read_lora(path)


def test_nan_lora_is_named_with_its_first_modules(tmp_path):
    down, up = _factors()
    down[0, 0] = math.nan
    tensors = {}
    for i in range(5):
        tensors.update(
            _module(
                f"lora_te_text_model_encoder_layers_{i}_mlp_fc1", down.clone(), up.clone(), torch.tensor(1.0)
            )
        )
    path = _raw(tmp_path / "many.safetensors", tensors)
    with pytest.raises(ModelLoadError) as info:
        read_lora(path)
    text = str(info.value)
    assert "5 damaged LoRA modules" in text and "layers_0_mlp_fc1" in text and "and 2 more" in text
    assert "earlier saved epoch" in text


def test_nan_lora_into_a_model_is_refused_before_saving(bad, tiny_models, tmp_path, capsys):
    out = tmp_path / "merged.safetensors"
    path, _ = bad["nan"]
    assert (
        merge_cli.main(["--sd_model", str(tiny_models[0]), "--models", str(path), "--save_to", str(out)]) == 2
    )
    assert "nan.safetensors" in _error(capsys)
    assert not out.exists()


@pytest.mark.parametrize("ratio", ["nan", "inf", "-inf"])
def test_non_finite_ratios_are_refused(good, tiny_models, tmp_path, ratio, capsys):
    out = tmp_path / "m.safetensors"
    assert merge_cli.main(["--models", str(good), f"--ratios={ratio}", "--save_to", str(out)]) == 2
    assert "--ratios" in _error(capsys)
    argv = [
        "--sd_model",
        str(tiny_models[0]),
        "--models",
        str(good),
        f"--ratios={ratio}",
        "--save_to",
        str(out),
    ]
    assert merge_cli.main(argv) == 2
    assert "finite number" in _error(capsys)
    a, b = tiny_models
    for option in ("--ratio", "--text_encoder_ratio"):
        argv = ["--models", str(a), str(b), f"{option}={ratio}", "--save_to", str(out)]
        assert merge_models_cli.main(argv) == 2
        assert option in _error(capsys)
    assert not out.exists()


def test_block_weights_must_be_finite(good, tmp_path, capsys):
    weights = ",".join(["1"] * 24 + ["nan"])
    out = tmp_path / "m.safetensors"
    assert merge_cli.main(["--models", str(good), "--block_weights", weights, "--save_to", str(out)]) == 2
    assert "finite" in _error(capsys)


def test_overflowing_merges_save_nothing(good, tiny_models, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    argv = ["--models", str(good), "--ratios", "1e38", "--save_precision", "fp16", "--save_to", str(out)]
    assert merge_cli.main(argv) == 2
    assert "Nothing was saved" in _error(capsys)
    a, b = tiny_models
    assert merge_models_cli.main(["--models", str(a), str(b), "--ratio", "1e39", "--save_to", str(out)]) == 2
    assert "NaN or infinite" in _error(capsys)
    assert not out.exists()


def test_merge_models_names_the_model_holding_nan(tiny_models, tmp_path, capsys):
    a, b = tiny_models
    tensors = safetensors.torch.load_file(str(b))
    metadata = safetensors.safe_open(str(b), "pt").metadata()
    key = next(k for k in tensors if k.startswith("model.diffusion_model.") and k.endswith("weight"))
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = math.nan
    nan_model = tmp_path / "nan_model.safetensors"
    safetensors.torch.save_file(tensors, str(nan_model), metadata=metadata)
    out = tmp_path / "m.safetensors"
    assert merge_models_cli.main(["--models", str(a), str(nan_model), "--save_to", str(out)]) == 2
    assert "nan_model.safetensors" in _error(capsys)
    assert not out.exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--dynamic_method", "sv_fro", "--dynamic_param", "-1"], "in (0, 1]"),
        (["--dynamic_method", "sv_cumulative", "--dynamic_param", "1.5"], "in (0, 1]"),
        (["--dynamic_method", "sv_fro", "--dynamic_param", "nan"], "in (0, 1]"),
        (["--dynamic_method", "sv_ratio", "--dynamic_param", "0.5"], "≥ 1"),
        (["--dynamic_method", "sv_ratio", "--dynamic_param", "inf"], "≥ 1"),
        (["--dynamic_param", "0.9"], "without --dynamic_method"),
        (["--new_rank", "0"], "--new_rank must be a positive integer"),
        (["--new_conv_rank", "-3"], "--new_conv_rank must be a positive integer"),
    ],
)
def test_resize_options_out_of_range(good, tmp_path, options, message, capsys):
    out = tmp_path / "r.safetensors"
    assert resize_cli.main(["--model", str(good), "--save_to", str(out), *options]) == 2
    assert message in _error(capsys)
    assert not out.exists()


def test_check_resize_options_accepts_valid_values():
    check_resize_options(4, None, "sv_fro", 0.9)
    check_resize_options(4, 2, "sv_ratio", 10)
    with pytest.raises(ConfigError):
        check_resize_options(4, None, "sv_fro", None)


@pytest.mark.parametrize("content", [os.urandom(3000), b"hello world", b""])
@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".ckpt"])
def test_random_bytes_are_one_paragraph_errors(tmp_path, content, suffix, capsys):
    path = tmp_path / f"random{suffix}"
    path.write_bytes(content)
    out = tmp_path / "r.safetensors"
    assert inspect_cli.main([str(path)]) == 2
    line = _error(capsys)
    assert str(path) in line and "weights_only" not in line and "file an issue" not in line
    assert resize_cli.main(["--model", str(path), "--save_to", str(out)]) == 2
    assert str(path) in _error(capsys)
    assert not out.exists()


def test_save_to_an_existing_folder(good, tmp_path, capsys):
    folder = tmp_path / "already_here.safetensors"
    folder.mkdir()
    assert resize_cli.main(["--model", str(good), "--new_rank", "2", "--save_to", str(folder)]) == 2
    assert "is an existing folder" in _error(capsys)
    assert merge_cli.main(["--models", str(good), "--save_to", str(folder)]) == 2
    assert "is an existing folder" in _error(capsys)
    assert (
        list(folder.iterdir()) == [] and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    )


def test_save_to_below_a_file(good, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert (
        resize_cli.main(
            ["--model", str(good), "--new_rank", "2", "--save_to", str(blocker / "x.safetensors")]
        )
        == 2
    )
    assert "is a file, not a folder" in _error(capsys)


def test_make_tiny_model_refuses_a_file_as_out(tmp_path, capsys):
    existing = tmp_path / "existing"
    existing.write_text("keep me")
    assert tiny_cli.main(["--out", str(existing)]) == 2
    line = _error(capsys)
    assert "--out" in line and "existing file" in line
    assert existing.read_text() == "keep me"
    folder = tmp_path / "folder"
    folder.mkdir()
    assert tiny_cli.main(["--single_file", str(folder)]) == 2
    assert "existing folder" in _error(capsys)
    assert tiny_cli.main(["--single_file", str(existing / "x.safetensors")]) == 2
    assert "is a file, not a folder" in _error(capsys)


def test_good_lora_still_inspects_and_resizes(good, tmp_path, capsys):
    assert inspect_cli.main([str(good), "--no_metadata"]) == 0
    assert "problems:" not in capsys.readouterr().out
    out = tmp_path / "r.safetensors"
    assert resize_cli.main(["--model", str(good), "--new_rank", "2", "--save_to", str(out)]) == 0
    assert read_lora(out).modules[TE].rank == 2
