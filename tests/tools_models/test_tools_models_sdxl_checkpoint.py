"""The checkpoint tools on SDXL: convert single file <-> diffusers (exact), model merge with 23 block weights,
the inspector (te1/te2, family, check against an SDXL base), make_tiny_model --family sdxl, dataset check."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from library.data.specs import DatasetSpec
from library.errors import ConfigError, ModelLoadError
from library.models.loading import load_base_model
from library.tools.dataset.check import CheckOptions, CheckReport, bucket_range_findings, check_dataset
from library.tools.models.convert import convert_model
from library.tools.models.inspect_lora import check_failed, inspect_lora, report_lines
from library.tools.models.merge_models import merge_checkpoints
from tests.tools_models.helpers import load_tool, sd_scripts_lora
from tests.tools_models.sdxl_helpers import (
    TE2_NAME,
    TE2_PATH,
    UNET_NAME,
    UNET_PATH,
    perturbed_sdxl,
    random_lora,
)


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl_files):
    return load_base_model(str(tiny_sdxl_files["single"]))


def _weight(model, part: str, path: str) -> torch.Tensor:
    return dict(model.parts[part].named_modules())[path].weight.detach()


def test_convert_sdxl_single_file_to_diffusers_and_back_is_exact(tmp_path, tiny_sdxl_files):
    source = tiny_sdxl_files["single"]
    folder = tmp_path / "folder"
    report = convert_model(source, folder)
    assert report.family == "sdxl" and report.fmt == "diffusers" and (folder / "text_encoder_2").is_dir()
    back = tmp_path / "back.safetensors"
    assert convert_model(folder, back).family == "sdxl"
    original, again = load_file(str(source)), load_file(str(back))
    assert set(original) == set(again)
    assert all(torch.equal(original[k], again[k]) for k in original)


def test_convert_sdxl_single_to_single_keeps_both_text_encoders(tmp_path, tiny_sdxl_files):
    out = tmp_path / "half.safetensors"
    report = convert_model(tiny_sdxl_files["single"], out, precision="fp16", prune=True)
    state = load_file(str(out))
    assert report.family == "sdxl" and report.dropped_keys == []
    assert any(k.startswith("conditioner.embedders.1.") for k in state)
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}


@pytest.mark.slow
def test_merge_sdxl_models_with_23_block_weights(tmp_path, tiny_sdxl_files, sdxl):
    tuned = perturbed_sdxl(tmp_path / "tuned.safetensors")
    weights = [0.5] * 23
    weights[5] = 1.0  # IN04
    out = tmp_path / "merged.safetensors"
    report = merge_checkpoints([str(tiny_sdxl_files["single"]), str(tuned)], out, ratio=0.25,
                               block_weights=weights)
    assert set(report.merged) == {"unet", "text_encoder_1", "text_encoder_2", "vae"}
    assert {"BASE", "IN04", "M02", "OUT"} <= set(report.block_counts)
    merged, b = load_base_model(str(out)), load_base_model(str(tuned))
    assert torch.equal(_weight(merged, "unet", UNET_PATH), _weight(b, "unet", UNET_PATH))  # IN04 at 1
    a_te, b_te = _weight(sdxl, "text_encoder_2", TE2_PATH), _weight(b, "text_encoder_2", TE2_PATH)
    torch.testing.assert_close(_weight(merged, "text_encoder_2", TE2_PATH), a_te * 0.75 + b_te * 0.25)
    with pytest.raises(ConfigError, match="23 values for sdxl"):
        merge_checkpoints([str(tiny_sdxl_files["single"]), str(tuned)], tmp_path / "x.safetensors",
                          block_weights=[1.0] * 25)


def test_merge_models_of_two_families_is_refused(tmp_path, tiny_sdxl_files, tiny_model_files):
    with pytest.raises(ModelLoadError, match=r"different families .*sd1.*sdxl"):
        merge_checkpoints([str(tiny_model_files["sd1"]["single"]), str(tiny_sdxl_files["single"])],
                          tmp_path / "x.safetensors")


def test_inspect_sdxl_lora_reports_te1_te2_and_the_family(tmp_path, tiny_sdxl_files, sdxl):
    path, modules = random_lora(tmp_path / "l.safetensors", sdxl)
    insp = inspect_lora(path, str(tiny_sdxl_files["single"]))
    lines = "\n".join(report_lines(insp))
    n_te1 = sum(n.startswith("lora_te1_") for n in modules)
    n_te2 = sum(n.startswith("lora_te2_") for n in modules)
    assert f"lora_te1 {n_te1}" in lines and f"lora_te2 {n_te2}" in lines and n_te1 and n_te2
    assert "fits: sdxl models" in lines and "architecture: SDXL" in lines
    assert insp.check.ok and insp.check.matched == len(modules) and insp.check.uncovered_targets == 0
    assert f"({insp.check.family})" in lines and insp.check.family == "sdxl"


def test_inspect_sd_lora_against_sdxl_fails_naming_both(tmp_path, tiny_sdxl_files):
    sd = sd_scripts_lora(tmp_path / "sd.safetensors", {
        "lora_unet_down_blocks_0_attentions_0_proj_in": (torch.randn(2, 32), torch.randn(32, 2), 1.0)},
        metadata={"ss_base_model_version": "sd_v1"})
    insp = inspect_lora(sd, str(tiny_sdxl_files["single"]))
    lines = "\n".join(report_lines(insp))
    assert check_failed(insp) and "for sd1/sd2 but" in lines and "sdxl model" in lines
    assert "fits: sd1/sd2 models" in lines and "ss_base_model_version: sd_v1" in lines


def test_inspect_warns_when_metadata_names_another_base(tmp_path, sdxl):
    path = sd_scripts_lora(tmp_path / "x.safetensors", {TE2_NAME: (torch.randn(2, 48), torch.randn(48, 2), 1.0),
                                                        UNET_NAME: (torch.randn(2, 64), torch.randn(64, 2), 1.0)},
                           metadata={"ss_base_model_version": "sd_v1"})
    assert "WARNING: the metadata names another base" in "\n".join(report_lines(inspect_lora(path)))


def test_make_tiny_model_sdxl_writes_folder_and_single_file(tmp_path):
    cli = load_tool("make_tiny_model")
    folder, single = tmp_path / "tiny_sdxl", tmp_path / "tiny_sdxl.safetensors"
    assert cli.main(["--family", "sdxl", "--out", str(folder), "--single_file", str(single)]) == 0
    a, b = load_base_model(str(folder)), load_base_model(str(single))
    assert a.family == b.family == "sdxl"
    assert torch.equal(_weight(a, "unet", UNET_PATH), _weight(b, "unet", UNET_PATH))


def test_dataset_check_at_the_sdxl_resolution(tiny_dataset):
    report = check_dataset(tiny_dataset / "train", tiny_dataset / "reg", CheckOptions(family="sdxl"))
    assert report.summary["resolution"] == [[1024, 1024]]
    assert any(f.code == "small" and "1024x1024" in f.message for f in report.findings)
    given = check_dataset(tiny_dataset / "train", None, CheckOptions(family="sdxl", resolution=768))
    assert given.summary["resolution"] == [[768, 768]]


def test_bucket_range_warning_at_1024():
    report = CheckReport()
    bucket_range_findings([DatasetSpec(resolution=(1024, 1024), enable_bucket=True)], report)
    assert [f.code for f in report.findings] == ["bucket_range"] and "2048" in report.findings[0].message
    quiet = CheckReport()
    bucket_range_findings([DatasetSpec(resolution=(1024, 1024), enable_bucket=True, max_bucket_reso=2048)], quiet)
    assert quiet.findings == []
