"""The tiny SDXL and the SGM (SDXL original) single-file layout, against diffusers' own loaders."""

from __future__ import annotations

import pytest
import torch

from library.errors import ModelLoadError
from library.models import sgm
from library.models.safe_load import load_state_dict_file
from library.models.tiny_sdxl import (
    save_tiny_sdxl_diffusers,
    save_tiny_sdxl_single_file,
    tiny_sdxl_components,
    tiny_sdxl_text_encoder_configs,
    tiny_sdxl_unet_config,
)

TE2 = "conditioner.embedders.1.model."


@pytest.fixture(scope="module")
def parts():
    return tiny_sdxl_components(seed=0)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """{"folder": diffusers SDXL folder, "single": SGM .safetensors}, both of seed 0."""
    root = tmp_path_factory.mktemp("tiny_sdxl")
    return {
        "folder": save_tiny_sdxl_diffusers(root / "folder"),
        "single": save_tiny_sdxl_single_file(root / "tiny_sdxl.safetensors"),
    }


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))[:5]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _module_states(modules: dict) -> dict:
    return {name: modules[name].state_dict() for name in sgm.PARTS}


def test_tiny_sdxl_is_seeded(parts):
    again = _module_states(tiny_sdxl_components(seed=0))
    for name, state in _module_states(parts).items():
        _assert_same(state, again[name])
    other = tiny_sdxl_components(seed=1)["unet"].state_dict()
    assert not torch.equal(other["conv_in.weight"], parts["unet"].state_dict()["conv_in.weight"])


def test_sgm_layout(parts):
    sd = sgm.to_sgm_single_file(parts)
    expected = {
        "model.diffusion_model.label_emb.0.0.weight",
        "model.diffusion_model.label_emb.0.2.weight",
        "model.diffusion_model.input_blocks.3.0.op.weight",  # DownBlock2D downsampler
        "model.diffusion_model.input_blocks.7.1.transformer_blocks.1.attn2.to_k.weight",  # depth 2
        "model.diffusion_model.middle_block.1.transformer_blocks.1.ff.net.2.weight",
        "model.diffusion_model.output_blocks.2.2.conv.weight",  # CrossAttnUpBlock2D upsampler
        "first_stage_model.decoder.up.2.block.1.conv2.weight",
        "conditioner.embedders.0.transformer.text_model.embeddings.position_ids",
        "conditioner.embedders.0.transformer.text_model.encoder.layers.3.mlp.fc2.weight",
        TE2 + "transformer.resblocks.4.attn.in_proj_weight",
        TE2 + "token_embedding.weight",
        TE2 + "positional_embedding",
        TE2 + "ln_final.weight",
        TE2 + "logit_scale",
    }
    assert expected <= set(sd)
    assert "model.diffusion_model.input_blocks.1.1.proj_in.weight" not in sd  # no attention at level 0
    assert "model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn1.to_q.weight" not in sd
    assert {k.split(".")[0] for k in sd} == {"model", "first_stage_model", "conditioner"}
    projection = parts["text_encoder_2"].text_projection.weight
    assert projection.shape == (16, 48)
    assert torch.equal(sd[TE2 + "text_projection"], projection.T)
    assert sd[TE2 + "transformer.resblocks.0.attn.in_proj_weight"].shape == (3 * 48, 48)
    assert sgm.is_sgm_single_file(sd)


@pytest.mark.parametrize("with_metadata", [True, False])
def test_round_trip_exact(files, parts, with_metadata):
    state, metadata = load_state_dict_file(files["single"])
    assert metadata["sdtrain.family"] == "sdxl"
    modules, configs = sgm.modules_from_sgm_single_file(
        state, metadata if with_metadata else None, str(files["single"])
    )
    assert configs["inferred"] is not with_metadata
    for name, state_dict in _module_states(parts).items():
        _assert_same(modules[name].state_dict(), state_dict)
        assert modules[name].dtype == torch.float32 and not modules[name].training
    _assert_same(sgm.to_sgm_single_file(modules), sgm.to_sgm_single_file(parts))


