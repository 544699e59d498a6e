"""Textual inversion and pivotal tuning without a model: options, file layouts, the embedding lookup, templates."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from library.config.load import config_from_values
from library.config.options_ti import check_token_rules, token_strings
from library.errors import ConfigError, ModelLoadError
from library.models.added_tokens import AddedTokenEmbedding
from library.training.embeddings.files import (
    bundle_tensors,
    bundled_tokens,
    file_tensors,
    read_bundle,
    read_embedding,
    save_embedding,
)
from library.training.embeddings.templates import OBJECT_TEMPLATES, STYLE_TEMPLATES

SD_KEYS = {"text_encoder": "emb_params"}
SDXL_KEYS = {"text_encoder_1": "clip_l", "text_encoder_2": "clip_g"}


def ti_config(tmp_path, trainer="ti", **values):
    data = tmp_path / "train"
    (data / "1_x").mkdir(parents=True, exist_ok=True)
    base = {"pretrained_model_name_or_path": "builtin:tiny", "train_data_dir": str(data),
            "output_dir": str(tmp_path / "out")}
    return config_from_values({**base, **values}, trainer)


def test_token_strings_follow_sd_scripts():
    assert token_strings("sks", 1) == ["sks"]
    assert token_strings("sks", 3) == ["sks", "sks1", "sks2"]


def test_ti_trainer_takes_its_options_and_refuses_lora_ones(tmp_path):
    config = ti_config(tmp_path, token_string="sks", init_word="dog", num_vectors_per_token=3, use_object_template=True)
    assert (config.token_string, config.init_word, config.num_vectors_per_token) == ("sks", "dog", 3)
    assert config.use_object_template and config.save_model_as == "safetensors"
    with pytest.raises(ConfigError, match="'network_dim' is not used by this trainer"):
        ti_config(tmp_path, token_string="sks", network_dim=8)
    with pytest.raises(ConfigError, match="'embedding_lr' is not used by this trainer"):
        ti_config(tmp_path, token_string="sks", embedding_lr=0.01)
    with pytest.raises(ConfigError, match="'diffusers' is not a format of this trainer"):
        ti_config(tmp_path, token_string="sks", save_model_as="diffusers")
    with pytest.raises(ConfigError, match="'weights' is not used by this trainer"):
        ti_config(tmp_path, trainer="network", token_string="sks", weights=str(tmp_path / "train"))


@pytest.mark.parametrize(("values", "required", "message"), [
    ({}, True, "'token_string' is missing"),
    ({"token_string": "two words"}, True, "must be one word without spaces"),
    ({"token_string": "sks.dog"}, True, "must not hold a '.'"),
    ({"token_string": "sks", "use_object_template": True, "use_style_template": True}, True, "choose one"),
    ({"embedding_lr": 0.01}, False, "embedding_lr set without token_string"),
    ({"num_vectors_per_token": 2}, False, "num_vectors_per_token set without token_string"),
])
def test_token_rules_refuse_bad_settings(tmp_path, values, required, message):
    config = ti_config(tmp_path, trainer="ti" if required else "network", **values)
    with pytest.raises(ConfigError, match=message):
        check_token_rules(config, required)


def test_lora_run_without_token_passes_the_rules(tmp_path):
    check_token_rules(ti_config(tmp_path, trainer="network"), required=False)  # nothing raised


def test_added_token_embedding_reads_new_ids_from_rows_and_the_rest_from_the_base():
    base = torch.nn.Embedding(10, 4)
    rows = torch.nn.Parameter(torch.arange(8, dtype=torch.float32).reshape(2, 4) + 100)
    embedding = AddedTokenEmbedding(base, rows, first_id=10)
    ids = torch.tensor([[1, 10, 3, 11]])
    out = embedding(ids)
    assert out.shape == (1, 4, 4)
    assert torch.equal(out[0, 0], base.weight[1]) and torch.equal(out[0, 2], base.weight[3])
    assert torch.equal(out[0, 1], rows[0]) and torch.equal(out[0, 3], rows[1])
    assert torch.equal(embedding(torch.tensor([[1, 3]])), base(torch.tensor([[1, 3]])))
    out.sum().backward()
    assert rows.grad is not None and torch.equal(rows.grad, torch.ones(2, 4))
    assert embedding.num_embeddings == 12 and embedding.weight is base.weight


def test_sd_safetensors_and_webui_pt_layouts_round_trip(tmp_path):
    vectors = torch.randn(2, 8)
    tensors = file_tensors(SD_KEYS, {"text_encoder": vectors})
    assert list(tensors) == ["emb_params"]
    save_embedding(tmp_path / "e.safetensors", tensors, {"ss_token_string": "sks"}, "sks", 5)
    assert torch.equal(read_embedding(tmp_path / "e.safetensors", SD_KEYS)["text_encoder"], vectors)
    save_embedding(tmp_path / "e.pt", tensors, {}, "sks", 5)
    data = torch.load(tmp_path / "e.pt", weights_only=True)
    assert set(data) == {"string_to_token", "string_to_param", "name", "step"}
    assert torch.equal(data["string_to_param"]["*"], vectors)
    assert data["string_to_token"] == {"*": 265} and data["name"] == "sks" and data["step"] == 5
    assert torch.equal(read_embedding(tmp_path / "e.pt", SD_KEYS)["text_encoder"], vectors)
    torch.save({"<sks>": vectors[0]}, tmp_path / "learned_embeds.bin")  # diffusers' one-vector layout
    assert read_embedding(tmp_path / "learned_embeds.bin", SD_KEYS)["text_encoder"].shape == (1, 8)


def test_sdxl_layout_has_clip_l_and_clip_g_and_is_refused_for_sd(tmp_path):
    rows = {"text_encoder_1": torch.randn(1, 8), "text_encoder_2": torch.randn(1, 12)}
    save_embedding(tmp_path / "x.safetensors", file_tensors(SDXL_KEYS, rows), {}, "sks", 1)
    back = read_embedding(tmp_path / "x.safetensors", SDXL_KEYS)
    assert all(torch.equal(back[p], rows[p]) for p in rows)
    with pytest.raises(ModelLoadError, match=r"holds \['clip_g', 'clip_l'\].*emb_params"):
        read_embedding(tmp_path / "x.safetensors", SD_KEYS)


def test_a_pickle_holding_code_is_refused(tmp_path):
    torch.save({"emb_params": torch.zeros(1, 4), "thing": SimpleNamespace(a=1)}, tmp_path / "bad.pt")
    with pytest.raises(ModelLoadError, match="tensors-only pickle"):
        read_embedding(tmp_path / "bad.pt", SD_KEYS)


def test_bundle_keys_are_the_webui_ones():
    sd = bundle_tensors("sks", SD_KEYS, {"text_encoder": torch.ones(2, 4)})
    assert list(sd) == ["bundle_emb.sks.string_to_param.*"]
    xl = bundle_tensors("sks", SDXL_KEYS, {"text_encoder_1": torch.ones(1, 4), "text_encoder_2": torch.ones(1, 6)})
    assert list(xl) == ["bundle_emb.sks.clip_l", "bundle_emb.sks.clip_g"]
    state = {**xl, "lora_unet_x.alpha": torch.tensor(1.0)}
    assert bundled_tokens(state) == ["sks"]
    assert read_bundle(state, "sks", SDXL_KEYS)["text_encoder_2"].shape == (1, 6)
    assert read_bundle(state, "other", SDXL_KEYS) is None
    with pytest.raises(ModelLoadError, match="lacks bundle_emb.sks.clip_g"):
        read_bundle({"bundle_emb.sks.clip_l": torch.ones(1, 4)}, "sks", SDXL_KEYS)


def test_templates_replace_training_captions_but_not_sample_prompts(tmp_path):
    from library.training.ti_target import TextualInversionTarget

    config = ti_config(tmp_path, token_string="sks", use_style_template=True, seed=3)
    target = TextualInversionTarget(config)
    target.token = SimpleNamespace(token="sks")
    first = target._template_captions(["a caption", "another"])
    assert all(c in {t.format("sks") for t in STYLE_TEMPLATES} for c in first)
    assert target._template_captions(["a caption", "another"]) == first  # same step: the same draw
    target.on_step_end(7)
    drawn = {c for _ in range(1) for c in target._template_captions(["x"] * 20)}
    assert len(drawn) > 3
    target.before_sampling()
    assert target._template_captions(["sks on a table"]) == ["sks on a table"]
    target.after_sampling()
    assert len(OBJECT_TEMPLATES) == 27 and len(STYLE_TEMPLATES) == 19


def test_ti_run_without_token_string_is_exit_code_2_before_any_model_loads(tmp_path, capsys):
    from library.cli import run_trainer
    from library.training.ti_target import TextualInversionTarget

    (tmp_path / "train" / "1_x").mkdir(parents=True)
    argv = ["--pretrained_model_name_or_path", "builtin:tiny", "--train_data_dir", str(tmp_path / "train"),
            "--output_dir", str(tmp_path / "out")]
    assert run_trainer("ti", TextualInversionTarget, argv) == 2
    err = capsys.readouterr().err
    assert "option 'token_string' is missing" in err and "Traceback" not in err
