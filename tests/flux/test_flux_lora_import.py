"""FLUX LoRAs of other trainers as network_weights: diffusers' / PEFT / ai-toolkit's layout (written here by diffusers
and peft themselves), the "mixture" and BFL-with-PEFT-suffix forms, converted to sd-scripts' modules with the same
ΔW on every base weight; a run from such a file starts from that ΔW; unknown layouts are refused."""

from __future__ import annotations

import pytest
import torch

from library.errors import ModelLoadError
from library.networks.foreign import to_contract
from library.networks.functional import lora_delta_weight

HIDDEN, MLP = 64, 256  # the tiny FLUX's widths
PEFT_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
                "proj_mlp", "proj_out", "norm.linear", "norm1.linear", "norm1_context.linear", "ff.net.0.proj",
                "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "x_embedder", "context_embedder",
                "norm_out.linear"]


def deltas(state: dict) -> dict[str, torch.Tensor]:
    """Module name -> up @ down * alpha / rank of a file in the contract."""
    out = {}
    for key, down in state.items():
        if key.endswith(".lora_down.weight"):
            name = key.removesuffix(".lora_down.weight")
            alpha = float(state.get(f"{name}.alpha", down.shape[0]))
            out[name] = lora_delta_weight(down, state[f"{name}.lora_up.weight"], alpha / down.shape[0])
    return out


def assert_near(got, want, rtol=1e-5, atol=1e-5):
    """torch.testing.assert_close's rule, without its first-use import cost in the fast tier."""
    assert got.shape == want.shape, (got.shape, want.shape)
    assert ((got - want).abs() <= atol + rtol * want.abs()).all(), (got - want).abs().max()


def _pair(gen, rank, width_in, width_out):
    return torch.randn(rank, width_in, generator=gen), torch.randn(width_out, rank, generator=gen)


# --- pure conversions (fast) --------------------------------------------------------------------------------------


def test_fused_parts_stack_exactly_whatever_their_ranks_scales_or_gaps():
    """to_q (rank 2, alpha 1) and to_v (rank 3, alpha 6) of a double block, to_k absent: the qkv module's ΔW is the
    parts' ΔW stacked (k rows zero); a single block's q/k/v without proj_mlp gets the MLP width from the layer."""
    gen = torch.Generator().manual_seed(0)
    (aq, bq), (av, bv) = _pair(gen, 2, HIDDEN, HIDDEN), _pair(gen, 3, HIDDEN, HIDDEN)
    (sq, ssq), (sk, ssk), (sv, ssv) = (_pair(gen, 2, HIDDEN, HIDDEN) for _ in range(3))
    p = "transformer.transformer_blocks.0.attn."
    s = "transformer.single_transformer_blocks.1.attn."
    state = {f"{p}to_q.lora_A.weight": aq, f"{p}to_q.lora_B.weight": bq, f"{p}to_q.alpha": torch.tensor(1.0),
             f"{p}to_v.lora_A.weight": av, f"{p}to_v.lora_B.weight": bv, f"{p}to_v.alpha": torch.tensor(6.0),
             **{f"{s}{m}.lora_{ab}.weight": t for m, pair in (("to_q", (sq, ssq)), ("to_k", (sk, ssk)),
                                                              ("to_v", (sv, ssv))) for ab, t in zip("AB", pair, strict=True)}}
    converted = to_contract(state, "test.safetensors", {"lora_unet_single_blocks_1_linear1": 3 * HIDDEN + MLP})
    got = deltas(converted)
    assert set(got) == {"lora_unet_double_blocks_0_img_attn_qkv", "lora_unet_single_blocks_1_linear1"}
    expected = torch.cat([bq @ aq * 0.5, torch.zeros(HIDDEN, HIDDEN), bv @ av * 2.0])
    assert_near(got["lora_unet_double_blocks_0_img_attn_qkv"], expected, rtol=1e-5, atol=1e-5)
    assert converted["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"].shape == (5, HIDDEN)
    single = torch.cat([ssq @ sq, ssk @ sk, ssv @ sv, torch.zeros(MLP, HIDDEN)])
    assert_near(got["lora_unet_single_blocks_1_linear1"], single, rtol=1e-5, atol=1e-5)
    assert float(converted["lora_unet_single_blocks_1_linear1.alpha"]) == 6.0  # common scale 1 kept, ups as-is