def test_inferred_configs_match(parts):
    _, configs = sgm.split_sgm_single_file(sgm.to_sgm_single_file(parts), None)
    original = tiny_sdxl_unet_config()
    for field in (
        "down_block_types",
        "up_block_types",
        "block_out_channels",
        "layers_per_block",
        "transformer_layers_per_block",
        "cross_attention_dim",
        "attention_head_dim",
        "use_linear_projection",
        "addition_embed_type",
        "addition_time_embed_dim",
        "projection_class_embeddings_input_dim",
    ):
        assert configs["unet"][field] == original[field], field
    assert configs["vae"]["scaling_factor"] == parts["vae"].config.scaling_factor
    for name, original_te in zip(
        ("text_encoder_1", "text_encoder_2"), tiny_sdxl_text_encoder_configs(), strict=True
    ):
        for field in ("hidden_size", "num_hidden_layers", "intermediate_size", "hidden_act"):
            assert configs[name][field] == original_te[field], (name, field)
    assert configs["text_encoder_2"]["projection_dim"] == 16


def test_inferred_model_predicts_the_same(parts):
    modules, _ = sgm.modules_from_sgm_single_file(sgm.to_sgm_single_file(parts), None)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 77, 80, generator=generator)
    added = {"text_embeds": torch.randn(1, 16, generator=generator), "time_ids": torch.tensor([[64.0] * 6])}
    with torch.no_grad():
        expected = parts["unet"](latents, 10, context, added_cond_kwargs=added).sample
        got = modules["unet"](latents, 10, context, added_cond_kwargs=added).sample
    assert torch.equal(got, expected)


def test_missing_second_text_encoder(parts):
    sd = {
        k: v for k, v in sgm.to_sgm_single_file(parts).items() if not k.startswith("conditioner.embedders.1.")
    }
    with pytest.raises(
        ModelLoadError, match=r"my_model\.safetensors: no conditioner\.embedders\.1\.model\.\*"
    ):
        sgm.modules_from_sgm_single_file(sd, None, "my_model.safetensors")


def test_not_sgm(parts):
    sd = sgm.to_sgm_single_file(parts)
    assert not sgm.is_sgm_single_file({k: v for k, v in sd.items() if not k.startswith("conditioner.")})
    assert not sgm.is_sgm_single_file({k: v for k, v in sd.items() if k.startswith("conditioner.")})


def test_ckpt_and_dtype(tmp_path, parts):
    path = sgm.save_sgm_single_file(tmp_path / "m.ckpt", parts, dtype=torch.float16)
    state, _ = load_state_dict_file(path)
    assert state[TE2 + "text_projection"].dtype == torch.float16
    assert (
        state["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"].dtype == torch.int64
    )
    modules, configs = sgm.modules_from_sgm_single_file(state, None, str(path))
    assert configs["inferred"]
    expected = parts["text_encoder_2"].text_projection.weight.half().float()
    assert torch.equal(modules["text_encoder_2"].text_projection.weight, expected)


def test_diffusers_loads_our_files(files, parts):
    from diffusers import StableDiffusionXLPipeline

    folder = StableDiffusionXLPipeline.from_pretrained(files["folder"], local_files_only=True)
    single = StableDiffusionXLPipeline.from_single_file(
        str(files["single"]), config=str(files["folder"]), local_files_only=True
    )
    for pipe in (folder, single):
        for pipe_name, ours in (
            ("unet", "unet"),
            ("vae", "vae"),
            ("text_encoder", "text_encoder_1"),
            ("text_encoder_2", "text_encoder_2"),
        ):
            _assert_same(getattr(pipe, pipe_name).state_dict(), parts[ours].state_dict())
    assert torch.equal(
        single.text_encoder_2.text_projection.weight, parts["text_encoder_2"].text_projection.weight
    )


SDXL_BASE_UNET = {
    "sample_size": 128,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [320, 640, 1280],
    "layers_per_block": 2,
    "transformer_layers_per_block": [1, 2, 10],
    "cross_attention_dim": 2048,
    "attention_head_dim": [5, 10, 20],
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}


def test_infer_real_sdxl_unet_shapes():
    """SDXL base's UNet config comes back from its key shapes (built on the meta device: no memory)."""
    from diffusers import UNet2DConditionModel

    from library.models.ldm_convert import unet_to_ldm
    from library.models.ldm_infer import infer_sdxl_unet_config

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_BASE_UNET)
    state = unet_to_ldm(unet.state_dict(), dict(unet.config))
    assert len(state) == len(unet.state_dict())
    for pooled_dim in (1280, None):
        config = infer_sdxl_unet_config(state, pooled_dim=pooled_dim)
        for field, value in SDXL_BASE_UNET.items():
            assert config[field] == value, field
    with pytest.raises(ModelLoadError, match="do not belong together"):
        infer_sdxl_unet_config(state, pooled_dim=1279)
