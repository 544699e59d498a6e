"""The LoRA tools on FLUX.1 (sd-scripts' flux_merge_lora.py / flux_extract_lora.py and the shared tools): merge
into the BFL transformer file and clip_l / t5xxl (numbers per fused qkv / linear1 slice, keys and dtypes kept),
merge FLUX LoRAs into one, extract from two transformer files, resize, inspect, and clear refusals across families.

Fast tests use a hand-made miniature BFL file; the slow ones the tiny FLUX files (dev and schnell)."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch

from library.errors import ModelLoadError
from tests.tools_models import flux_helpers as fh
from tests.tools_models.helpers import load_tool, sd_scripts_lora
from tests.tools_models.helpers import one_error_line as _error

merge_cli = load_tool("merge_lora")
extract_cli = load_tool("extract_lora_from_models")
resize_cli = load_tool("resize_lora")
inspect_cli = load_tool("inspect_lora")

QKV = "lora_unet_double_blocks_0_img_attn_qkv"
LINEAR1 = "lora_unet_single_blocks_0_linear1"
TE1 = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
TE3 = "lora_te3_encoder_block_0_layer_0_SelfAttention_q"
SD_NAME = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"


@pytest.fixture
def one_thread():
    """Tiny SVDs run ~10x faster on one thread than on two busy cores; the thread count is restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def mini(tmp_path):
    """A miniature BFL transformer file (hidden 4, bf16 weights, fp32 biases / norms) and a LoRA for its fused
    double-block qkv and single-block linear1."""
    base = fh.mini_transformer_file(tmp_path / "flux1-mini.safetensors")
    modules = fh.random_modules({QKV: (12, 4), LINEAR1: (28, 4)}, rank=2, alpha=1.0)
    return base, fh.write_lora(tmp_path / "lora.safetensors", modules), modules


# --- merge into the transformer file (fast: the miniature file) -------------------------------------------------


@pytest.mark.parametrize("option", ["--flux_model", "--sd_model"])
def test_merge_into_transformer_file_adds_each_slice_and_keeps_keys_and_dtypes(
    mini, tmp_path, option, capsys
):
    base_file, lora, modules = mini
    out = tmp_path / "merged.safetensors"
    assert (
        merge_cli.main(
            [option, str(base_file), "--models", str(lora), "--ratios", "0.7", "--save_to", str(out)]
        )
        == 0
    )
    assert "2 modules merged" in capsys.readouterr().out
    base, base_meta = fh.read(base_file)
    merged, meta = fh.read(out)
    assert list(merged) == list(base) and {k: v.dtype for k, v in merged.items()} == {
        k: v.dtype for k, v in base.items()
    }
    h = 4
    for name, key, pieces in (
        (QKV, "double_blocks.0.img_attn.qkv.weight", (h, h, h)),
        (LINEAR1, "single_blocks.0.linear1.weight", (h, h, h, 4 * h)),
    ):
        change = fh.delta(modules[name], 0.7)
        assert torch.equal(merged[key], (base[key].float() + change).to(torch.bfloat16))  # rounded once
        start = 0
        for rows in pieces:  # q, k, v (and a single block's MLP input) each get their own rows of ΔW
            got = merged[key][start : start + rows].float()
            torch.testing.assert_close(
                got,
                base[key][start : start + rows].float() + change[start : start + rows],
                rtol=2**-7,
                atol=1e-6,
            )
            start += rows
    for key in base:  # biases, norms, unpatched weights: bit for bit
        if key not in ("double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight"):
            assert torch.equal(merged[key], base[key])
    assert (
        meta["note"] == base_meta["note"]
        and meta["modelspec.merged_from"] == "flux1-mini.safetensors + lora.safetensors:0.7"
    )


def test_merge_into_transformer_file_with_the_comfyui_prefix_keeps_it(tmp_path):
    prefix = "model.diffusion_model."
    base_file = fh.mini_transformer_file(tmp_path / "prefixed.safetensors", prefix=prefix)
    modules = fh.random_modules({QKV: (12, 4)}, rank=2, alpha=1.0)
    lora = fh.write_lora(tmp_path / "lora.safetensors", modules)
    out = tmp_path / "merged.safetensors"
    assert merge_cli.main(["--sd_model", str(base_file), "--models", str(lora), "--save_to", str(out)]) == 0
    base, _ = fh.read(base_file)
    merged, _ = fh.read(out)
    key = prefix + "double_blocks.0.img_attn.qkv.weight"
    assert list(merged) == list(base) and torch.equal(
        merged[key], (base[key].float() + fh.delta(modules[QKV])).bfloat16()
    )


