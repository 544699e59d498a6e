"""Issue 14's check: the preparation tools -> fine_tune.py on the tiny SD1 model -> a checkpoint diffusers loads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from library.models.loading import load_base_model
from tests.finetune.ft_helpers import fine_tune, make_pictures, read_json, tool_main, write_json

pytestmark = pytest.mark.slow


def _options(tmp_path, **extra):
    return {
        "pretrained_model_name_or_path": "builtin:tiny",
        "output_dir": str(tmp_path / "out"),
        "output_name": "ft",
        "resolution": 64,
        "train_batch_size": 2,
        "max_train_steps": 2,
        "learning_rate": 1e-3,
        "seed": 1,
        "max_data_loader_n_workers": 1,
        **extra,
    }


def test_tools_then_fine_tune_then_from_single_file(tmp_path, tiny_model_files, monkeypatch):
    img = tmp_path / "img"
    pictures = make_pictures(img, [(64, 64), (96, 64), (64, 64), (96, 64)])
    steps = [
        ("merge_captions_to_metadata", [str(img), str(tmp_path / "cap.json")]),
        (
            "merge_dd_tags_to_metadata",
            [str(img), str(tmp_path / "dd.json"), "--in_json", str(tmp_path / "cap.json")],
        ),
        ("clean_captions_and_tags", [str(tmp_path / "dd.json"), str(tmp_path / "clean.json")]),
        (
            "prepare_buckets_latents",
            [
                str(img),
                str(tmp_path / "clean.json"),
                str(tmp_path / "lat.json"),
                "builtin:tiny",
                "--max_resolution",
                "64,64",
                "--bucket_reso_steps",
                "32",
                "--min_bucket_reso",
                "32",
                "--flip_aug",
            ],
        ),
    ]
    for name, argv in steps:
        assert tool_main(name)(argv) == 0, name
    meta = read_json(tmp_path / "lat.json")
    assert meta["img1"] == {
        "caption": "a photo of a disc 1",
        "tags": "red disc, white shirt, tag 1",
        "train_resolution": [64, 64],
    }
    # sd-scripts' latent layout: <stem>_<picture WWWWxHHHH>_sd.npz beside the picture, unscaled VAE samples
    with np.load(img / "img1_0096x0064_sd.npz") as npz:
        assert set(npz.files) == {
            "latents",
            "latents_flipped",
            "original_size",
            "crop_ltrb",
            "image_size",
            "image_mtime_ns",
        }
        assert npz["latents"].shape == (4, 8, 8) and npz["latents"].dtype == np.float32
        assert npz["original_size"].tolist() == [96, 64] and npz["crop_ltrb"].tolist() == [16, 0, 80, 64]
        raw = torch.from_numpy(npz["latents"])
    model = load_base_model("builtin:tiny")
    from library.data.augment import to_tensor
    from library.data.buckets import resize_and_crop
    from library.data.images import load_image

    with torch.no_grad():
        posterior = model.vae.encode(
            to_tensor(resize_and_crop(load_image(pictures[1]), (64, 64))[0])[None]
        ).latent_dist
    assert (
        (raw - posterior.mean[0]).abs() <= 6 * posterior.std[0]
    ).all()  # a sample of this picture's posterior

    # fine_tune.py uses those latents: nothing is encoded during the run
    def no_encoding(*args, **kwargs):
        raise AssertionError("latents were encoded although prepare_buckets_latents made them")

    monkeypatch.setattr("library.data.latent_cache._encode_group", no_encoding)
    opts = _options(
        tmp_path,
        in_json=str(tmp_path / "lat.json"),
        train_data_dir=str(img),
        enable_bucket=True,
        bucket_reso_steps=32,
        min_bucket_reso=32,
        flip_aug=True,
        save_precision="fp16",
    )
    code, target = fine_tune(tmp_path, opts)
    assert code == 0
    path = tmp_path / "out" / "ft.safetensors"
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_single_file(
        str(path), config=str(tiny_model_files["sd1"]["folder"]), safety_checker=None, local_files_only=True
    )
    trained = target._model.unet.state_dict()
    theirs = pipe.unet.state_dict()
    assert theirs.keys() == trained.keys()
    assert all(torch.equal(theirs[k].half(), trained[k].half()) for k in trained)
    base_unet = model.unet.state_dict()
    assert max((theirs[k].float() - base_unet[k].float()).abs().max().item() for k in trained) > 1e-4
    # sd-scripts' fine_tune.py trains the text encoder only with --train_text_encoder
    base_te, their_te = model.text_encoder.state_dict(), pipe.text_encoder.state_dict()
    assert all(torch.equal(their_te[k], base_te[k].half().float()) for k in base_te if k in their_te)


def test_prepared_latents_are_scaled_like_encode_images(tmp_path, capsys):
    from library.config.load import config_from_values
    from library.data.metadata import attach_prepared_latents, prepared_latents_path
    from library.training.data_setup import build_dataset

    img = tmp_path / "img"
    make_pictures(img, [(64, 64), (64, 64)])
    write_json(tmp_path / "m.json", {"img0": {"caption": "a"}, "img1": {"tags": "b"}})
    assert (
        tool_main("prepare_buckets_latents")(
            [
                str(img),
                str(tmp_path / "m.json"),
                str(tmp_path / "m2.json"),
                "builtin:tiny",
                "--max_resolution",
                "64,64",
            ]
        )
        == 0
    )
    model = load_base_model("builtin:tiny")
    dataset = build_dataset(
        config_from_values(
            _options(tmp_path, in_json=str(tmp_path / "m2.json"), train_data_dir=str(img)), "db"
        )
    )
    (img / "img1.png").touch()  # a changed picture: its latents are stale
    assert attach_prepared_latents(dataset, model) == 1
    first = next(it for it in dataset.items if it.path.name == "img0.png")
    stale = next(it for it in dataset.items if it.path.name == "img1.png")
    with np.load(prepared_latents_path(first.path, (64, 64))) as npz:
        assert torch.equal(first.latents, torch.from_numpy(npz["latents"]) * model.latent_scale)
    assert stale.latents is None
    # --skip_existing keeps the file that still fits and encodes the changed picture again
    capsys.readouterr()
    assert (
        tool_main("prepare_buckets_latents")(
            [
                str(img),
                str(tmp_path / "m.json"),
                str(tmp_path / "m3.json"),
                "builtin:tiny",
                "--max_resolution",
                "64,64",
                "--skip_existing",
            ]
        )
        == 0
    )
    assert "1 latents encoded, 1 kept" in capsys.readouterr().out


def test_dataset_toml_metadata_subsets_train(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    make_pictures(a, [(64, 64), (64, 64)])
    make_pictures(b, [(64, 64)])
    write_json(a / "meta.json", {"img0": {"caption": "first", "tags": "x, y"}, "img1": {"tags": "y"}})
    write_json(tmp_path / "b.json", {str(b / "img0.png"): {"caption": "third"}})
    (tmp_path / "ds.toml").write_text(
        "[general]\nshuffle_caption = true\nkeep_tokens = 1\ncaption_separator = ', '\n[[datasets]]\nresolution = 64\n"
        "batch_size = 2\n[[datasets.subsets]]\nmetadata_file = 'a/meta.json'\nnum_repeats = 2\n"
        "[[datasets.subsets]]\nmetadata_file = 'b.json'\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    code, target = fine_tune(
        tmp_path, _options(tmp_path, dataset_config=str(tmp_path / "ds.toml"), max_train_steps=1)
    )
    assert code == 0
    from safetensors import safe_open

    with safe_open(str(tmp_path / "out" / "ft.safetensors"), "pt") as f:
        meta = f.metadata()
    # sd-scripts names fine-tuning subsets by their metadata file; tags are counted from caption + tags
    assert json.loads(meta["ss_dataset_dirs"]) == {
        "meta.json": {"n_repeats": 2, "img_count": 2},
        "b.json": {"n_repeats": 1, "img_count": 1},
    }
    assert json.loads(meta["ss_tag_frequency"]) == {
        "meta.json": {"first": 1, "x": 1, "y": 2},
        "b.json": {"third": 1},
    }
    assert meta["ss_num_train_images"] == "5"


def test_bad_json_stops_before_training_with_one_paragraph(tmp_path, capsys):
    img = tmp_path / "img"
    make_pictures(img, [(64, 64)])
    (tmp_path / "m.json").write_text('{"img0": {"caption": "a"}, "gone": {"caption": "b"}}', encoding="utf-8")
    code, _ = fine_tune(
        tmp_path, _options(tmp_path, in_json=str(tmp_path / "m.json"), train_data_dir=str(img))
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    line = next(x for x in err.splitlines() if x.startswith("error:"))
    assert "m.json" in line and "'gone'" in line and "train_data_dir" in line
    assert not (tmp_path / "out" / "ft.safetensors").exists()