def test_mixture_bfl_peft_and_text_encoder_forms_convert():
    gen = torch.Generator().manual_seed(1)
    (a, b), (c, d), (e, f) = _pair(gen, 2, HIDDEN, HIDDEN), _pair(gen, 2, HIDDEN + MLP, HIDDEN), _pair(gen, 2, 32, 32)
    state = {"lora_transformer_transformer_blocks_2_attn_add_k_proj.lora_down.weight": a,
             "lora_transformer_transformer_blocks_2_attn_add_k_proj.lora_up.weight": b,
             "lora_transformer_transformer_blocks_2_attn_add_k_proj.alpha": torch.tensor(4.0)}
    got = deltas(to_contract(state, "mixture.safetensors"))
    assert_near(got["lora_unet_double_blocks_2_txt_attn_qkv"],
                               torch.cat([torch.zeros(HIDDEN, HIDDEN), b @ a * 2.0, torch.zeros(HIDDEN, HIDDEN)]))
    state = {"diffusion_model.single_blocks.0.linear2.lora_A.weight": c,
             "diffusion_model.single_blocks.0.linear2.lora_B.weight": d,
             "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": e,
             "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight": f}
    got = deltas(to_contract(state, "comfy.safetensors"))
    assert set(got) == {"lora_unet_single_blocks_0_linear2", "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"}
    assert_near(got["lora_te1_text_model_encoder_layers_0_self_attn_q_proj"], f @ e)
    assert_near(got["lora_unet_single_blocks_0_linear2"], d @ c)


def test_final_modulation_halves_are_swapped_to_bfl_order():
    gen = torch.Generator().manual_seed(2)
    a, b = _pair(gen, 2, HIDDEN, 2 * HIDDEN)
    got = deltas(to_contract({"transformer.norm_out.linear.lora_A.weight": a,
                              "transformer.norm_out.linear.lora_B.weight": b}, "x"))
    delta = b @ a  # diffusers: (scale, shift); BFL: (shift, scale)
    assert_near(got["lora_unet_final_layer_adaLN_modulation_1"],
                               torch.cat([delta[HIDDEN:], delta[:HIDDEN]]))


def test_unknown_layout_is_refused_listing_keys():
    with pytest.raises(ModelLoadError) as info:
        to_contract({"model.weight": torch.ones(3, 3), "foo.bias": torch.zeros(3)}, "odd.safetensors")
    message = str(info.value)
    assert "odd.safetensors is in no LoRA layout" in message and "foo.bias, model.weight" in message
    assert "lora_A" in message and "\n" not in message


def test_entries_without_an_exact_lora_form_are_refused():
    gen = torch.Generator().manual_seed(3)
    a, b = _pair(gen, 2, HIDDEN, HIDDEN)
    p = "transformer.transformer_blocks.0.attn.to_q"
    for extra in ({f"{p}.lora_magnitude_vector": torch.ones(HIDDEN)},  # DoRA
                  {"transformer.pos_embed.proj.lora_A.weight": a, "transformer.pos_embed.proj.lora_B.weight": b}):
        with pytest.raises(ModelLoadError, match=r"cannot be represented as sd-scripts' FLUX LoRA modules \(e.g. "
                                                 r"transformer\.(transformer_blocks|pos_embed)"):
            to_contract({f"{p}.lora_A.weight": a, f"{p}.lora_B.weight": b, **extra}, "dora.safetensors")


# --- files written by diffusers and peft (slow: the tiny FLUX on disk) ---------------------------------------------