def test_merge_several_loras_rounds_once_and_takes_save_precision(mini, tmp_path):
    base_file, lora, modules = mini
    other = fh.random_modules({QKV: (12, 4)}, rank=3, alpha=6.0, seed=5)
    second = fh.write_lora(tmp_path / "b.safetensors", other, dtype=torch.float16)  # sd-scripts' fp16 file
    out = tmp_path / "merged.safetensors"
    assert (
        merge_cli.main(
            [
                "--flux_model",
                str(base_file),
                "--models",
                str(lora),
                str(second),
                "--ratios",
                "1",
                "-0.5",
                "--save_to",
                str(out),
                "--save_precision",
                "float",
            ]
        )
        == 0
    )
    base, _ = fh.read(base_file)
    merged, _ = fh.read(out)
    assert {v.dtype for v in merged.values()} == {torch.float32}
    key = "double_blocks.0.img_attn.qkv.weight"
    half = {
        n: tuple(t.half().float() if isinstance(t, torch.Tensor) else t for t in e) for n, e in other.items()
    }
    expected = base[key].float() + fh.delta(modules[QKV]) + fh.delta(half[QKV], -0.5)
    torch.testing.assert_close(merged[key], expected, rtol=0, atol=1e-6)


def test_merge_into_transformer_file_with_flux_block_weights(mini, tmp_path):
    base_file, lora, modules = mini
    weights = ["1"] * 57  # D00–D18, S00–S37
    weights[0], weights[19] = "0", "0.5"  # D00 off, S00 at half strength
    out = tmp_path / "merged.safetensors"
    assert (
        merge_cli.main(
            [
                "--flux_model",
                str(base_file),
                "--models",
                str(lora),
                "--save_to",
                str(out),
                "--save_precision",
                "float",
                "--block_weights",
                ",".join(weights),
            ]
        )
        == 0
    )
    base, _ = fh.read(base_file)
    merged, _ = fh.read(out)
    key = "double_blocks.0.img_attn.qkv.weight"
    assert torch.equal(merged[key], base[key].float())
    key = "single_blocks.0.linear1.weight"
    torch.testing.assert_close(
        merged[key], base[key].float() + fh.delta(modules[LINEAR1], 0.5), rtol=0, atol=1e-6
    )


def test_merge_names_odd_keys_and_refuses_what_does_not_fit(mini, tmp_path, capsys):
    base_file, _, modules = mini
    out = tmp_path / "merged.safetensors"
    odd = fh.write_lora(
        tmp_path / "odd.safetensors",
        {**{QKV: modules[QKV]}, **fh.random_modules({"lora_unet_double_blocks_7_img_attn_qkv": (12, 4)})},
    )
    assert merge_cli.main(["--flux_model", str(base_file), "--models", str(odd), "--save_to", str(out)]) == 0
    assert (
        "1 modules merged, 1 not in the model (e.g. lora_unet_double_blocks_7_img_attn_qkv)"
        in capsys.readouterr().out
    )
    out.unlink()
    cases = {
        "none": (
            fh.random_modules({"lora_unet_double_blocks_7_img_attn_qkv": (12, 4)}),
            "No module of",
            "lora_unet_double_blocks_7_img_attn_qkv",
        ),
        "shape": (fh.random_modules({QKV: (12, 8)}), "modules have other shapes", "LoRA out 12, in 8"),
        "te_only": (fh.random_modules({TE1: (4, 4)}), "--clip_l", "--clip_l_save_to"),
    }
    for kind, (entries, first, second) in cases.items():
        path = fh.write_lora(tmp_path / f"{kind}.safetensors", entries)
        assert (
            merge_cli.main(["--flux_model", str(base_file), "--models", str(path), "--save_to", str(out)])
            == 2
        )
        line = _error(capsys)
        assert first in line and second in line and str(path) in line, line
        assert not out.exists()


