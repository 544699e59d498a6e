"""Latent packing, position ids, the VAE latent scaling and the tiny FLUX's pieces (fast)."""

from __future__ import annotations

import pytest
import torch

from library.models.flux_model import (
    FLUX_VAE_SCALING_FACTOR,
    FLUX_VAE_SHIFT_FACTOR,
    FluxTransformer,
    default_axes_dim,
    image_ids,
    latents_from_model,
    latents_to_model,
    pack_latents,
    text_ids,
    unpack_latents,
)


def test_pack_puts_each_2x2_patch_in_one_token_channels_first():
    latents = torch.randn(2, 16, 6, 4)
    packed = pack_latents(latents)
    assert packed.shape == (2, 3 * 2, 64)
    for b, c, i, j, ph, pw in [
        (0, 0, 0, 0, 0, 0),
        (1, 15, 2, 1, 1, 0),
        (0, 7, 1, 1, 0, 1),
        (1, 3, 2, 0, 1, 1),
    ]:
        assert packed[b, i * 2 + j, c * 4 + ph * 2 + pw] == latents[b, c, 2 * i + ph, 2 * j + pw]
    assert torch.equal(unpack_latents(packed, 6, 4), latents)


@pytest.mark.slow  # importing FluxPipeline takes seconds
def test_pack_unpack_and_ids_equal_diffusers_flux_pipeline():
    from diffusers import FluxPipeline

    latents = torch.randn(2, 16, 8, 6)
    assert torch.equal(pack_latents(latents), FluxPipeline._pack_latents(latents, 2, 16, 8, 6))
    # diffusers' unpack takes pixel sizes (latent x vae_scale_factor 8)
    assert torch.equal(
        unpack_latents(pack_latents(latents), 8, 6),
        FluxPipeline._unpack_latents(pack_latents(latents), 64, 48, 8),
    )
    ids = image_ids(2, 8, 6)
    assert ids.shape == (2, 12, 3)
    assert torch.equal(ids[1], FluxPipeline._prepare_latent_image_ids(2, 4, 3, "cpu", torch.float32))
    assert ids[0, 5].tolist() == [0.0, 1.0, 2.0]
    assert torch.equal(text_ids(2, 7), torch.zeros(2, 7, 3))


def test_odd_latent_sizes_are_refused():
    with pytest.raises(ValueError, match="must be even.*got 5x4"):
        pack_latents(torch.zeros(1, 16, 5, 4))
    with pytest.raises(ValueError, match="cannot unpack 6 tokens into a 4x4 latent"):
        unpack_latents(torch.zeros(1, 6, 64), 4, 4)


def test_vae_latent_scaling_uses_flux_shift_and_scale():
    z = torch.tensor([0.1159, 1.0, -2.0])
    expected = torch.tensor([0.0, (1.0 - 0.1159) * 0.3611, (-2.0 - 0.1159) * 0.3611])
    assert (FLUX_VAE_SCALING_FACTOR, FLUX_VAE_SHIFT_FACTOR) == (0.3611, 0.1159)
    torch.testing.assert_close(latents_to_model(z), expected)
    torch.testing.assert_close(latents_from_model(latents_to_model(z)), z)


def test_axes_dim_rule_gives_flux_and_tiny_values():
    assert default_axes_dim(128) == (16, 56, 56)
    assert default_axes_dim(32) == (4, 14, 14)
    with pytest.raises(ValueError, match="head width 24"):
        default_axes_dim(24)


def test_tiny_transformer_is_the_same_for_the_same_seed_and_dev_schnell_differ_by_guidance():
    from library.models.tiny import _seeded
    from library.models.tiny_flux import tiny_flux_params

    a = _seeded(0, lambda: FluxTransformer(tiny_flux_params("dev"))).state_dict()
    b = _seeded(0, lambda: FluxTransformer(tiny_flux_params("dev"))).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    schnell = FluxTransformer(tiny_flux_params("schnell")).state_dict()
    assert set(a) - set(schnell) == {
        f"guidance_in.{m}.{p}" for m in ("in_layer", "out_layer") for p in ("weight", "bias")
    }
    with pytest.raises(ValueError, match="unknown FLUX variant 'pro'"):
        tiny_flux_params("pro")


def test_tiny_t5_tokenizer_is_built_locally_with_t5_special_ids(tmp_path):
    from transformers import AutoTokenizer

    from library.models.tiny_flux import tiny_t5_tokenizer

    tok = tiny_t5_tokenizer()
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.model_max_length == 512
    ids = tok("a red cat, photo 12").input_ids
    assert tok.convert_ids_to_tokens(ids) == ["▁a", "▁red", "▁cat", ",", "▁photo", "▁1", "2", "</s>"]
    assert tok("a ü").input_ids == [tok.convert_tokens_to_ids("▁a"), tok.convert_tokens_to_ids("▁"), 2, 1]
    assert tok.decode(ids, skip_special_tokens=True) == "a red cat, photo 12"
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(str(tmp_path))
    assert again("a red cat, photo 12").input_ids == ids


def test_real_separate_file_configs_give_flux_shapes():
    """On the meta device: FLUX.1's ae config writes BFL's ae keys (2 blocks per encoder level, 3 per decoder
    level, no quant convs); the CLIP-L and T5-XXL configs give 768 pooled and 4096-wide states."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from library.models import flux_keys

    with torch.device("meta"):
        vae = AutoencoderKL(**flux_keys.FLUX_AE_CONFIG)
        clip = CLIPTextModel(CLIPTextConfig(**flux_keys.CLIP_L_CONFIG))
        t5 = T5EncoderModel(T5Config(**flux_keys.T5XXL_CONFIG))
    ae = flux_keys.ae_to_file(vae.state_dict(), vae.config)
    assert flux_keys.is_bfl_ae(ae)
    assert {
        "encoder.down.3.block.1.conv2.weight",
        "decoder.up.0.block.2.conv2.weight",
        "decoder.up.3.upsample.conv.weight",
        "encoder.down.1.block.0.nin_shortcut.weight",
        "decoder.mid.attn_1.proj_out.weight",
    } <= set(ae)
    assert "encoder.down.3.downsample.conv.weight" not in ae and not any("quant" in k for k in ae)
    assert ae["encoder.conv_out.weight"].shape == (32, 512, 3, 3)  # mean and logvar of 16 channels
    clip_file = flux_keys.clip_l_to_file(clip.state_dict())
    assert clip_file["text_model.final_layer_norm.weight"].shape == (768,)
    assert len(clip_file) == len(clip.state_dict())
    t5_file = flux_keys.t5_to_file(t5.state_dict())
    assert t5_file["shared.weight"].shape == (32128, 4096) and flux_keys.T5_TIED_EMBEDDING not in t5_file
    assert t5_file["encoder.block.23.layer.1.DenseReluDense.wi_1.weight"].shape == (10240, 4096)