def _peft_file(folder, out_dir, targets, seed):
    """A LoRA as diffusers' FLUX trainers save it: peft's adapter on FluxTransformer2DModel (r 2, lora_alpha 3,
    random A and B), FluxPipeline.save_lora_weights with the adapter metadata. Returns (file, expected BFL ΔW)."""
    import peft
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from library.models.flux_keys import diffusers_to_bfl

    base = FluxTransformer2DModel.from_pretrained(str(folder), subfolder="transformer").state_dict()
    transformer = FluxTransformer2DModel.from_pretrained(str(folder), subfolder="transformer")
    transformer.add_adapter(LoraConfig(r=2, lora_alpha=3, target_modules=targets))
    gen = torch.Generator().manual_seed(seed)
    plus = {k: v.clone() for k, v in base.items()}
    with torch.no_grad():
        for path, layer in transformer.named_modules():
            if isinstance(layer, peft.tuners.lora.Linear):
                for weights in (layer.lora_A["default"].weight, layer.lora_B["default"].weight):
                    weights.copy_(torch.randn(weights.shape, generator=gen) * 0.1)
                plus[f"{path}.weight"] += layer.get_delta_weight("default")
    FluxPipeline.save_lora_weights(out_dir, transformer_lora_layers=get_peft_model_state_dict(transformer),
                                   transformer_lora_adapter_metadata=transformer.peft_config["default"].to_dict())
    bfl_base, bfl_plus = diffusers_to_bfl(base), diffusers_to_bfl(plus)
    return out_dir / "pytorch_lora_weights.safetensors", {k: bfl_plus[k] - bfl_base[k] for k in bfl_base}