def test_merge_refuses_other_families_and_half_given_files(mini, tmp_path, capsys):
    base_file, lora, _ = mini
    out = tmp_path / "merged.safetensors"
    sd_lora = sd_scripts_lora(tmp_path / "sd.safetensors", fh.random_modules({SD_NAME: (32, 32)}))
    assert (
        merge_cli.main(["--flux_model", str(base_file), "--models", str(sd_lora), "--save_to", str(out)]) == 2
    )
    line = _error(capsys)
    assert "is a LoRA for sd1/sd2" in line and "is a flux model" in line and str(sd_lora) in line
    sdxl_file = tmp_path / "sdxl.safetensors"
    safetensors.torch.save_file(
        {"conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": torch.ones(4)},
        str(sdxl_file),
    )
    assert merge_cli.main(["--flux_model", str(sdxl_file), "--models", str(lora), "--save_to", str(out)]) == 2
    line = _error(capsys)
    assert "is a sdxl checkpoint, not a FLUX.1 transformer file" in line and "--sd_model" in line
    clip = tmp_path / "clip_l.safetensors"
    safetensors.torch.save_file(
        {"text_model.encoder.layers.0.self_attn.q_proj.weight": torch.ones(4, 4)}, str(clip)
    )
    assert (
        merge_cli.main(
            [
                "--flux_model",
                str(base_file),
                "--clip_l",
                str(clip),
                "--models",
                str(lora),
                "--save_to",
                str(out),
            ]
        )
        == 2
    )
    line = _error(capsys)
    assert "--clip_l" in line and "--clip_l_save_to" in line
    assert (
        merge_cli.main(
            [
                "--flux_model",
                str(base_file),
                "--models",
                str(lora),
                "--save_to",
                str(tmp_path / "merged.ckpt"),
            ]
        )
        == 2
    )
    assert ".safetensors" in _error(capsys)
    assert not out.exists() and not (tmp_path / "merged.ckpt").exists()


# --- LoRA files: merge together, resize, inspect (fast: hand-written FLUX LoRAs) -------------------------------


def _flux_lora_modules(seed=0, rank=2, alpha=1.0):
    shapes = {
        QKV: (192, 64),
        LINEAR1: (448, 64),
        "lora_unet_double_blocks_1_txt_mlp_0": (256, 64),
        TE1: (32, 32),
        TE3: (32, 32),
    }
    return fh.random_modules(shapes, rank=rank, alpha=alpha, seed=seed)


def test_merge_flux_loras_into_one_concatenates_ranks_and_keeps_flux_metadata(tmp_path):
    a, b = _flux_lora_modules(0, rank=2, alpha=1.0), _flux_lora_modules(1, rank=3, alpha=6.0)
    del b[TE3]
    paths = [fh.write_lora(tmp_path / "a.safetensors", a), fh.write_lora(tmp_path / "b.safetensors", b)]
    out = tmp_path / "ab.safetensors"
    assert merge_cli.main(["--models", *map(str, paths), "--ratios", "0.5", "-1", "--save_to", str(out)]) == 0
    tensors, meta = fh.read(out)
    assert {k.rsplit(".", 2)[0] if k.endswith("weight") else k.rsplit(".", 1)[0] for k in tensors} == set(a)
    for name in a:
        down, up = tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"]
        rank = 2 + (3 if name in b else 0)
        assert down.shape[0] == rank and float(tensors[f"{name}.alpha"]) == rank
        expected = fh.delta(a[name], 0.5) + (fh.delta(b[name], -1) if name in b else 0)
        torch.testing.assert_close(up @ down, expected, rtol=0, atol=1e-6)
    assert meta["ss_network_module"] == "networks.lora_flux" and meta["ss_base_model_version"] == "flux1"
    assert meta["modelspec.architecture"] == "flux-1-dev/lora" and meta["ss_network_dim"] == "5"


