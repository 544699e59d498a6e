from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import save_file

from library.errors import ModelLoadError
from library.models.loading import load_base_model


def _unet_output(model) -> torch.Tensor:
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        context = model.encode_tokens(model.tokenize(["a photo of a cat"], None), None)
        return model.unet(x, torch.tensor([10]), context).sample


@pytest.mark.slow
@pytest.mark.parametrize(("family", "builtin"), [("sd1", "builtin:tiny"), ("sd2", "builtin:tiny-sd2")])
def test_three_sources_identical(tiny_files, family, builtin):
    sources = [builtin, str(tiny_files[family]["single"]), str(tiny_files[family]["folder"])]
    models = [load_base_model(s) for s in sources]
    assert [m.family for m in models] == [family] * 3
    reference = _unet_output(models[0])
    for model in models[1:]:
        assert torch.equal(_unet_output(model), reference)
    assert models[1].name == f"{family}.safetensors" and models[2].name == family
    pad = 49407 if family == "sd1" else 0
    assert all(m.tokenizer.pad_token_id == pad for m in models)


def test_scheduler_from_v_parameterization():
    assert load_base_model("builtin:tiny").noise_scheduler.config.prediction_type == "epsilon"
    model = load_base_model("builtin:tiny-sd2", v_parameterization=True)
    assert model.noise_scheduler.config.prediction_type == "v_prediction" and model.v_parameterization


def test_v2_mismatch_warns_and_uses_detected(tiny_files, caplog):
    with caplog.at_level(logging.WARNING):
        model = load_base_model(str(tiny_files["sd2"]["single"]), v2=False)
    assert model.family == "sd2"
    assert "v2=False" in caplog.text and "sd2" in caplog.text


@pytest.mark.slow
def test_ckpt_single_file(tiny_files, tmp_path):
    from library.models.single_file import save_single_file
    from library.models.tiny import tiny_components

    parts = tiny_components("sd1")
    path = save_single_file(tmp_path / "m.ckpt", parts["unet"], parts["vae"], parts["text_encoder"], "sd1")
    model = load_base_model(str(path))
    assert torch.equal(_unet_output(model), _unet_output(load_base_model("builtin:tiny")))


def test_vae_override_from_other_seed(tmp_path):
    from library.models.tiny import save_tiny_single_file, tiny_components

    path = save_tiny_single_file(tmp_path / "seed7.safetensors", "sd1", seed=7)
    model = load_base_model("builtin:tiny", vae=str(path))
    expected = tiny_components("sd1", seed=7)["vae"].state_dict()
    got = model.vae.state_dict()
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
    assert not torch.equal(
        got["encoder.conv_in.weight"], tiny_components("sd1")["vae"].encoder.conv_in.weight
    )


def test_missing_path_error(tmp_path):
    with pytest.raises(ModelLoadError) as info:
        load_base_model(str(tmp_path / "nothing_here.safetensors"))
    assert "nothing_here.safetensors" in str(info.value) and "not found" in str(info.value)


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(ModelLoadError, match="no model_index.json and no unet/ folder"):
        load_base_model(str(tmp_path))


def test_lora_given_as_model(tmp_path):
    path = tmp_path / "my_lora.safetensors"
    save_file(
        {
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4),
            "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0),
        },
        str(path),
    )
    with pytest.raises(ModelLoadError) as info:
        load_base_model(str(path))
    message = str(info.value)
    assert "my_lora.safetensors" in message
    assert "no model.diffusion_model.* keys" in message and "looks like a LoRA (lora_unet_* keys)" in message


def test_unknown_builtin():
    with pytest.raises(ModelLoadError, match="builtin:tiny"):
        load_base_model("builtin:huge")
