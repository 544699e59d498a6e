"""Our FLUX.1 transformer (BFL layout) against diffusers' FluxTransformer2DModel, its hooks and checkpointing."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from library.models import flux_keys
from library.models.flux_model import (
    FLUX_DEV_PARAMS,
    TINY_FLUX_PARAMS,
    FluxTransformer,
    image_ids,
    pack_latents,
    text_ids,
)

SCHNELL_TINY = replace(TINY_FLUX_PARAMS, guidance_embed=False)


def _seeded_model(params, seed=0):
    torch.manual_seed(seed)
    model = FluxTransformer(params).eval()
    with torch.no_grad():
        for p in model.parameters():  # no zero-initialised layer may hide a wrong mapping
            p.normal_(0.0, 0.1)
    return model


def _inputs(params, batch=2, height=8, width=6, text_length=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {
        "img": pack_latents(torch.randn(batch, 16, height, width, generator=g)),
        "img_ids": image_ids(batch, height, width),
        "txt": torch.randn(batch, text_length, params.context_in_dim, generator=g),
        "txt_ids": text_ids(batch, text_length),
        "timesteps": torch.tensor([0.3, 0.9])[:batch],
        "y": torch.randn(batch, params.vec_in_dim, generator=g),
        "guidance": torch.tensor([3.5, 1.0])[:batch] if params.guidance_embed else None,
    }


def _diffusers_output(reference, x):
    return reference(
        hidden_states=x["img"],
        encoder_hidden_states=x["txt"],
        pooled_projections=x["y"],
        timestep=x["timesteps"],
        img_ids=x["img_ids"][0],
        txt_ids=x["txt_ids"][0],
        guidance=x["guidance"],
        return_dict=False,
    )[0]


@pytest.mark.slow
@pytest.mark.parametrize("params", [TINY_FLUX_PARAMS, SCHNELL_TINY], ids=["dev", "schnell"])
def test_our_model_matches_diffusers_after_conversion(params):
    """THE check of the layout and the math: diffusers' FluxTransformer2DModel with seeded weights, its state
    dict converted to BFL keys and loaded by name into ours; same packed inputs, ids, sigmas, pooled vector and
    guidance give the same prediction."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    reference = FluxTransformer2DModel(**flux_keys.diffusers_config(params)).eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.normal_(0.0, 0.1)
    ours = FluxTransformer(params).eval()
    ours.load_state_dict(flux_keys.diffusers_to_bfl(reference.state_dict()), strict=True)
    x = _inputs(params)
    with torch.no_grad():
        expected = _diffusers_output(reference, x)
        got = ours(**x)
    assert got.shape == (2, 12, 64)
    assert expected.abs().mean() > 0.1
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # the (shift, scale) swap of the final modulation is what makes them agree
    wrong = flux_keys.diffusers_to_bfl(reference.state_dict())
    key = "final_layer.adaLN_modulation.1.weight"
    wrong[key] = flux_keys.swap_halves(wrong[key])
    ours.load_state_dict(wrong)
    with torch.no_grad():
        assert (ours(**x) - expected).abs().max() > 1e-2


def test_bfl_diffusers_round_trips_are_exact():
    model = _seeded_model(TINY_FLUX_PARAMS)
    bfl = model.state_dict()
    diffusers = flux_keys.bfl_to_diffusers(bfl)
    assert "transformer_blocks.0.attn.add_q_proj.weight" in diffusers
    assert diffusers["single_transformer_blocks.0.proj_mlp.weight"].shape == (256, 64)
    assert diffusers["single_transformer_blocks.0.attn.to_v.bias"].shape == (64,)
    back = flux_keys.diffusers_to_bfl(diffusers)
    assert set(back) == set(bfl)
    assert all(torch.equal(back[k], bfl[k]) for k in bfl)
    again = flux_keys.bfl_to_diffusers(back)
    assert all(torch.equal(again[k], diffusers[k]) for k in diffusers)


def test_fused_projections_split_in_q_k_v_then_mlp_order():
    model = _seeded_model(TINY_FLUX_PARAMS)
    bfl = model.state_dict()
    d = flux_keys.bfl_to_diffusers(bfl)
    qkv = bfl["double_blocks.1.txt_attn.qkv.weight"]
    assert torch.equal(d["transformer_blocks.1.attn.add_k_proj.weight"], qkv[64:128])
    linear1 = bfl["single_blocks.2.linear1.bias"]
    assert torch.equal(d["single_transformer_blocks.2.attn.to_q.bias"], linear1[:64])
    assert torch.equal(d["single_transformer_blocks.2.proj_mlp.bias"], linear1[192:])
    final = bfl["final_layer.adaLN_modulation.1.bias"]
    assert torch.equal(d["norm_out.linear.bias"], torch.cat([final[64:], final[:64]]))