@pytest.mark.slow
def test_peft_file_converts_to_the_same_delta_on_every_base_weight(tmp_path, tiny_flux_files):
    from diffusers import FluxPipeline

    from library.networks.network import read_state_dict

    path, expected = _peft_file(tiny_flux_files["folder"], tmp_path, PEFT_TARGETS, seed=0)
    state, _ = read_state_dict(path)
    assert "transformer.transformer_blocks.0.attn.to_q.lora_A.weight" in state  # the real diffusers layout
    assert not any(k.endswith(".alpha") for k in state)  # scale only in the metadata
    assert FluxPipeline.lora_state_dict(str(path)).keys() == state.keys()  # diffusers reads it as its own
    got = deltas(to_contract(state, str(path), source=path))
    changed = {k for k, v in expected.items() if v.abs().max() > 0}
    assert {"lora_unet_" + k.removesuffix(".weight").replace(".", "_") for k in changed} == set(got)
    assert len(got) == 3 * 10 + 6 * 3 + 4  # every block layer, img_in, txt_in, final_layer linear + modulation
    for key in changed:
        name = "lora_unet_" + key.removesuffix(".weight").replace(".", "_")
        torch.testing.assert_close(got[name], expected[key], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
def test_sd_scripts_lora_through_diffusers_conversion_comes_back_exactly(tmp_path, tiny_flux_files):
    """Our double-block LoRA (alpha 3, rank 4) -> diffusers' own _convert_kohya_flux_lora_to_diffusers (the ai-toolkit
    layout, scale folded into A/B, q/k/v split) -> our converter: the same ΔW per module."""
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    from library.models.flux import FLUX
    from library.models.flux_keys import load_bfl_transformer
    from library.networks import keys, lora
    from library.util.safetensors_io import load_safetensors

    transformer = load_bfl_transformer(load_safetensors(tiny_flux_files["files"]["transformer"]))
    parts = FLUX.network_parts([keys.NetworkPart("unet", "lora_unet", transformer, True, lambda p: p,
                                                 blocks=FLUX.unet_target_blocks)], {"train_blocks": "double"})
    network = lora.create_network(transformer, None, dim=4, alpha=3, parts=parts,
                                  generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in network.named_parameters():
            if "lora_up" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
    ours = network.file_state_dict()
    foreign = _convert_kohya_flux_lora_to_diffusers({k: v.clone() for k, v in ours.items()})
    assert "transformer.transformer_blocks.0.attn.add_k_proj.lora_B.weight" in foreign
    got, want = deltas(to_contract(foreign, "ait.safetensors")), deltas(ours)
    assert set(got) == set(want) and len(got) == 3 * 10
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)


def _options(tiny_dataset, out, folder, **overrides):
    from tests.training.helpers import base_options

    opts = base_options(tiny_dataset, out, pretrained_model_name_or_path=str(folder),
                        network_module="networks.lora_flux", network_train_unet_only=True, guidance_scale=1.0,
                        timestep_sampling="shift", model_prediction_type="raw", max_train_steps=1,
                        t5xxl_max_token_length=32)
    opts.update(overrides)
    return {k: v for k, v in opts.items() if v is not None}


@pytest.fixture(scope="module")
def trainable_peft(tmp_path_factory, tiny_flux_files):
    """A PEFT file on layers our network trains (no final layer): attention, MLPs, modulation, img_in, txt_in."""
    targets = [t for t in PEFT_TARGETS if t not in ("norm_out.linear",)]
    out = tmp_path_factory.mktemp("peft")
    path, expected = _peft_file(tiny_flux_files["folder"], out, targets, seed=1)
    return path, {k: v for k, v in expected.items() if not k.startswith("final_layer.")}


def _prediction(model, seed=0):
    from library.models.family import Conditioning

    gen = torch.Generator().manual_seed(seed)
    noisy = torch.randn(1, 16, 8, 8, generator=gen)
    cond = Conditioning(torch.randn(1, 7, 32, generator=gen), torch.randn(1, 32, generator=gen), None)
    with torch.no_grad():
        return model.adapter.predict(model, noisy, torch.tensor([500.0]), cond, {})


@pytest.mark.slow
@pytest.mark.parametrize("how", ["dim_from_weights", "split_qkv"])
def test_a_run_from_a_peft_file_starts_from_its_delta(tmp_path, tiny_dataset, tiny_flux_files, trainable_peft, how):
    """The trainer's network on the tiny FLUX with network_weights = the PEFT file (sized from the file, or split_qkv
    at the file's rank with in_dims for img_in/txt_in): its prediction is the base transformer's plus that ΔW."""
    from library.config.load import config_from_values
    from library.training.lora_target import LoRATarget
    from library.training.setup import load_model

    path, expected = trainable_peft
    extra = ({"dim_from_weights": True} if how == "dim_from_weights" else
             {"network_dim": 2, "network_alpha": 3, "network_args": ["split_qkv=True", "in_dims=[2,0,0,0,2]"]})
    config = config_from_values(_options(tiny_dataset, tmp_path, tiny_flux_files["folder"],
                                         network_weights=str(path), **extra), "network")
    model = load_model(config)
    target = LoRATarget(config)
    target.attach(model, config)
    target.network.eval()
    if how == "split_qkv":
        assert type(target.network._modules["lora_unet_single_blocks_0_linear1"]).__name__ == "SplitLoRAModule"
    with_lora = _prediction(model)
    target.network.remove()
    base = _prediction(model)
    with torch.no_grad():
        state = model.unet.state_dict()
        for key, delta in expected.items():
            state[key] += delta
        model.unet.load_state_dict(state)
    merged = _prediction(model)
    assert (with_lora - base).abs().max() > 1e-3
    torch.testing.assert_close(with_lora, merged, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_training_continues_from_a_peft_file(tmp_path, tiny_dataset, tiny_flux_files, trainable_peft):
    from tests.training.helpers import read_lora, train

    path, expected = trainable_peft
    out = tmp_path / "out"
    opts = _options(tiny_dataset, out, tiny_flux_files["folder"], network_weights=str(path), dim_from_weights=True,
                    max_train_steps=2, learning_rate=1e-2)
    assert train(tmp_path, opts) == 0
    tensors, meta = read_lora(out / "lora.safetensors")
    names = {k.split(".")[0] for k in tensors}
    assert names == {"lora_unet_" + k.removesuffix(".weight").replace(".", "_")
                     for k, v in expected.items() if v.abs().max() > 0}
    assert tensors["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"].shape == (6, HIDDEN)
    assert meta["ss_base_model_version"] == "flux1"
