"""Textual inversion end to end on the tiny SD1 / SDXL models: only the token's rows train, the files load in
diffusers with the trained rows, the token changes the conditioning only where it is used, ``weights`` and
``resume`` continue a run."""

from __future__ import annotations

from pathlib import Path

import pytest
import toml
import torch
from safetensors.torch import load_file

from library.config.load import config_from_values
from library.errors import ModelLoadError
from library.training.setup import load_model
from library.training.ti_target import TextualInversionTarget

pytestmark = pytest.mark.slow


def run_ti(tmp_path: Path, options: dict, family: str | None = None) -> int:
    from accelerate.state import AcceleratorState

    from library.cli import run_trainer

    AcceleratorState._reset_state(True)
    path = tmp_path / f"ti_{len(list(tmp_path.glob('ti_*.toml')))}.toml"
    path.write_text(toml.dumps(options), encoding="utf-8")
    return run_trainer("ti", TextualInversionTarget, ["--config_file", str(path)], family=family)


def ti_options(model, dataset: Path, out: Path, **overrides) -> dict:
    opts = {"pretrained_model_name_or_path": str(model), "train_data_dir": str(dataset / "train"),
            "output_dir": str(out), "output_name": "emb", "resolution": 64, "train_batch_size": 2,
            "max_train_steps": 4, "learning_rate": 5e-2, "seed": 1, "token_string": "sks", "init_word": "disc",
            "num_vectors_per_token": 2, "max_data_loader_n_workers": 1}
    return {**opts, **overrides}


@pytest.fixture(scope="module")
def sd1_run(tmp_path_factory, tiny_model_files, tiny_dataset):
    """A 4-step SD1 run saving (with state) at step 2, sampling a prompt with the token at the end."""
    tmp = tmp_path_factory.mktemp("ti_sd1")
    prompts = tmp / "prompts.txt"
    prompts.write_text("a sks disc --w 64 --h 64 --s 2 --d 1\n", encoding="utf-8")
    options = ti_options(tiny_model_files["sd1"]["folder"], tiny_dataset, tmp / "out", save_every_n_steps=2,
                         save_state=True, sample_prompts=str(prompts), sample_every_n_steps=4)
    assert run_ti(tmp, options) == 0
    return tmp, options


def base_config(tmp_path, model, dataset, **values):
    values = {"pretrained_model_name_or_path": str(model), "train_data_dir": str(dataset / "train"),
              "output_dir": str(tmp_path / "out"), "token_string": "sks", "init_word": "disc",
              "num_vectors_per_token": 2, **values}
    return config_from_values(values, "ti")


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_only_the_new_rows_train_and_the_base_stays_bit_for_bit(tmp_path, tiny_model_files, tiny_dataset, family):
    config = base_config(tmp_path, tiny_model_files[family]["folder"], tiny_dataset)
    model = load_model(config)
    before = {f"{part}.{name}": p.detach().clone() for part, module in model.parts.items()
              for name, p in module.named_parameters()}
    originals = [p.detach().clone() for module in model.parts.values() for p in module.parameters()]
    plain = model.encode_prompt(["a red disc"]).hidden.detach().clone()
    with_word = model.encode_prompt(["a sks disc"]).hidden.detach().clone()
    target = TextualInversionTarget(config)
    target.attach(model, config)
    rows = target.token.rows["text_encoder"]
    disc = model.tokenizers["text_encoder"].encode("disc", add_special_tokens=False)
    base_weight = next(v for k, v in before.items() if k.endswith("token_embedding.weight"))
    assert torch.equal(rows, base_weight[[disc[0], disc[0]]])  # both vectors start from init_word
    trainable = [n for m in model.parts.values() for n, p in m.named_parameters() if p.requires_grad]
    assert len(trainable) == 1 and trainable[0].endswith("token_embedding.rows")
    optimizer = torch.optim.AdamW([g["params"] for g in target.param_groups(config)][0], lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        model.encode_prompt(["a sks disc"]).hidden.pow(2).mean().backward()
        optimizer.step()
    kept = [p for module in model.parts.values() for name, p in module.named_parameters() if p is not rows]
    assert len(kept) == len(before)
    assert all(torch.equal(p.detach(), copy) for p, copy in zip(kept, originals, strict=True))
    assert not torch.equal(rows.detach(), base_weight[[disc[0], disc[0]]])
    assert torch.equal(model.encode_prompt(["a red disc"]).hidden, plain)  # no token: the base output exactly
    assert not torch.allclose(model.encode_prompt(["a sks disc"]).hidden, with_word)
    # .pt in the webui's layout, read weights-only
    target.save(tmp_path / "emb.pt", None, {}, config)
    data = torch.load(tmp_path / "emb.pt", weights_only=True)
    assert torch.equal(data["string_to_param"]["*"], rows.detach()) and data["name"] == "sks"
    target.save(tmp_path / "emb16.safetensors", "fp16", {"ss_x": "1"}, config)
    saved = load_file(tmp_path / "emb16.safetensors")["emb_params"]
    assert saved.dtype == torch.float16 and saved.shape == (2, base_weight.shape[1])
    # weights: a new run starts from the file's vectors
    again = base_config(tmp_path, tiny_model_files[family]["folder"], tiny_dataset, weights=str(tmp_path / "emb.pt"))
    model2 = load_model(again)
    target2 = TextualInversionTarget(again)
    target2.attach(model2, again)
    assert torch.equal(target2.token.rows["text_encoder"].detach(), rows.detach())
    three = base_config(tmp_path, tiny_model_files[family]["folder"], tiny_dataset, weights=str(tmp_path / "emb.pt"),
                        num_vectors_per_token=3)
    with pytest.raises(ModelLoadError, match=r"shape \(2, \d+\).*Set num_vectors_per_token = 2"):
        TextualInversionTarget(three).attach(load_model(three), three)


def test_sd1_file_loads_in_diffusers_with_the_trained_rows(sd1_run, tiny_model_files, tiny_dataset):
    from diffusers import StableDiffusionPipeline

    tmp, options = sd1_run
    out = Path(options["output_dir"])
    path = out / "emb.safetensors"
    state = load_file(path)
    assert list(state) == ["emb_params"] and state["emb_params"].shape == (2, 32)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/textual-inversion"
    assert meta["ss_token_string"] == "sks" and meta["ss_num_vectors_per_token"] == "2"
    assert sorted(p.name for p in (out / "sample").glob("*.png"))  # the prompt with the token was rendered
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_files["sd1"]["folder"], safety_checker=None,
                                                   requires_safety_checker=False)

    def encode(prompt):
        ids = pipe.tokenizer(pipe.maybe_convert_prompt(prompt, pipe.tokenizer), padding="max_length",
                             max_length=77, return_tensors="pt").input_ids
        with torch.no_grad():
            return pipe.text_encoder(ids)[0]

    plain_before, with_before = encode("a red disc"), encode("a sks disc")
    pipe.load_textual_inversion(str(path), token="sks")
    ids = pipe.tokenizer.convert_tokens_to_ids(["sks", "sks_1"])
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[ids].detach(), state["emb_params"])
    assert torch.equal(encode("a red disc"), plain_before)
    assert not torch.allclose(encode("a sks disc"), with_before)
    # our model continued from the file conditions a prompt as diffusers does with the loaded embedding
    config = base_config(tmp, tiny_model_files["sd1"]["folder"], tiny_dataset, weights=str(path))
    model = load_model(config)
    target = TextualInversionTarget(config)
    target.attach(model, config)
    with torch.no_grad():
        ours = model.encode_prompt(["a sks disc"]).hidden
    torch.testing.assert_close(ours, encode("a sks disc"), rtol=1e-5, atol=1e-5)


