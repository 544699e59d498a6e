"""The tiny FLUX on disk: the diffusers folder runs in FluxPipeline, sd-scripts' separate files hold the same
weights in their own key layouts."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from library.models import flux_keys
from library.models.flux_model import (
    FLUX_VAE_SCALING_FACTOR,
    FLUX_VAE_SHIFT_FACTOR,
    image_ids,
    latents_to_model,
    pack_latents,
    text_ids,
)

pytestmark = pytest.mark.slow


def _keys(path):
    with safe_open(str(path), framework="pt") as handle:
        return list(handle.keys())


@pytest.mark.parametrize("variant", ["dev", "schnell"])
def test_folder_makes_an_image_of_the_right_size_in_flux_pipeline(
    variant, tiny_flux_files, tiny_flux_schnell_files
):
    from diffusers import FluxPipeline

    folder = (tiny_flux_files if variant == "dev" else tiny_flux_schnell_files)["folder"]
    pipe = FluxPipeline.from_pretrained(str(folder))
    assert pipe.transformer.config.guidance_embeds is (variant == "dev")
    assert pipe.scheduler.config.use_dynamic_shifting is (variant == "dev")
    assert pipe.vae.config.latent_channels == 16 and pipe.vae.config.shift_factor == FLUX_VAE_SHIFT_FACTOR
    out = pipe(
        "a red cat, photo",
        height=64,
        width=48,
        num_inference_steps=2,
        guidance_scale=3.5,
        max_sequence_length=32,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    )
    assert out.images.shape == (1, 64, 48, 3)
    assert 0.0 <= out.images.min() and out.images.max() <= 1.0 and out.images.std() > 0


def test_transformer_file_is_bfl_layout_with_the_folder_weights(tiny_flux_files):
    from diffusers import FluxTransformer2DModel

    path = tiny_flux_files["files"]["transformer"]
    assert path.name == "flux1-dev.safetensors"
    state = load_file(str(path))
    assert flux_keys.is_bfl_flux(state) and flux_keys.flux_variant(state) == "dev"
    assert (
        "double_blocks.2.txt_attn.norm.key_norm.scale" in state and "single_blocks.5.linear1.weight" in state
    )
    reference = FluxTransformer2DModel.from_pretrained(
        str(tiny_flux_files["folder"]), subfolder="transformer"
    )
    expected = reference.state_dict()
    converted = flux_keys.bfl_to_diffusers(state)
    assert set(converted) == set(expected)
    assert all(torch.equal(converted[k], expected[k]) for k in expected)
    # and our model loaded from the file predicts what diffusers' does from the folder
    ours = flux_keys.load_bfl_transformer(state).eval()
    g = torch.Generator().manual_seed(0)
    img = pack_latents(torch.randn(1, 16, 4, 6, generator=g))
    txt, y = torch.randn(1, 5, 32, generator=g), torch.randn(1, 32, generator=g)
    t, guidance = torch.tensor([0.5]), torch.tensor([3.5])
    with torch.no_grad():
        got = ours(img, image_ids(1, 4, 6), txt, text_ids(1, 5), t, y, guidance)
        want = reference(
            hidden_states=img,
            encoder_hidden_states=txt,
            pooled_projections=y,
            timestep=t,
            img_ids=image_ids(1, 4, 6)[0],
            txt_ids=text_ids(1, 5)[0],
            guidance=guidance,
            return_dict=False,
        )[0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_text_encoder_and_ae_files_have_sd_scripts_layouts(tiny_flux_files):
    files, folder = tiny_flux_files["files"], tiny_flux_files["folder"]
    clip_keys, t5_keys, ae_keys = (_keys(files[p]) for p in ("clip_l", "t5xxl", "ae"))
    assert all(k.startswith("text_model.") for k in clip_keys)
    assert "text_model.encoder.layers.1.self_attn.q_proj.weight" in clip_keys
    assert "shared.weight" in t5_keys and "encoder.embed_tokens.weight" not in t5_keys
    assert "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight" in t5_keys
    assert flux_keys.is_bfl_ae(ae_keys)
    assert "decoder.up.3.upsample.conv.weight" in ae_keys and "encoder.mid.attn_1.q.weight" in ae_keys
    assert not any("quant_conv" in k or k.startswith("first_stage_model.") for k in ae_keys)
    assert load_file(str(files["ae"]))["encoder.mid.attn_1.q.weight"].ndim == 4  # 1x1 conv as in BFL's ae
    vae_config = json.loads((folder / "vae" / "config.json").read_text())
    assert vae_config["scaling_factor"] == FLUX_VAE_SCALING_FACTOR and vae_config["use_quant_conv"] is False


def test_separate_files_load_back_to_the_folder_modules(tiny_flux_files):
    """The FLUX family's loader (sd-scripts' four files) gives the folder's modules exactly."""
    from diffusers import FluxPipeline

    from library.models.loading import load_base_model

    pipe = FluxPipeline.from_pretrained(str(tiny_flux_files["folder"]))
    files = tiny_flux_files["files"]
    model = load_base_model(files["transformer"], components={k: files[k] for k in ("clip_l", "t5xxl", "ae")})
    modules = model.parts
    pairs = {"text_encoder_1": pipe.text_encoder, "text_encoder_2": pipe.text_encoder_2, "vae": pipe.vae}
    for part, reference in pairs.items():
        got, want = modules[part].state_dict(), reference.state_dict()
        assert set(got) == set(want), part
        assert all(torch.equal(got[k], want[k]) for k in want), part
    assert set(flux_keys.bfl_to_diffusers(modules["unet"].state_dict())) == set(pipe.transformer.state_dict())
    ids = pipe.tokenizer_2(["a red cat"], padding="max_length", max_length=8, return_tensors="pt").input_ids
    assert ids.tolist() == [
        [flux_tok(pipe, "▁a"), flux_tok(pipe, "▁red"), flux_tok(pipe, "▁cat"), 1, 0, 0, 0, 0]
    ]
    assert model.tokenizers["text_encoder_2"](["a red cat"], padding="max_length", max_length=8,
                                               return_tensors="pt").input_ids.tolist() == ids.tolist()
    with torch.no_grad():
        hidden = modules["text_encoder_2"](ids).last_hidden_state
        pooled = modules["text_encoder_1"](
            pipe.tokenizer(["a red cat"], padding="max_length", return_tensors="pt").input_ids
        ).pooler_output
        image = torch.rand(1, 3, 64, 48) * 2 - 1
        z = modules["vae"].encode(image).latent_dist.mode()
    assert hidden.shape == (1, 8, 32) and pooled.shape == (1, 32) and z.shape == (1, 16, 8, 6)
    assert pack_latents(latents_to_model(z)).shape == (1, 12, 64)