def test_resize_flux_lora_keeps_keys_and_records_the_new_dims(tmp_path, one_thread):
    modules = _flux_lora_modules(2, rank=4, alpha=2.0)
    path = fh.write_lora(
        tmp_path / "r4.safetensors", modules, metadata={"ss_network_dim": "4", "ss_network_alpha": "2"}
    )
    out = tmp_path / "r2.safetensors"
    assert resize_cli.main(["--model", str(path), "--new_rank", "2", "--save_to", str(out)]) == 0
    before, _ = fh.read(path)
    tensors, meta = fh.read(out)
    assert set(tensors) == set(before)
    for name, entry in modules.items():
        down, up, alpha = (tensors[f"{name}.{s}"] for s in ("lora_down.weight", "lora_up.weight", "alpha"))
        u, s, vh = torch.linalg.svd(fh.delta(entry))
        best = u[:, :2] @ torch.diag(s[:2]) @ vh[:2]  # Eckart–Young: the best rank-2 approximation
        torch.testing.assert_close(up @ down * (float(alpha) / 2), best, rtol=0, atol=1e-5)
    assert meta["ss_network_dim"] == "2" and meta["ss_network_alpha"] == "1.0"
    assert meta["ss_network_module"] == "networks.lora_flux" and meta["ss_base_model_version"] == "flux1"
    assert meta["modelspec.architecture"] == "flux-1-dev/lora"
    assert meta["ss_training_comment"].startswith("dimension is resized from 4 to 2")
    dyn = tmp_path / "dyn.safetensors"
    assert (
        resize_cli.main(
            [
                "--model",
                str(path),
                "--new_rank",
                "4",
                "--dynamic_method",
                "sv_fro",
                "--dynamic_param",
                "0.5",
                "--save_to",
                str(dyn),
            ]
        )
        == 0
    )
    tensors, meta = fh.read(dyn)
    assert set(tensors) == set(before) and meta["ss_network_dim"] == meta["ss_network_alpha"] == "Dynamic"
    assert all(tensors[f"{n}.lora_down.weight"].shape[0] < 4 for n in modules)


def test_inspect_shows_family_blocks_and_text_parts_of_a_flux_lora(tmp_path, capsys):
    from library.tools.models.lora_file import LoraModule, network_metadata, save_lora

    modules = {n: LoraModule(n, d, u, a) for n, (d, u, a) in _flux_lora_modules(3).items()}
    path = save_lora(
        tmp_path / "flux.safetensors",
        modules,
        network_metadata(family="flux", v_parameterization=False, dim=2, alpha=1.0, resolution=1024),
    )
    assert inspect_cli.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "type: LoRA, 3 UNet + 2 text-encoder modules, float32" in out
    assert "modules per part: lora_te1 1, lora_te3 1, lora_unet 3" in out
    assert "architecture: FLUX.1 (flux key layout" in out and "modelspec.architecture flux-1-dev" in out
    assert "fits: flux models (key layout); metadata ss_base_model_version: flux1" in out
    assert "modules per block (D00–D18, S00–S37): D00 1, D01 1, S00 1" in out
    assert "rank (Linear / 1x1): 2 x5" in out and "alpha: 1 x5" in out
    assert "WARNING" not in out and "ss_network_module: networks.lora_flux" in out
    text_only = fh.write_lora(
        tmp_path / "te.safetensors", {k: v for k, v in _flux_lora_modules(4).items() if k in (TE1, TE3)}
    )
    assert inspect_cli.main([str(text_only), "--no_metadata"]) == 0
    out = capsys.readouterr().out
    assert "fits: flux models" in out and "architecture: FLUX.1" in out  # lora_te3_ is FLUX's, not SDXL's


# --- the tiny FLUX files (slow: building them takes seconds) --------------------------------------------------


@pytest.fixture(scope="module")
def tiny_flux(tmp_path_factory):
    """The tiny FLUX.1-dev as a diffusers folder and as sd-scripts' separate files, from one build."""
    from library.models.tiny_flux import save_tiny_flux

    return save_tiny_flux(tmp_path_factory.mktemp("tools_flux"), "dev")


@pytest.fixture(scope="module")
def flux_files(tiny_flux):
    return tiny_flux["files"]


