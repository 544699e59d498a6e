"""tools/convert_model.py: exact round trips for SD1 and SD2 both ways, pruning, clear errors (issue 4)."""

from __future__ import annotations

from pathlib import Path

import pytest
import safetensors.torch
import torch

from library.errors import ConfigError, ModelLoadError, UserError
from library.tools.models.checkpoint import output_format
from library.tools.models.convert import check_destination_folder, convert_model, diffusers_folder_strangers
from tests.tools_models.helpers import load_tool

convert_cli = load_tool("convert_model")

PARTS = ("unet", "vae", "text_encoder")


def folder_tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for part in PARTS:
        for file in sorted((folder / part).glob("*.safetensors")):
            out.update({f"{part}/{k}": v for k, v in safetensors.torch.load_file(str(file)).items()})
    return out


def assert_same(a: dict, b: dict):
    assert set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


def test_output_format_from_name_and_flag():
    assert output_format("x.safetensors") == "safetensors"
    assert output_format("x.ckpt") == "ckpt"
    assert output_format("out_folder") == "diffusers"
    assert output_format("x.safetensors", "safetensors") == "safetensors"
    with pytest.raises(ConfigError, match="folder"):
        output_format("x.safetensors", "diffusers")
    with pytest.raises(ConfigError, match=r"\.ckpt"):
        output_format("x.safetensors", "ckpt")


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_diffusers_single_diffusers_round_trip(tiny_model_files, tmp_path, family):
    folder = tiny_model_files[family]["folder"]
    report = convert_model(folder, tmp_path / "one.safetensors")
    assert report.family == family and report.fmt == "safetensors"
    assert report.prediction_type == ("v_prediction" if family == "sd2" else "epsilon")
    with safetensors.safe_open(str(tmp_path / "one.safetensors"), "pt") as f:
        keys = list(f.keys())
    te_prefix = "cond_stage_model.model." if family == "sd2" else "cond_stage_model.transformer."
    assert any(k.startswith(te_prefix) for k in keys)
    assert all(
        k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")) for k in keys
    )
    convert_model(tmp_path / "one.safetensors", tmp_path / "back")
    assert_same(folder_tensors(folder), folder_tensors(tmp_path / "back"))
    sched = (tmp_path / "back" / "scheduler" / "scheduler_config.json").read_text()
    assert ('"v_prediction"' in sched) == (family == "sd2")


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_single_diffusers_single_round_trip(tiny_model_files, tmp_path, family):
    single = tiny_model_files[family]["single"]
    convert_model(single, tmp_path / "folder")
    convert_model(tmp_path / "folder", tmp_path / "again.safetensors")
    assert_same(
        safetensors.torch.load_file(str(single)),
        safetensors.torch.load_file(str(tmp_path / "again.safetensors")),
    )


@pytest.mark.slow
def test_precision_and_ckpt(tiny_model_files, tmp_path):
    single = tiny_model_files["sd1"]["single"]
    convert_model(single, tmp_path / "half.ckpt", precision="fp16")
    state = torch.load(tmp_path / "half.ckpt", weights_only=True)["state_dict"]
    original = safetensors.torch.load_file(str(single))
    assert set(state) == set(original)
    for key, value in original.items():
        assert torch.equal(state[key], value.half() if value.is_floating_point() else value), key
    report = convert_model(tmp_path / "half.ckpt", tmp_path / "half_folder")
    assert report.dtype == "float16"
    assert next(iter(folder_tensors(tmp_path / "half_folder").values())).dtype == torch.float16


def plant_ema(single: Path, out: Path) -> tuple[dict, list[str]]:
    state = safetensors.torch.load_file(str(single))
    with safetensors.safe_open(str(single), "pt") as f:
        metadata = f.metadata()
    planted = {
        "model_ema.decay": torch.tensor(0.9999),
        "model_ema.num_updates": torch.tensor(1000, dtype=torch.int32),
        "alphas_cumprod": torch.linspace(1, 0, 1000),
    }
    for key in [k for k in state if k.startswith("model.diffusion_model.")][:20]:
        planted["model_ema.diffusion_model" + key[len("model.diffusion_model.") :].replace(".", "")] = state[
            key
        ].clone()
    safetensors.torch.save_file({**state, **planted}, str(out), metadata=metadata)
    return state, sorted(planted)


def test_prune_removes_planted_ema_keys(tiny_model_files, tmp_path):
    state, planted = plant_ema(tiny_model_files["sd1"]["single"], tmp_path / "ema.safetensors")
    kept = convert_model(tmp_path / "ema.safetensors", tmp_path / "kept.safetensors")
    assert kept.dropped_keys == []
    assert set(safetensors.torch.load_file(str(tmp_path / "kept.safetensors"))) == set(state) | set(planted)
    report = convert_model(tmp_path / "ema.safetensors", tmp_path / "pruned.safetensors", prune=True)
    assert report.dropped_keys == planted
    assert report.size_after < report.size_before
    assert_same(safetensors.torch.load_file(str(tmp_path / "pruned.safetensors")), state)
    assert any("dropped 23 keys" in line for line in report.lines())


