from __future__ import annotations

import pytest
import torch

from library.models.ldm_convert import detect_family, split_single_file, to_single_file
from library.models.safe_load import load_state_dict_file
from library.models.single_file import modules_from_single_file
from library.models.tiny import tiny_components


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))[:5]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_sd1_layout_keys():
    parts = tiny_components("sd1")
    sd = to_single_file(parts["unet"], parts["vae"], parts["text_encoder"], "sd1")
    expected = {
        "model.diffusion_model.time_embed.0.weight",
        "model.diffusion_model.input_blocks.0.0.weight",
        "model.diffusion_model.input_blocks.1.0.in_layers.0.weight",
        "model.diffusion_model.input_blocks.1.0.emb_layers.1.weight",
        "model.diffusion_model.input_blocks.1.1.proj_in.weight",
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        "model.diffusion_model.input_blocks.2.0.op.weight",
        "model.diffusion_model.input_blocks.5.0.skip_connection.weight",
        "model.diffusion_model.middle_block.1.proj_out.weight",
        "model.diffusion_model.output_blocks.1.1.conv.weight",  # UpBlock2D upsampler
        "model.diffusion_model.output_blocks.3.1.proj_in.weight",
        "model.diffusion_model.output_blocks.3.2.conv.weight",  # CrossAttnUpBlock2D upsampler
        "model.diffusion_model.out.2.weight",
        "first_stage_model.encoder.down.0.downsample.conv.weight",
        "first_stage_model.encoder.mid.attn_1.q.weight",
        "first_stage_model.decoder.up.3.block.1.conv2.weight",
        "first_stage_model.decoder.up.1.upsample.conv.weight",
        "first_stage_model.quant_conv.weight",
        "cond_stage_model.transformer.text_model.encoder.layers.3.mlp.fc2.weight",
        "cond_stage_model.transformer.text_model.embeddings.position_ids",
    }
    assert expected <= set(sd)
    assert sd["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)
    assert sd["model.diffusion_model.input_blocks.1.1.proj_in.weight"].ndim == 4
    # LDM decoder up.3 is diffusers decoder.up_blocks.0 (lowest resolution first).
    assert torch.equal(
        sd["first_stage_model.decoder.up.3.block.0.conv1.weight"],
        parts["vae"].decoder.up_blocks[0].resnets[0].conv1.weight,
    )
    assert detect_family(sd) == "sd1"


def test_sd2_openclip_layout():
    parts = tiny_components("sd2")
    te = parts["text_encoder"]
    sd = to_single_file(parts["unet"], parts["vae"], te, "sd2")
    prefix = "cond_stage_model.model."
    layer = te.encoder.layers[2].self_attn
    stacked = sd[prefix + "transformer.resblocks.2.attn.in_proj_weight"]
    assert stacked.shape == (96, 32)
    assert torch.equal(stacked, torch.cat([layer.q_proj.weight, layer.k_proj.weight, layer.v_proj.weight]))
    assert torch.equal(sd[prefix + "positional_embedding"], te.embeddings.position_embedding.weight)
    assert prefix + "ln_final.weight" in sd and prefix + "transformer.resblocks.3.mlp.c_fc.bias" in sd
    assert sd["model.diffusion_model.input_blocks.1.1.proj_in.weight"].ndim == 2
    assert detect_family(sd) == "sd2"
    assert not any(k.startswith("cond_stage_model.transformer.") for k in sd)


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_round_trip_exact(family):
    parts = tiny_components(family)
    sd = to_single_file(parts["unet"], parts["vae"], parts["text_encoder"], family)
    sd["model_ema.decay"] = torch.tensor(0.999)
    sd["alphas_cumprod"] = torch.ones(1000)
    unet_sd, vae_sd, te_sd, configs = split_single_file(sd, None)
    assert configs["family"] == family and configs["inferred"] is True
    _assert_same(unet_sd, parts["unet"].state_dict())
    _assert_same(vae_sd, parts["vae"].state_dict())
    _assert_same(te_sd, parts["text_encoder"].state_dict())


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_inferred_configs_match_tiny(family):
    parts = tiny_components(family)
    sd = to_single_file(parts["unet"], parts["vae"], parts["text_encoder"], family)
    _, _, _, configs = split_single_file(sd, {})
    unet_cfg = parts["unet"].config
    for key in ("block_out_channels", "layers_per_block", "cross_attention_dim", "use_linear_projection"):
        assert configs["unet"][key] == (list(unet_cfg[key]) if key == "block_out_channels" else unet_cfg[key])
    assert list(configs["unet"]["attention_head_dim"]) == list(unet_cfg.attention_head_dim)
    assert configs["unet"]["down_block_types"] == list(unet_cfg.down_block_types)
    assert configs["unet"]["up_block_types"] == list(unet_cfg.up_block_types)
    assert configs["vae"]["block_out_channels"] == list(parts["vae"].config.block_out_channels)
    assert configs["vae"]["layers_per_block"] == 1
    te = configs["text_encoder"]
    assert (te["num_hidden_layers"], te["hidden_size"], te["intermediate_size"]) == (4, 32, 128)


def test_sd1_heads_rule_on_sd15_shapes():
    # SD1.5: 320/640/1280/1280 channels, 2 layers per block, 8 heads everywhere, 768 context.
    from library.models.families import heads_dim64, heads_eight
    from library.models.ldm_infer import infer_unet_config

    state = {"input_blocks.0.0.weight": torch.empty(320, 4, 3, 3), "out.2.weight": torch.empty(4, 320, 3, 3)}
    channels = [320, 640, 1280, 1280]
    for level, ch in enumerate(channels):
        for j in range(2):
            index = 1 + level * 3 + j
            state[f"input_blocks.{index}.0.out_layers.3.weight"] = torch.empty(ch, ch, 3, 3)
            if level < 3:
                state[f"input_blocks.{index}.1.proj_in.weight"] = torch.empty(ch, ch, 1, 1)
                state[f"input_blocks.{index}.1.transformer_blocks.0.attn2.to_k.weight"] = torch.empty(ch, 768)
        if level < 3:
            state[f"input_blocks.{1 + level * 3 + 2}.0.op.weight"] = torch.empty(ch, ch, 3, 3)
    for i in range(1, 4):
        state[f"output_blocks.{i * 3}.1.proj_in.weight"] = torch.empty(1, 1, 1, 1)
    config = infer_unet_config(state, heads_eight)
    assert config["layers_per_block"] == 2
    assert config["block_out_channels"] == channels
    assert config["down_block_types"] == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert config["up_block_types"] == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
    assert config["cross_attention_dim"] == 768 and config["attention_head_dim"] == [8, 8, 8, 8]
    assert config["use_linear_projection"] is False
    assert infer_unet_config(state, heads_dim64)["attention_head_dim"] == [5, 10, 20, 20]


def test_openclip_24_layers_all_loaded():
    from library.models.ldm_text import open_clip_from_ldm, open_clip_to_ldm

    te = tiny_components("sd2")["text_encoder"].state_dict()
    extra = {k.replace("layers.3.", "layers.4."): v for k, v in te.items() if "layers.3." in k}
    ldm = open_clip_to_ldm({**te, **extra})
    back = open_clip_from_ldm(ldm)
    assert "encoder.layers.4.self_attn.q_proj.weight" in back
    assert not any("text_projection" in k or "logit_scale" in k for k in back)


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_foreign_file_without_metadata_loads_equal(tiny_files, family):
    state, metadata = load_state_dict_file(tiny_files[family]["single"])
    assert metadata["sdtrain.family"] == family
    with_meta, configs = modules_from_single_file(dict(state), metadata)  # it consumes the dict
    without, inferred = modules_from_single_file(dict(state), {})
    assert configs["inferred"] is False and inferred["inferred"] is True
    for name in ("unet", "vae", "text_encoder"):
        _assert_same(with_meta[name].state_dict(), without[name].state_dict())
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    context = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(with_meta["unet"](x, 10, context).sample, without["unet"](x, 10, context).sample)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_diffusers_from_single_file_agrees(tiny_files, family):
    """diffusers' own LDM converter reads our single file into the same weights (no missing keys)."""
    from diffusers import StableDiffusionPipeline

    files = tiny_files[family]
    pipe = StableDiffusionPipeline.from_single_file(
        str(files["single"]), config=str(files["folder"]), safety_checker=None, local_files_only=True
    )
    built = tiny_components(family)
    for name in ("unet", "vae", "text_encoder"):
        _assert_same(getattr(pipe, name).state_dict(), built[name].state_dict())
