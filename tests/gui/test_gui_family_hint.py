"""The model-family hint beside the model field (cheap detection, never a crash) and the SDXL-only options
that show only for a family with two text encoders."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from library.config.options import SCHEMA
from library.gui.family_hint import MULTI_TEXT_ENCODER_OPTIONS, family_hint, option_visibility
from library.gui.fields import form_options


@pytest.mark.parametrize(
    "source,name",
    [("builtin:tiny", "sd1"), ("builtin:tiny-sd2", "sd2"), ("builtin:tiny-sdxl", "sdxl")],
)
def test_builtin_names_come_from_the_table(source, name):
    hint = family_hint(source)
    assert hint.family.name == name
    assert hint.text.startswith(name.upper() + " — ")
    assert hint.multi_text_encoder == (name == "sdxl")


def test_tiny_sdxl_folder_and_single_file_are_sdxl(tiny_sdxl_files):
    for kind in ("folder", "single"):
        hint = family_hint(str(tiny_sdxl_files[kind]))
        assert hint.family is not None and hint.family.name == "sdxl", (kind, hint.text)
        assert hint.text == "SDXL — Stable Diffusion XL (two text encoders, size conditioning)"
        assert hint.multi_text_encoder


@pytest.mark.parametrize("family", ["sd1", "sd2"])
@pytest.mark.parametrize("kind", ["folder", "single"])
def test_sd_files_are_their_family(tiny_model_files, family, kind):
    hint = family_hint(str(tiny_model_files[family][kind]))
    assert hint.family is not None and hint.family.name == family, hint.text
    assert not hint.multi_text_encoder


def test_a_single_file_is_detected_from_its_header_only(tiny_sdxl_files, monkeypatch):
    import safetensors.torch

    import library.models.safe_load

    def no_weights(*args, **kwargs):
        raise AssertionError("the hint must not load weights")

    monkeypatch.setattr(library.models.safe_load, "load_state_dict_file", no_weights)
    monkeypatch.setattr(safetensors.torch, "load_file", no_weights)
    assert family_hint(str(tiny_sdxl_files["single"])).family.name == "sdxl"


def test_bad_sources_give_unknown_and_never_raise(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all")
    (tmp_path / "model.ckpt").write_bytes(b"pickle")
    (tmp_path / "notes.txt").write_text("hello")
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(1)}, str(tmp_path / "lora.safetensors"))
    save_file({"encoder.down.0.weight": torch.zeros(1)}, str(tmp_path / "vae.safetensors"))
    cases = {
        str(tmp_path / "missing.safetensors"): "no such file",
        "models/sd_xl_base_1.0.safetensors": "no such file",
        str(tmp_path / "missing"): "not an existing file",
        str(tmp_path / "empty"): "not a diffusers model folder",
        str(tmp_path / "garbage.safetensors"): "",
        str(tmp_path / "model.ckpt"): "pickle",
        str(tmp_path / "notes.txt"): "only .safetensors",
        str(tmp_path / "lora.safetensors"): "LoRA",
        str(tmp_path / "vae.safetensors"): "VAE",
        "builtin:huge": "no built-in model 'builtin:huge'",
        "nobody-sdtrain-test/not-a-model": "not in the local Hugging Face cache",
    }
    for source, words in cases.items():
        hint = family_hint(source)
        assert hint.family is None and hint.text.startswith("unknown: "), (source, hint.text)
        assert words in hint.text, (source, hint.text)
        assert not hint.multi_text_encoder
    assert family_hint("").text == "" and family_hint(None).family is None


def test_a_hub_id_in_the_local_cache_is_detected_offline(tiny_sdxl_files, tmp_path, monkeypatch):
    import huggingface_hub.constants

    snapshot = tmp_path / "hub" / "models--org--tiny-xl" / "snapshots" / "abc123"
    (snapshot / "text_encoder").mkdir(parents=True)
    shutil.copy(tiny_sdxl_files["folder"] / "model_index.json", snapshot / "model_index.json")
    shutil.copy(tiny_sdxl_files["folder"] / "text_encoder" / "config.json", snapshot / "text_encoder")
    (tmp_path / "hub" / "models--org--tiny-xl" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--tiny-xl" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert family_hint("org/tiny-xl").family.name == "sdxl"
    assert json.loads((snapshot / "model_index.json").read_text())["text_encoder_2"]


def test_sdxl_only_options_show_only_for_two_text_encoders():
    assert all(name in SCHEMA for name in MULTI_TEXT_ENCODER_OPTIONS)
    for trainer in ("network", "db"):
        names = [o.name for o in form_options(trainer)]
        xl = option_visibility(family_hint("builtin:tiny-sdxl").family, names)
        sd1 = option_visibility(family_hint("builtin:tiny").family, names)
        unknown = option_visibility(None, names)
        assert set(xl) == {n for n in MULTI_TEXT_ENCODER_OPTIONS if n in names}
        assert all(xl.values()) and not any(sd1.values()) and not any(unknown.values())
    assert "learning_rate_te1" in option_visibility(None, [o.name for o in form_options("db")])
    assert "learning_rate_te1" not in option_visibility(None, [o.name for o in form_options("network")])
    # an unknown family (a preset's placeholder path) keeps the options a loaded config set shown
    names = ["no_half_vae", "learning_rate_te1", "learning_rate"]
    set_by_config = ["no_half_vae"]
    assert option_visibility(None, names, set_by_config) == {"no_half_vae": True, "learning_rate_te1": False}
    sd1 = family_hint("builtin:tiny").family
    assert option_visibility(sd1, names, set_by_config) == {"no_half_vae": False, "learning_rate_te1": False}


def test_the_form_hides_sdxl_options_until_an_sdxl_model_is_chosen():
    gr = pytest.importorskip("gradio")
    from library.gui.training_tab import family_updates, form_fields

    with gr.Blocks():
        fields = form_fields("db")
    by_name = dict(zip([o.name for o in form_options("db")], fields, strict=True))
    assert by_name["learning_rate_te1"].visible is False and by_name["no_half_vae"].visible is False
    assert by_name["learning_rate"].visible is True
    options = {name: SCHEMA[name] for name in ("learning_rate_te1", "no_half_vae")}
    text, *updates = family_updates("builtin:tiny-sdxl", options, ["", False])
    assert text == "Model family: SDXL — Stable Diffusion XL (two text encoders, size conditioning)"
    assert [u["visible"] for u in updates] == [True, True]
    text, *updates = family_updates("/no/such/model.safetensors", options, ["", False])
    assert text.startswith("Model family: unknown: ") and [u["visible"] for u in updates] == [False, False]
    _, *updates = family_updates("/no/such/model.safetensors", options, ["5e-7", True])
    assert [u["visible"] for u in updates] == [True, True]
    _, *updates = family_updates("builtin:tiny", options, ["5e-7", True])
    assert [u["visible"] for u in updates] == [False, False]