def test_cli_prune_reports_sizes(tiny_model_files, tmp_path, capsys):
    plant_ema(tiny_model_files["sd1"]["single"], tmp_path / "ema.safetensors")
    code = convert_cli.main(
        [str(tmp_path / "ema.safetensors"), str(tmp_path / "p.ckpt"), "--prune", "--precision", "fp16"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "size:" in out and "->" in out and "dropped 23 keys" in out


def test_not_a_stable_diffusion_model_is_a_clear_error(tmp_path, capsys):
    lora = tmp_path / "lora.safetensors"
    safetensors.torch.save_file(
        {"lora_unet_mid_block_proj_in.lora_down.weight": torch.zeros(2, 4)}, str(lora)
    )
    with pytest.raises(ModelLoadError, match="looks like a LoRA"):
        convert_model(lora, tmp_path / "out.safetensors")
    vae_only = tmp_path / "vae.safetensors"
    safetensors.torch.save_file({"encoder.down.0.block.0.conv1.weight": torch.zeros(1)}, str(vae_only))
    assert convert_cli.main([str(vae_only), str(tmp_path / "o.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "standalone VAE" in err and "Traceback" not in err
    assert convert_cli.main([str(lora), str(tmp_path / "folder")]) == 2
    assert "LoRA" in capsys.readouterr().err


def test_diffusers_output_onto_a_foreign_folder_is_refused_without_overwrite(tmp_path, capsys):
    """Nothing is read or deleted: the check comes before the source is even opened (issue 12)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "holiday.jpg").write_bytes(b"mine")
    assert convert_cli.main([str(tmp_path / "model.safetensors"), str(photos)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err
    assert str(photos) in err and "--overwrite" in err and "no readable model_index.json" in err
    assert (photos / "holiday.jpg").read_bytes() == b"mine"
    # a diffusers folder with a stranger in it is just as foreign; the strangers are named
    (photos / "model_index.json").write_text(
        '{"_class_name": "X", "unet": ["diffusers", "U"]}', encoding="utf-8"
    )
    (photos / "unet").mkdir()
    with pytest.raises(UserError, match=r"not part of its diffusers model \(holiday\.jpg\)"):
        convert_model(tmp_path / "model.safetensors", photos)


def test_diffusers_folder_check_lets_our_own_and_empty_folders_through(tmp_path):
    ours, empty = tmp_path / "ours", tmp_path / "empty"
    (ours / "unet").mkdir(parents=True)
    (ours / "vae").mkdir()
    (ours / "model_index.json").write_text('{"_class_name": "X", "unet": [], "vae": []}', encoding="utf-8")
    empty.mkdir()
    assert diffusers_folder_strangers(ours) == []
    for folder in (ours, empty, tmp_path / "new"):
        check_destination_folder(folder, overwrite=False)
    (ours / "notes.txt").write_text("x", encoding="utf-8")
    assert diffusers_folder_strangers(ours) == ["notes.txt"]
    with pytest.raises(UserError, match="notes.txt"):
        check_destination_folder(ours, overwrite=False)
    check_destination_folder(ours, overwrite=True)


@pytest.mark.slow
def test_overwrite_replaces_a_foreign_folder_and_our_folder_is_replaced_without_it(
    tiny_model_files, tmp_path
):
    single = tiny_model_files["sd1"]["single"]
    target = tmp_path / "target"
    (target / "sub").mkdir(parents=True)
    (target / "sub" / "old.txt").write_text("old", encoding="utf-8")
    assert convert_cli.main([str(single), str(target), "--overwrite"]) == 0
    assert not (target / "sub").exists() and (target / "model_index.json").is_file()
    assert not list(tmp_path.glob(".target*"))  # no temporary or moved-aside folder left behind
    first = folder_tensors(target)
    convert_model(single, target, precision="fp16")  # our own model: replaced without --overwrite
    again = folder_tensors(target)
    assert set(again) == set(first) and next(iter(again.values())).dtype == torch.float16


@pytest.mark.slow  # builds the model's modules (on the meta device) to check every key
def test_single_file_with_missing_weights_is_refused_not_copied(tiny_model_files, tmp_path, capsys):
    state = safetensors.torch.load_file(str(tiny_model_files["sd1"]["single"]))
    dropped = sorted(k for k in state if k.startswith("model.diffusion_model."))[3]
    del state[dropped]
    safetensors.torch.save_file(state, str(tmp_path / "broken.safetensors"))
    assert (
        convert_cli.main([str(tmp_path / "broken.safetensors"), str(tmp_path / "out.safetensors"), "--prune"])
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error:") and "broken.safetensors" in err and "1 missing" in err and "UNet" in err
    assert "Traceback" not in err and not (tmp_path / "out.safetensors").exists()