def test_conversion_refuses_keys_it_does_not_know():
    state = _seeded_model(TINY_FLUX_PARAMS).state_dict()
    with pytest.raises(
        flux_keys.FluxKeyError, match=r"1 keys have no diffusers counterpart, e.g. \['extra.weight'\]"
    ):
        flux_keys.bfl_to_diffusers({**state, "extra.weight": torch.zeros(1)})
    d = flux_keys.bfl_to_diffusers(state)
    del d["transformer_blocks.0.attn.to_k.weight"]
    with pytest.raises(
        flux_keys.FluxKeyError,
        match=r"double_blocks.0.img_attn.qkv.weight needs \['transformer_blocks.0.attn.to_k.weight'\]",
    ):
        flux_keys.diffusers_to_bfl(d)


def test_detection_from_keys_with_and_without_the_single_file_prefix():
    state = _seeded_model(TINY_FLUX_PARAMS).state_dict()
    prefixed = {flux_keys.BFL_PREFIX + k: v for k, v in state.items()}
    schnell = {k: v for k, v in state.items() if not k.startswith("guidance_in.")}
    assert flux_keys.is_bfl_flux(state) and flux_keys.is_bfl_flux(prefixed)
    assert not flux_keys.is_diffusers_flux(state)
    assert flux_keys.is_diffusers_flux(flux_keys.bfl_to_diffusers(state))
    assert not flux_keys.is_bfl_flux(["model.diffusion_model.input_blocks.0.0.weight"])
    assert flux_keys.flux_variant(prefixed) == "dev"
    assert flux_keys.flux_variant(schnell) == "schnell"
    assert flux_keys.flux_variant(flux_keys.bfl_to_diffusers(schnell)) == "schnell"
    assert flux_keys.flux_variant([*schnell, flux_keys.CHROMA_MARKER]) == "chroma"
    assert flux_keys.count_blocks(prefixed) == (3, 6)
    all_in_one = {
        **prefixed,
        "vae.decoder.conv_in.weight": torch.zeros(1),
        "text_encoders.clip_l.x": torch.zeros(1),
    }
    assert set(flux_keys.strip_bfl_prefix(all_in_one)) == set(state)
    assert flux_keys.params_from_bfl_state(prefixed) == TINY_FLUX_PARAMS
    assert flux_keys.params_from_bfl_state(schnell) == SCHNELL_TINY
    # ComfyUI's all-in-one FLUX files carry the LDM prefix: FLUX, not an SD checkpoint
    from library.models.family import family_of_single_file

    assert family_of_single_file(prefixed).name == "flux"


@pytest.mark.slow
def test_load_bfl_transformer_takes_prefixed_and_diffusers_keys():
    model = _seeded_model(TINY_FLUX_PARAMS)
    state = model.state_dict()
    x = _inputs(TINY_FLUX_PARAMS, batch=1)
    with torch.no_grad():
        expected = model(**x)
        for source in (
            {flux_keys.BFL_PREFIX + k: v for k, v in state.items()},
            flux_keys.bfl_to_diffusers(state),
        ):
            loaded = flux_keys.load_bfl_transformer(source).eval()
            assert loaded.params == TINY_FLUX_PARAMS
            assert torch.equal(loaded(**x), expected)
    broken = {k: v for k, v in state.items() if k != "single_blocks.5.linear2.bias"}
    with pytest.raises(
        flux_keys.FluxKeyError, match=r"1 missing keys \(e.g. \['single_blocks.5.linear2.bias'\]\)"
    ):
        flux_keys.load_bfl_transformer(broken)


def test_real_size_dev_matches_diffusers_default_shapes():
    """FLUX.1-dev's preset on the meta device: 11.9 B parameters, and the converted key set and every shape are
    those of diffusers' default FluxTransformer2DModel with guidance."""
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        ours = FluxTransformer(FLUX_DEV_PARAMS)
        reference = FluxTransformer2DModel(guidance_embeds=True)
    assert sum(p.numel() for p in ours.parameters()) == 11_901_408_320
    converted = flux_keys.bfl_to_diffusers(ours.state_dict())
    expected = reference.state_dict()
    assert set(converted) == set(expected)
    assert all(converted[k].shape == expected[k].shape for k in expected)
    config = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in reference.config.items()}
    assert flux_keys.diffusers_config(FLUX_DEV_PARAMS).items() <= config.items()
    assert flux_keys.params_from_diffusers_config(reference.config) == FLUX_DEV_PARAMS


def test_lora_target_names_are_sd_scripts_module_paths():
    """sd-scripts' FLUX LoRA names are lora_unet_ + the dotted path of each Linear inside DoubleStreamBlock /
    SingleStreamBlock with dots as underscores (lora_unet_double_blocks_0_img_attn_qkv)."""
    model = FluxTransformer(TINY_FLUX_PARAMS)
    names = set()
    for name, module in model.named_modules():
        if type(module).__name__ in ("DoubleStreamBlock", "SingleStreamBlock"):
            for child, sub in module.named_modules():
                if isinstance(sub, torch.nn.Linear):
                    names.add("lora_unet_" + f"{name}.{child}".replace(".", "_"))
    double = {
        f"lora_unet_double_blocks_0_{s}_{m}"
        for s in ("img", "txt")
        for m in ("mod_lin", "attn_qkv", "attn_proj", "mlp_0", "mlp_2")
    }
    single = {f"lora_unet_single_blocks_0_{m}" for m in ("linear1", "linear2", "modulation_lin")}
    assert {n for n in names if "_blocks_0_" in n} == double | single
    assert len(names) == 3 * 10 + 6 * 3