@pytest.fixture(scope="module")
def flux_lora(flux_files, tmp_path_factory):
    """A LoRA over every module the trainer adapts, CLIP-L's attention and T5's attention, rank 2, alpha 1."""
    names = fh.trainer_names(flux_files["transformer"])
    te1 = fh.text_names(flux_files["clip_l"], "lora_te1", r"self_attn\.(q|k|v|out)_proj")
    te3 = fh.text_names(flux_files["t5xxl"], "lora_te3", r"SelfAttention\.(q|k|v|o)\.")
    shapes = {
        **fh.shapes_of(flux_files["transformer"], names),
        **fh.shapes_of(flux_files["clip_l"], te1),
        **fh.shapes_of(flux_files["t5xxl"], te3),
    }
    modules = fh.random_modules(shapes, rank=2, alpha=1.0, seed=7)
    path = fh.write_lora(tmp_path_factory.mktemp("flux_lora") / "lora.safetensors", modules)
    return path, modules, {**names, **te1, **te3}


@pytest.mark.slow
def test_merge_into_tiny_flux_files_patches_the_transformer_clip_l_and_t5(flux_files, flux_lora, tmp_path):
    from library.models.flux_keys import bfl_to_diffusers
    from library.models.loading import load_base_model

    lora, modules, keys_of = flux_lora
    out = {part: tmp_path / f"{part}.safetensors" for part in ("transformer", "clip_l", "t5xxl")}
    assert (
        merge_cli.main(
            [
                "--flux_model",
                str(flux_files["transformer"]),
                "--clip_l",
                str(flux_files["clip_l"]),
                "--clip_l_save_to",
                str(out["clip_l"]),
                "--t5xxl",
                str(flux_files["t5xxl"]),
                "--t5xxl_save_to",
                str(out["t5xxl"]),
                "--models",
                str(lora),
                "--ratios",
                "0.6",
                "--save_to",
                str(out["transformer"]),
            ]
        )
        == 0
    )
    for part in out:
        base, base_meta = fh.read(flux_files[part])
        merged, meta = fh.read(out[part])
        assert list(merged) == list(base) and all(merged[k].dtype == base[k].dtype for k in base)
        assert meta["sdtrain.config"] == base_meta["sdtrain.config"]  # the file's own metadata is kept
        patched = {keys_of[n]: n for n in modules if fh.read(flux_files[part])[0].get(keys_of[n]) is not None}
        assert patched
        for key, tensor in base.items():
            if key in patched:
                torch.testing.assert_close(
                    merged[key], tensor + fh.delta(modules[patched[key]], 0.6), rtol=0, atol=1e-6
                )
            else:
                assert torch.equal(merged[key], tensor), key
    base = bfl_to_diffusers(fh.read(flux_files["transformer"])[0])
    merged = bfl_to_diffusers(fh.read(out["transformer"])[0])
    h = fh.HIDDEN
    qkv, linear1 = fh.delta(modules[QKV], 0.6), fh.delta(modules[LINEAR1], 0.6)
    for diff_key, change in (
        ("transformer_blocks.0.attn.to_q.weight", qkv[:h]),
        ("transformer_blocks.0.attn.to_k.weight", qkv[h : 2 * h]),
        ("transformer_blocks.0.attn.to_v.weight", qkv[2 * h :]),
        ("single_transformer_blocks.0.attn.to_k.weight", linear1[h : 2 * h]),
        ("single_transformer_blocks.0.proj_mlp.weight", linear1[3 * h :]),
    ):
        torch.testing.assert_close(merged[diff_key], base[diff_key] + change, rtol=0, atol=1e-6)
    model = load_base_model(
        str(out["transformer"]),
        components={"clip_l": str(out["clip_l"]), "t5xxl": str(out["t5xxl"]), "ae": str(flux_files["ae"])},
    )
    assert model.family == "flux"  # the merged files load as a model again