def flux_tok(pipe, piece):
    return pipe.tokenizer_2.convert_tokens_to_ids(piece)


def test_a_foreign_clip_l_file_is_refused_by_name(tiny_flux_files, tmp_path):
    """Without our metadata a clip_l file is read with CLIP-L's real config; the tiny one's shapes do not fit
    and the error names the file."""
    from safetensors.torch import save_file

    from library.models.loading import load_base_model

    bare = tmp_path / "clip_l.safetensors"
    save_file(load_file(str(tiny_flux_files["files"]["clip_l"])), str(bare))
    files = {**tiny_flux_files["files"], "clip_l": bare}
    with pytest.raises(Exception, match=r"clip_l.safetensors"):
        load_base_model(files["transformer"], components={k: files[k] for k in ("clip_l", "t5xxl", "ae")})


def test_diffusers_own_ldm_vae_reader_reads_our_ae_file(tiny_flux_files):
    """diffusers' single-file VAE converter (what AutoencoderKL.from_single_file runs on BFL's ae.safetensors)
    turns our ae file into exactly the folder's VAE weights."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    folder = tiny_flux_files["folder"]
    config = json.loads((folder / "vae" / "config.json").read_text())
    converted = convert_ldm_vae_checkpoint(load_file(str(tiny_flux_files["files"]["ae"])), config)
    expected = load_file(str(folder / "vae" / "diffusion_pytorch_model.safetensors"))
    assert set(converted) == set(expected)
    for key, value in expected.items():
        assert torch.equal(converted[key].reshape(value.shape), value), key


def test_t5xxl_file_carries_the_tiny_tokenizer(tiny_flux_files):
    """Real t5xxl files have no tokenizer (the family uses T5-XXL's); ours carries its own vocabulary, and a
    tokenizer rebuilt from that metadata tokenizes as the folder's tokenizer_2."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from library.models.tiny_flux import META_TOKENIZER

    with safe_open(str(tiny_flux_files["files"]["t5xxl"]), framework="pt") as handle:
        spec = json.loads(handle.metadata()[META_TOKENIZER])
    assert spec["model_max_length"] == 512
    rebuilt = Tokenizer.from_str(spec["tokenizer"])
    folder = AutoTokenizer.from_pretrained(str(tiny_flux_files["folder"]), subfolder="tokenizer_2")
    caption = "a photo of sks disc, red 42"
    assert rebuilt.encode(caption).ids == folder(caption).input_ids
    assert rebuilt.encode(caption).ids[-1] == 1  # </s>