def test_block_hook_is_called_before_every_block_in_order():
    model = _seeded_model(TINY_FLUX_PARAMS)
    calls = []
    ran = []

    def hook(kind, index):
        calls.append((kind, index))

    for kind, blocks in (("double", model.double_blocks), ("single", model.single_blocks)):
        for index, block in enumerate(blocks):
            block.register_forward_pre_hook(lambda m, a, kind=kind, index=index: ran.append((kind, index)))
    model.block_hook = hook
    with torch.no_grad():
        model(**_inputs(TINY_FLUX_PARAMS, batch=1))
    expected = [("double", i) for i in range(3)] + [("single", i) for i in range(6)]
    assert calls == expected == ran


@pytest.mark.slow
def test_gradient_checkpointing_gives_the_same_gradients():
    """Plain, checkpointed per block, and checkpointed with CPU-offloaded activations (a no-op move on a CPU
    machine, but the same code path) give the same gradients; the hook runs once per block each time."""
    x = _inputs(TINY_FLUX_PARAMS)
    grads = []
    for checkpointing, offload in ((False, False), (True, False), (True, True)):
        model = _seeded_model(TINY_FLUX_PARAMS).train()
        model.enable_gradient_checkpointing(checkpointing, cpu_offload=offload)
        assert model.cpu_offload_checkpointing is offload
        calls = []
        model.block_hook = lambda kind, index, calls=calls: calls.append((kind, index))
        runs = []
        for block in [*model.double_blocks, *model.single_blocks]:
            block.register_forward_pre_hook(lambda module, args, runs=runs: runs.append(1))
        model(**x).square().mean().backward()
        assert len(calls) == 9  # not called again by the recomputation
        assert len(runs) == (18 if checkpointing else 9)  # checkpointed blocks run again in the backward pass
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    plain = grads[0]
    assert plain["double_blocks.0.img_attn.qkv.weight"].abs().sum() > 0
    for other in grads[1:]:
        assert set(other) == set(plain)
        for name in plain:
            torch.testing.assert_close(other[name], plain[name], atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_text_mask_hides_padded_tokens_from_the_image():
    model = _seeded_model(TINY_FLUX_PARAMS)
    x = _inputs(TINY_FLUX_PARAMS)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[:, 5:] = 0
    changed = dict(x, txt=x["txt"].clone())
    changed["txt"][:, 5:] += 3.0
    with torch.no_grad():
        plain = model(**x)
        assert torch.equal(model(**x, txt_attention_mask=torch.ones(2, 7)), plain)
        masked = model(**x, txt_attention_mask=mask)
        torch.testing.assert_close(model(**changed, txt_attention_mask=mask), masked, atol=1e-6, rtol=0)
        assert (model(**changed) - plain).abs().max() > 1e-3


def test_dev_model_needs_guidance():
    model = _seeded_model(TINY_FLUX_PARAMS)
    x = dict(_inputs(TINY_FLUX_PARAMS, batch=1), guidance=None)
    with pytest.raises(ValueError, match="guidance-distilled"):
        model(**x)


def test_blocks_to_swap_counts_as_sd_scripts_does():
    """16 -> 8 double + 16 single blocks (the last ones of each stack), 28 -> 14 + 28; 35 is FLUX.1's most."""
    from library.errors import ConfigError
    from library.models.family import get_model_family
    from library.models.flux_model import FLUX_PRESETS, FluxTransformer

    with torch.device("meta"):
        dev = FluxTransformer(FLUX_PRESETS["dev"])
    family = get_model_family("flux")
    for count, (doubles, singles) in {16: (8, 16), 28: (14, 28), 35: (17, 36), 1: (0, 2)}.items():
        swapped = family.blocks_to_swap(dev, count)
        assert swapped == [*dev.double_blocks[19 - doubles:], *dev.single_blocks[38 - singles:]], count
    with pytest.raises(ConfigError, match=r"blocks_to_swap = 36 would swap 18 of the 19 double blocks.*at most 35"):
        family.blocks_to_swap(dev, 36)


def test_picture_sides_that_flux_cannot_pack_are_refused_before_training():
    from library.config.load import config_from_values
    from library.errors import ConfigError
    from library.models.flux import _check_sizes

    def config(**values):
        return config_from_values({"pretrained_model_name_or_path": "builtin:tiny", "train_data_dir": "dataset_examples",
                                   "output_dir": "out", **values}, "network")

    _check_sizes(config(resolution="1024,768", enable_bucket=True, bucket_reso_steps=32))
    with pytest.raises(ConfigError, match=r"resolution = 1000x1000: FLUX packs 2x2 patches.*multiples of 16"):
        _check_sizes(config(resolution="1000,1000"))
    with pytest.raises(ConfigError, match=r"bucket_reso_steps = 8: FLUX"):
        _check_sizes(config(resolution="1024", enable_bucket=True, bucket_reso_steps=8))
    _check_sizes(config(resolution="1024", bucket_reso_steps=8))  # no buckets: the steps do not matter