@pytest.mark.slow
def test_extract_from_two_tiny_flux_transformers_reproduces_the_difference(
    flux_files, tmp_path, capsys, one_thread
):
    base_file = flux_files["transformer"]
    tuned_file = fh.perturbed_transformer(base_file, tmp_path / "tuned.safetensors")
    base, _ = fh.read(base_file)
    tuned, _ = fh.read(tuned_file)
    names = fh.trainer_names(base_file)
    full, low = tmp_path / "full.safetensors", tmp_path / "low.safetensors"
    for path, dim in ((full, 64), (low, 2)):
        assert (
            extract_cli.main(
                [
                    "--model_org",
                    str(base_file),
                    "--model_tuned",
                    str(tuned_file),
                    "--dim",
                    str(dim),
                    "--clamp_quantile",
                    "1",
                    "--save_to",
                    str(path),
                ]
            )
            == 0
        )
    assert "modules extracted: 48 unet" in capsys.readouterr().out
    for path, dim in ((full, 64), (low, 2)):
        tensors, meta = fh.read(path)
        assert {k.rsplit(".", 2)[0] if k.endswith("weight") else k.rsplit(".", 1)[0] for k in tensors} == set(
            names
        )
        assert (
            meta["ss_base_model_version"] == "flux1" and meta["modelspec.architecture"] == "flux-1-dev/lora"
        )
        assert meta["ss_network_module"] == "networks.lora_flux" and meta["ss_network_dim"] == str(dim)
        for name, key in names.items():
            diff = tuned[key] - base[key]
            got = tensors[f"{name}.lora_up.weight"] @ tensors[f"{name}.lora_down.weight"]
            assert float(tensors[f"{name}.alpha"]) == min(dim, *diff.shape)  # scale 1
            if dim == 64:
                torch.testing.assert_close(got, diff, rtol=0, atol=2e-5)
            else:
                s = torch.linalg.svdvals(diff.double())
                assert float((diff - got).norm()) == pytest.approx(
                    float(s[2:].square().sum().sqrt()), rel=1e-4
                )


@pytest.mark.slow
def test_extract_names_the_schnell_architecture_and_refuses_other_families(
    flux_files, tmp_path, tiny_model_files, capsys, one_thread
):
    from library.models.flux_model import FluxTransformer
    from library.models.single_file import write_checkpoint
    from library.models.tiny_flux import tiny_flux_params

    torch.manual_seed(0)
    schnell = write_checkpoint(
        tmp_path / "schnell.safetensors", FluxTransformer(tiny_flux_params("schnell")).state_dict(), {}
    )
    tuned = fh.perturbed_transformer(schnell, tmp_path / "schnell_tuned.safetensors")
    out = tmp_path / "s.safetensors"
    assert (
        extract_cli.main(["--model_org", str(schnell), "--model_tuned", str(tuned), "--save_to", str(out)])
        == 0
    )
    assert fh.read(out)[1]["modelspec.architecture"] == "flux-1-schnell/lora"
    sd_file = tiny_model_files["sd1"]["single"]
    bad = tmp_path / "bad.safetensors"
    assert (
        extract_cli.main(
            [
                "--model_org",
                str(flux_files["transformer"]),
                "--model_tuned",
                str(sd_file),
                "--save_to",
                str(bad),
            ]
        )
        == 2
    )
    line = _error(capsys)
    assert "flux" in line and "a sd1 model" in line and not bad.exists()


@pytest.mark.slow
def test_inspect_check_and_refusal_across_families(flux_files, flux_lora, tiny_model_files, tmp_path, capsys):
    lora, modules, _ = flux_lora
    assert inspect_cli.main([str(lora), "--check", str(flux_files["transformer"]), "--no_metadata"]) == 0
    out = capsys.readouterr().out
    assert (
        "(flux): 48 modules match" in out
        and "text-encoder modules not checked" in out
        and "WARNING" not in out
    )
    sd_lora = sd_scripts_lora(tmp_path / "sd.safetensors", fh.random_modules({SD_NAME: (32, 32)}))
    assert inspect_cli.main([str(sd_lora), "--check", str(flux_files["transformer"]), "--no_metadata"]) == 1
    out = capsys.readouterr().out
    assert "WARNING: the LoRA is for sd1/sd2 but flux1-dev.safetensors is a flux model" in out
    merged = tmp_path / "merged.safetensors"
    assert (
        merge_cli.main(
            [
                "--sd_model",
                str(tiny_model_files["sd1"]["single"]),
                "--models",
                str(lora),
                "--save_to",
                str(merged),
            ]
        )
        == 2
    )
    line = _error(capsys)
    assert "is a LoRA for flux" in line and "is a sd1 model" in line and not merged.exists()
    from library.models.family import get_model_family
    from library.tools.models.lora_file import check_lora_family, read_lora

    with pytest.raises(ModelLoadError, match="is a LoRA for flux .* but base.safetensors is a sdxl model"):
        check_lora_family(read_lora(lora), get_model_family("sdxl"), "base.safetensors is a sdxl model")