def test_resume_from_a_state_gives_the_same_vectors(sd1_run):
    tmp, options = sd1_run
    out = Path(options["output_dir"])
    state = out / "emb-step00000002-state"
    assert state.is_dir()
    resumed = {**options, "output_dir": str(tmp / "resumed"), "resume": str(state), "sample_prompts": None}
    assert run_ti(tmp, {k: v for k, v in resumed.items() if v is not None}) == 0
    first = load_file(out / "emb.safetensors")["emb_params"]
    assert torch.equal(load_file(tmp / "resumed" / "emb.safetensors")["emb_params"], first)
    assert not torch.equal(load_file(out / "emb-step00000002.safetensors")["emb_params"], first)


def test_sdxl_embedding_has_clip_l_and_clip_g_and_loads_in_both_encoders(tmp_path, tiny_sdxl_files, tiny_dataset):
    from diffusers import StableDiffusionXLPipeline

    options = ti_options(tiny_sdxl_files["folder"], tiny_dataset, tmp_path / "out", max_train_steps=2,
                         num_vectors_per_token=1)
    assert run_ti(tmp_path, options, family="sdxl") == 0
    state = load_file(tmp_path / "out" / "emb.safetensors")
    assert sorted(state) == ["clip_g", "clip_l"]
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_files["folder"])
    assert state["clip_l"].shape == (1, pipe.text_encoder.config.hidden_size)
    assert state["clip_g"].shape == (1, pipe.text_encoder_2.config.hidden_size)
    pipe.load_textual_inversion(state["clip_l"], token="sks", text_encoder=pipe.text_encoder,
                                tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(state["clip_g"], token="sks", text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    for tokenizer, encoder, key in ((pipe.tokenizer, pipe.text_encoder, "clip_l"),
                                    (pipe.tokenizer_2, pipe.text_encoder_2, "clip_g")):
        row = encoder.get_input_embeddings().weight[tokenizer.convert_tokens_to_ids("sks")]
        assert torch.equal(row.detach(), state[key][0])


def test_sdxl_script_refuses_an_sd1_model(tmp_path, tiny_model_files, tiny_dataset, capsys):
    options = ti_options(tiny_model_files["sd1"]["folder"], tiny_dataset, tmp_path / "out")
    assert run_ti(tmp_path, options, family="sdxl") == 2
    assert "trains Stable Diffusion XL" in capsys.readouterr().err


def test_cached_text_outputs_are_refused_naming_the_token(tmp_path, tiny_model_files, tiny_dataset, capsys):
    options = ti_options(tiny_model_files["sd1"]["folder"], tiny_dataset, tmp_path / "out",
                         cache_text_encoder_outputs=True)
    assert run_ti(tmp_path, options) == 2
    err = capsys.readouterr().err
    assert "learns the embedding of token_string 'sks'" in err and "network_train_unet_only" not in err
    assert not (tmp_path / "out" / "emb.safetensors").exists()
