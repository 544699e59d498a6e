"""Pivotal tuning: a LoRA run that also learns a new token; the LoRA file bundles the embedding as the webui reads
it (``bundle_emb.<token>.string_to_param.*``, SDXL ``.clip_l`` / ``.clip_g``), and network_weights reloads it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from library.config.load import config_from_values
from library.training.lora_target import LoRATarget
from library.training.setup import load_model

pytestmark = pytest.mark.slow

KEY = "bundle_emb.sks.string_to_param.*"


def test_lora_file_bundles_the_trained_rows_and_reloads_them(tmp_path, tiny_dataset):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "training"))
    from helpers import base_options, read_lora, train

    out = tmp_path / "out"
    options = base_options(tiny_dataset, out, token_string="sks", init_word="disc", num_vectors_per_token=2,
                           embedding_lr=5e-2, embedding_stop_step=2, save_every_n_steps=2, max_train_steps=4)
    assert train(tmp_path, options) == 0
    final, meta = read_lora(out / "lora.safetensors")
    at_stop, _ = read_lora(out / "lora-step00000002.safetensors")
    assert [k for k in final if k.startswith("bundle_emb")] == [KEY]
    assert final[KEY].shape == (2, 32)
    assert any(k.startswith("lora_te_") for k in final) and any(k.startswith("lora_unet_") for k in final)
    assert meta["ss_embedding_token"] == "sks" and meta["ss_embedding_stop_step"] == "2"
    # the embedding stopped at step 2 while the LoRA went on
    assert torch.equal(final[KEY], at_stop[KEY])
    lora_key = next(k for k in final if k.endswith("lora_up.weight"))
    assert not torch.equal(final[lora_key], at_stop[lora_key])
    # and it trained before: it is not init_word's embedding any more
    config = config_from_values({**options, "network_weights": str(out / "lora.safetensors")}, "network")
    model = load_model(config)
    disc = model.tokenizer.encode("disc", add_special_tokens=False)[0]
    init = model.text_encoder.get_input_embeddings().weight[[disc, disc]].detach()
    assert not torch.equal(final[KEY], init)
    target = LoRATarget(config)
    target.attach(model, config)
    assert torch.equal(target.pivotal.token.rows["text_encoder"].detach(), final[KEY])
    assert target.trains_text_encoder  # the embedding's gradient goes through the text encoder
    groups = {g["name"]: g["lr"] for g in target.param_groups(config) if "name" in g}
    assert groups["embeddings"] == 5e-2


def test_sdxl_lora_bundles_clip_l_and_clip_g(tmp_path, tiny_sdxl_files, tiny_dataset):
    values = {"pretrained_model_name_or_path": str(tiny_sdxl_files["folder"]),
              "train_data_dir": str(tiny_dataset / "train"), "output_dir": str(tmp_path), "network_dim": 2,
              "token_string": "sks", "init_word": "red disc", "num_vectors_per_token": 3,
              "network_train_unet_only": True, "embedding_stop_step": 0, "seed": 1}
    config = config_from_values(values, "network")
    model = load_model(config)
    target = LoRATarget(config)
    assert not target.trains_text_encoder  # unet only, and the embedding never trains (stop step 0)
    target.attach(model, config)
    target._model = model
    target.save(tmp_path / "x.safetensors", None, target.metadata(config), config)
    from safetensors.torch import load_file

    state = load_file(tmp_path / "x.safetensors")
    bundle = sorted(k for k in state if k.startswith("bundle_emb"))
    assert bundle == ["bundle_emb.sks.clip_g", "bundle_emb.sks.clip_l"]
    for part, key in (("text_encoder_1", "clip_l"), ("text_encoder_2", "clip_g")):
        tokenizer, encoder = model.tokenizers[part], model.parts[part]
        red, disc = tokenizer.encode("red disc", add_special_tokens=False)
        weight = encoder.get_input_embeddings().weight
        assert torch.equal(state[f"bundle_emb.sks.{key}"], weight[[red, disc, red]].detach())
    assert not any(k.startswith(("lora_te1_", "lora_te2_")) for k in state)