@pytest.mark.slow
def test_merge_into_a_flux_diffusers_folder_and_check_against_it(tiny_flux, flux_lora, tmp_path, capsys):
    """A diffusers FLUX folder merges through the loaded model (T5 modules by T5's own paths) and saves a folder."""
    from library.models.loading import load_base_model

    lora, modules, _ = flux_lora
    out = tmp_path / "merged_folder"
    assert (
        merge_cli.main(
            [
                "--sd_model",
                str(tiny_flux["folder"]),
                "--models",
                str(lora),
                "--ratios",
                "0.5",
                "--save_to",
                str(out),
            ]
        )
        == 0
    )
    assert f"{len(modules)} modules merged" in capsys.readouterr().out
    base = load_base_model(str(tiny_flux["folder"]))
    merged = load_base_model(str(out))
    assert merged.family == "flux" and (out / "transformer").is_dir()
    for part, path, name in (
        ("unet", "double_blocks.0.img_attn.qkv", QKV),
        ("unet", "single_blocks.1.linear1", "lora_unet_single_blocks_1_linear1"),
        ("text_encoder_1", "encoder.layers.0.self_attn.q_proj", TE1),
        ("text_encoder_2", "encoder.block.0.layer.0.SelfAttention.q", TE3),
    ):
        before = base.parts[part].get_submodule(path).weight.detach()
        after = merged.parts[part].get_submodule(path).weight.detach()
        torch.testing.assert_close(after, before + fh.delta(modules[name], 0.5), rtol=0, atol=1e-6)
    assert inspect_cli.main([str(lora), "--check", str(tiny_flux["folder"]), "--no_metadata"]) == 0
    assert f"(flux): {len(modules)} modules match" in capsys.readouterr().out


@pytest.mark.slow
def test_a_trained_flux_lora_inspects_cleanly_and_merges(flux_files, tiny_dataset, tmp_path, capsys):
    """The trainer's own FLUX LoRA (sd-scripts' names, its hashes): inspect shows no warning and all 48 modules
    fit the transformer file; merged into it, every patched weight is the base plus the file's ΔW."""
    from tests.training.helpers import base_options, train

    options = base_options(
        tiny_dataset,
        tmp_path / "out",
        pretrained_model_name_or_path=str(flux_files["transformer"]),
        clip_l=str(flux_files["clip_l"]),
        t5xxl=str(flux_files["t5xxl"]),
        ae=str(flux_files["ae"]),
        network_module="networks.lora_flux",
        network_train_unet_only=True,
        timestep_sampling="shift",
        model_prediction_type="raw",
        guidance_scale=1.0,
        max_train_steps=1,
        learning_rate=1e-2,
        t5xxl_max_token_length=32,
    )
    assert train(tmp_path, options) == 0
    lora = tmp_path / "out" / "lora.safetensors"
    capsys.readouterr()
    assert inspect_cli.main([str(lora), "--check", str(flux_files["transformer"])]) == 0
    out = capsys.readouterr().out
    assert "WARNING" not in out and "(flux): 48 modules match" in out and "architecture: FLUX.1" in out
    merged = tmp_path / "merged.safetensors"
    assert (
        merge_cli.main(
            ["--flux_model", str(flux_files["transformer"]), "--models", str(lora), "--save_to", str(merged)]
        )
        == 0
    )
    tensors, _ = fh.read(lora)
    base, _ = fh.read(flux_files["transformer"])
    after, _ = fh.read(merged)
    for name, key in fh.trainer_names(flux_files["transformer"]).items():
        entry = (
            tensors[f"{name}.lora_down.weight"],
            tensors[f"{name}.lora_up.weight"],
            float(tensors[f"{name}.alpha"]),
        )
        torch.testing.assert_close(after[key], base[key] + fh.delta(entry), rtol=0, atol=1e-6)
