"""SDXL LoRA / LoCon / LoHa on the tiny SDXL: the sd-scripts key contract, diffusers interop, step 0,
continuing from files, family checks, LoRA+ and per-text-encoder lrs, block-wise ranks (issue 11).

The expected key names are derived here from the SGM single file's own tensor names (the module tree
sd-scripts trains SDXL on), not from library.networks.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import pytest
import torch
from lora_helpers import hand_delta, randomize_up_weights

from library.errors import ConfigError, ModelLoadError
from library.models.loading import load_base_model
from library.models.sdxl import sdxl_block_index
from library.models.sgm import to_sgm_single_file
from library.networks import keys
from library.networks.lora import create_network, network_from_weights
from library.training.lora_target import check_weights_family

EXPECTED = Path(__file__).parent / "expected"
SGM_UNET = "model.diffusion_model."
SGM_TE1 = "conditioner.embedders.0.transformer."
SGM_TE2 = "conditioner.embedders.1.model.transformer.resblocks."
_TRANSFORMER = re.compile(r"^(input_blocks\.\d+\.1|middle_block\.1|output_blocks\.\d+\.1)\.")
_RESNET = re.compile(
    r"^(input_blocks\.\d+\.0|middle_block\.[02]|output_blocks\.\d+\.0)\."
    r"(in_layers\.2|out_layers\.3|emb_layers\.1|skip_connection)$"
)
_SAMPLER = re.compile(r"^(input_blocks\.\d+\.0\.op|output_blocks\.\d+\.\d+\.conv)$")
_TE1_LAYER = re.compile(r"^text_model\.encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$")
#: OpenCLIP resblock tensors -> (HF CLIP module names, split of the weight's first dimension)
_TE2_LAYER = {
    "attn.in_proj_weight": (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), 3),
    "attn.out_proj.weight": (("self_attn.out_proj",), 1),
    "mlp.c_fc.weight": (("mlp.fc1",), 1),
    "mlp.c_proj.weight": (("mlp.fc2",), 1),
}


# --- the expected names, from the SGM file --------------------------------------------------------------
def _name(prefix: str, path: str) -> str:
    return f"{prefix}_{path.replace('.', '_')}"


def sd_scripts_modules(sgm: dict[str, torch.Tensor], conv: bool) -> dict[str, tuple[int, ...]]:
    """{LoRA module name: original weight shape} as sd-scripts names an SDXL LoRA (LoCon with ``conv``)."""
    out: dict[str, tuple[int, ...]] = {}
    unet = {
        k[len(SGM_UNET) : -len(".weight")]: v
        for k, v in sgm.items()
        if k.startswith(SGM_UNET) and k.endswith(".weight") and v.dim() >= 2
    }
    for path, weight in unet.items():
        block = _TRANSFORMER.match(path)
        in_transformer = block is not None and f"{block.group(1)}.proj_in" in unet
        if in_transformer or (conv and (_RESNET.match(path) or _SAMPLER.match(path))):
            out[_name("lora_unet", path)] = tuple(weight.shape)
    for key, weight in sgm.items():
        if key.startswith(SGM_TE1) and key.endswith(".weight") and _TE1_LAYER.match(key[len(SGM_TE1) : -7]):
            out[_name("lora_te1", key[len(SGM_TE1) : -7])] = tuple(weight.shape)
        if key.startswith(SGM_TE2):
            layer, _, rest = key[len(SGM_TE2) :].partition(".")
            if rest in _TE2_LAYER:
                names, split = _TE2_LAYER[rest]
                shape = (weight.shape[0] // split, weight.shape[1])
                for name in names:
                    out[_name("lora_te2", f"text_model.encoder.layers.{layer}.{name}")] = shape
    return out


def module_names(state_dict: dict) -> set[str]:
    return {key.split(".", 1)[0] for key in state_dict}


def pinned(*files: str) -> set[str]:
    return {n for f in files for n in (EXPECTED / f).read_text().split()}


# --- fixtures -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sdxl():
    """The built-in tiny SDXL (seed 0). Networks only hook forwards: tests remove what they apply."""
    return load_base_model("builtin:tiny-sdxl")


@pytest.fixture(scope="module")
def sgm_modules(sdxl) -> dict[str, dict[str, tuple[int, ...]]]:
    sgm = to_sgm_single_file(sdxl.parts)
    return {"lora": sd_scripts_modules(sgm, conv=False), "locon": sd_scripts_modules(sgm, conv=True)}


def sdxl_network(model, **kwargs):
    return create_network(
        model.unet, None, parts=keys.model_parts(model), block_layout=model.adapter.block_layout, **kwargs
    )


def unet_call(model, seed: int = 0) -> torch.Tensor:
    """The tiny SDXL UNet's output (2, 4, 16, 16) with text_embeds / time_ids."""
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, 4, 16, 16, generator=gen)
    states = torch.randn(2, 77, 80, generator=gen)
    added = {
        "text_embeds": torch.randn(2, 16, generator=gen),
        "time_ids": torch.tensor([[128.0, 128, 0, 0, 128, 128], [96, 128, 8, 0, 128, 128]]),
    }
    with torch.no_grad():
        return model.unet(latents, torch.tensor([10, 700]), states, added_cond_kwargs=added).sample


def text_outputs(model) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(300, 40000, (2, 77), generator=gen)
    ids[:, 0], ids[:, 20:] = 49406, 49407
    outs = []
    with torch.no_grad():
        for part in ("text_encoder_1", "text_encoder_2"):
            result = model.parts[part](ids, output_hidden_states=True)
            outs += [*result.hidden_states, result.last_hidden_state]
            if part == "text_encoder_2":
                outs.append(result.text_embeds)
    return outs


# --- 1. the key contract --------------------------------------------------------------------------------
def test_sdxl_lora_key_set_is_pinned_and_matches_sd_scripts(sdxl, sgm_modules):
    names = module_names(sdxl_network(sdxl, dim=4, alpha=1).state_dict())
    expected = pinned("tiny_sdxl_lora_modules.txt")
    assert names == expected
    assert names == set(sgm_modules["lora"])
    assert len(names) == 246
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in names
    assert "lora_te2_text_model_encoder_layers_4_mlp_fc2" in names


def test_sdxl_locon_key_set_is_pinned_and_matches_sd_scripts(sdxl, sgm_modules):
    sd = sdxl_network(sdxl, dim=4, alpha=1, conv_dim=2).state_dict()
    names = module_names(sd)
    assert names == pinned("tiny_sdxl_lora_modules.txt", "tiny_sdxl_locon_extra_modules.txt")
    assert names == set(sgm_modules["locon"])
    assert set(sd) == {n + s for n in names for s in keys.SUFFIXES}
    # 3x3 convs use conv_dim; Linear / 1x1 convs of the same blocks network_dim (sd-scripts)
    assert sd["lora_unet_input_blocks_4_0_in_layers_2.lora_down.weight"].shape == (2, 32, 3, 3)
    assert sd["lora_unet_input_blocks_4_0_skip_connection.lora_down.weight"].shape == (4, 32, 1, 1)
    assert sd["lora_unet_output_blocks_2_2_conv.lora_up.weight"].shape == (64, 2, 1, 1)
    assert sd["lora_unet_middle_block_2_emb_layers_1.lora_down.weight"].shape == (4, 128)


def test_sdxl_lora_shapes_match_the_sgm_weights(sdxl, sgm_modules):
    sd = sdxl_network(sdxl, dim=3, alpha=1, conv_dim=2).state_dict()
    for name, shape in sgm_modules["locon"].items():
        down, up = sd[name + keys.DOWN_SUFFIX], sd[name + keys.UP_SUFFIX]
        assert (up.shape[0], *down.shape[1:]) == shape, name


# --- 2. diffusers loads our file with the same effect ---------------------------------------------------
class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _load_lora_logged(pipe, path) -> list[str]:
    from diffusers.utils import logging as diffusers_logging

    handler = _Collect()
    loggers = [logging.getLogger(n) for n in ("diffusers", "transformers", "peft")]
    old_level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_info()
    for lg in loggers:
        lg.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe.load_lora_weights(str(path))
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
        diffusers_logging.set_verbosity(old_level)
    return handler.messages + [str(w.message) for w in caught]


def _plain_weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters by the unwrapped module path (peft's ``….base_layer.weight`` -> ``….weight``), no LoRA."""
    return {
        k.replace(".base_layer.", "."): v.detach().clone()
        for k, v in module.state_dict().items()
        if "lora_" not in k
    }


#: diffusers module path -> the sd-scripts name of the same layer, written out by hand
INDEPENDENT_PAIRS = {
    "unet": {
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q": "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
        "up_blocks.1.attentions.2.proj_out": "lora_unet_output_blocks_5_1_proj_out",
        "mid_block.attentions.0.transformer_blocks.1.ff.net.2": "lora_unet_middle_block_1_transformer_blocks_1_ff_net_2",
        "down_blocks.1.resnets.0.conv1": "lora_unet_input_blocks_4_0_in_layers_2",
        "mid_block.resnets.1.conv2": "lora_unet_middle_block_2_out_layers_3",
        "up_blocks.0.upsamplers.0.conv": "lora_unet_output_blocks_2_2_conv",
        "down_blocks.0.downsamplers.0.conv": "lora_unet_input_blocks_3_0_op",
        "up_blocks.2.resnets.1.time_emb_proj": "lora_unet_output_blocks_7_0_emb_layers_1",
    },
    "text_encoder": {
        "text_model.encoder.layers.0.self_attn.q_proj": "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    },
    "text_encoder_2": {"text_model.encoder.layers.2.mlp.fc1": "lora_te2_text_model_encoder_layers_2_mlp_fc1"},
}


@pytest.mark.slow  # a training run: longer than the fast tier's limit
def test_diffusers_loads_our_sdxl_locon_with_the_same_effect(tiny_sdxl_files, tmp_path):
    pytest.importorskip("peft", reason="diffusers needs peft for load_lora_weights")
    from diffusers import StableDiffusionXLPipeline
    from peft.tuners.tuners_utils import BaseTunerLayer

    model = load_base_model(str(tiny_sdxl_files["folder"]))
    network = sdxl_network(model, dim=4, alpha=2, conv_dim=3, conv_alpha=1.5)
    randomize_up_weights(network, std=0.1)
    path = network.save(tmp_path / "sdxl_lora.safetensors", metadata={"ss_network_module": "networks.lora"})
    sd = network.state_dict()

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_files["folder"])
    parts = {"unet": pipe.unet, "text_encoder": pipe.text_encoder, "text_encoder_2": pipe.text_encoder_2}
    before = {name: _plain_weights(m) for name, m in parts.items()}
    messages = _load_lora_logged(pipe, path)
    assert "Non-diffusers checkpoint detected." in messages  # went through diffusers' kohya converter
    bad = [
        m for m in messages if any(w in m.lower() for w in ("unexpected", "missing", "not loaded", "error"))
    ]
    assert bad == []
    ours = {
        "unet": network.unet_names,
        "text_encoder": network.part_names["text_encoder_1"],
        "text_encoder_2": network.part_names["text_encoder_2"],
    }
    for name, module in parts.items():
        assert sum(isinstance(m, BaseTunerLayer) for m in module.modules()) == len(ours[name]), name

    pipe.fuse_lora()
    our_parts = {"unet": "unet", "text_encoder": "text_encoder_1", "text_encoder_2": "text_encoder_2"}
    targets = {p.name: p.targets(include_conv_blocks=True) for p in keys.model_parts(model)}
    for name, module in parts.items():
        after = _plain_weights(module)
        changed = {k.removesuffix(".weight") for k in after if not torch.equal(after[k], before[name][k])}
        by_path = {t.module_path: t.lora_name for t in targets[our_parts[name]]}
        assert changed == set(by_path), name  # exactly the LoRA'd weights changed …
        by_hand = {_path_in(after, path): lora for path, lora in INDEPENDENT_PAIRS[name].items()}
        assert by_hand.items() <= by_path.items(), name
        for path, lora_name in by_path.items():  # … each by up·down·alpha/rank
            key = f"{path}.weight"
            delta = hand_delta(
                sd[lora_name + keys.DOWN_SUFFIX],
                sd[lora_name + keys.UP_SUFFIX],
                float(sd[lora_name + keys.ALPHA_SUFFIX]),
            ).reshape(after[key].shape)
            torch.testing.assert_close((after[key] - before[name][key]).double(), delta, atol=1e-6, rtol=0)


def _path_in(weights: dict, path: str) -> str:
    """``path`` as the module names it: transformers 5's CLIPTextModel has no ``text_model.`` level."""
    return path if f"{path}.weight" in weights else path.removeprefix("text_model.")


# --- 3. step 0 reproduces the base ----------------------------------------------------------------------
@pytest.mark.parametrize("conv_dim", [None, 2])
def test_fresh_sdxl_network_reproduces_the_base_exactly(sdxl, conv_dim):
    base_unet, base_text = unet_call(sdxl), text_outputs(sdxl)
    network = sdxl_network(sdxl, dim=4, alpha=1, conv_dim=conv_dim)
    network.apply_to()
    try:
        got_unet, got_text = unet_call(sdxl), text_outputs(sdxl)
    finally:
        network.remove()
    assert torch.equal(got_unet, base_unet)
    assert len(got_text) == len(base_text)
    for got, base in zip(got_text, base_text, strict=True):
        assert torch.equal(got, base)
    # and a non-zero LoRA does change all three parts
    randomize_up_weights(network, std=0.1)
    network.apply_to()
    try:
        changed_unet, changed_text = unet_call(sdxl), text_outputs(sdxl)
    finally:
        network.remove()
    assert not torch.equal(changed_unet, base_unet)
    assert not torch.equal(changed_text[5], base_text[5])  # te1 last hidden state
    assert not torch.equal(changed_text[-2], base_text[-2])  # te2 last hidden state
    assert not torch.equal(changed_text[-1], base_text[-1])  # te2 pooled projection
    assert torch.equal(unet_call(sdxl), base_unet)  # removed again


# --- 4. continuing from sd-scripts files; family checks -------------------------------------------------
def sd_scripts_file(modules: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """A LoRA as sd-scripts writes it: random down/up of the right shapes, ranks 2-4, alphas."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for i, (name, shape) in enumerate(sorted(modules.items())):
        rank = 2 + i % 3
        out_ch, in_ch, *kernel = shape
        out[name + keys.DOWN_SUFFIX] = torch.randn(rank, in_ch, *kernel, generator=gen)
        out[name + keys.UP_SUFFIX] = torch.randn(out_ch, rank, *([1, 1] if kernel else []), generator=gen)
        out[name + keys.ALPHA_SUFFIX] = torch.tensor(float(rank) / 2)
    return out


def test_network_weights_continue_from_an_sd_scripts_sdxl_locon(sdxl, sgm_modules, tmp_path):
    from safetensors.torch import save_file

    state = sd_scripts_file(sgm_modules["locon"])
    path = tmp_path / "sd_scripts_sdxl.safetensors"
    save_file(
        state,
        str(path),
        metadata={"ss_network_module": "networks.lora", "ss_base_model_version": "sdxl_base_v1-0"},
    )
    check_weights_family(path, sdxl)  # same family: no error
    network, report = network_from_weights(path, sdxl.unet, None, parts=keys.model_parts(sdxl))
    assert report.missing == [] and report.unexpected == [] and report.alpha_defaulted == []
    assert set(report.loaded) == set(sgm_modules["locon"])
    own = network.state_dict()
    assert set(own) == set(state)
    for key, value in state.items():
        assert torch.equal(own[key], value), key
    assert set(network.part_names) == {"text_encoder_1", "text_encoder_2", "unet"}


@pytest.fixture(scope="module")
def sd1():
    return load_base_model("builtin:tiny")


def test_sd1_lora_on_sdxl_and_sdxl_lora_on_sd1_are_clear_errors(sdxl, sd1, sgm_modules, tmp_path):
    sd1_path = create_network(sd1.unet, sd1.text_encoder, dim=4).save(tmp_path / "sd1.safetensors")
    sdxl_path = tmp_path / "sdxl.safetensors"
    sdxl_network(sdxl, dim=4).save(sdxl_path)
    with pytest.raises(ModelLoadError, match=r"(?s)sd1.*sdxl"):
        check_weights_family(sd1_path, sdxl)
    with pytest.raises(ModelLoadError, match=r"(?s)sdxl.*sd1"):
        check_weights_family(sdxl_path, sd1)
    # the loaders themselves refuse too, instead of loading nothing
    with pytest.raises(ModelLoadError, match="another model family"):
        network_from_weights(sd1_path, sdxl.unet, None, parts=keys.model_parts(sdxl))
    with pytest.raises(ModelLoadError, match="another model family"):
        network_from_weights(sdxl_path, sd1.unet, None, parts=keys.model_parts(sd1))


# --- 5. LyCORIS LoHa; LoRA+ and per-encoder lrs ---------------------------------------------------------
def test_loha_on_sdxl_uses_sd_scripts_names_and_reloads(sdxl, sgm_modules, tmp_path):
    pytest.importorskip("lycoris")
    from library.networks.lycoris_bridge import create_lycoris_network, lycoris_network_from_weights

    parts = keys.model_parts(sdxl)
    network = create_lycoris_network(sdxl.unet, None, dim=4, alpha=1, algo="loha", parts=parts)
    sd = network.state_dict()
    names = module_names(sd)
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.hada_w1_a" in sd
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.hada_w2_b" in sd
    assert "lora_te2_text_model_encoder_layers_4_mlp_fc1.hada_w1_b" in sd
    assert all(n.startswith(("lora_unet_", "lora_te1_text_model_", "lora_te2_text_model_")) for n in names)
    diffusers_words = (
        "down_blocks",
        "mid_block",
        "up_blocks",
        "attentions",
        "resnets",
        "conv_in",
        "time_embedding",
    )
    assert not [n for n in names if any(w in n for w in diffusers_words)]
    # every sd-scripts LoRA/LoCon module is there under the same name; the "full" preset adds the
    # conv_in / conv_out / embedding layers, by their SGM names too (sd-scripts' SDXL UNet tree)
    assert set(sgm_modules["locon"]) <= names
    sgm_extras = {
        "input_blocks_0_0",
        "time_embed_0",
        "time_embed_2",
        "label_emb_0_0",
        "label_emb_0_2",
        "out_2",
    }
    assert names - set(sgm_modules["locon"]) == {f"lora_unet_{n}" for n in sgm_extras}
    assert {n for n in names if keys.part_of_name(n, parts).name == "text_encoder_2"} == {
        n for n in sgm_modules["lora"] if n.startswith("lora_te2_")
    }

    with torch.no_grad():
        for p in network.parameters():
            p.add_(0.01)
    path = network.save(tmp_path / "loha.safetensors")
    loaded, report = lycoris_network_from_weights(path, sdxl.unet, None, parts=parts)
    assert report.missing == [] and report.unexpected == []
    assert set(report.loaded) == names
    reloaded = loaded.state_dict()
    assert set(reloaded) == set(sd)
    for key, value in network.state_dict().items():
        assert torch.equal(reloaded[key], value), key


def test_sdxl_param_groups_per_text_encoder_and_loraplus(sdxl):
    network = sdxl_network(sdxl, dim=4)
    groups = network.param_groups(
        1e-4, [2e-5, 3e-5], 1e-3, loraplus_unet_ratio=16, loraplus_text_encoder_ratio=4
    )
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs == pytest.approx(
        {
            "text_encoder_1": 2e-5,
            "text_encoder_1_plus": 8e-5,
            "text_encoder_2": 3e-5,
            "text_encoder_2_plus": 1.2e-4,
            "unet": 1e-4,
            "unet_plus": 1.6e-3,
        }
    )
    by_name = {g["name"]: {id(p) for p in g["params"]} for g in groups}
    for part in ("text_encoder_1", "text_encoder_2", "unet"):
        modules = network.part_modules(part)
        assert by_name[f"{part}_plus"] == {id(m.lora_up.weight) for m in modules}
        assert by_name[part] == {id(m.lora_down.weight) for m in modules}
    # one value applies to both encoders; a None lr falls back to the default
    single = {g["name"]: g["lr"] for g in network.param_groups(None, 5e-5, 1e-3)}
    assert single == {"text_encoder_1": 5e-5, "text_encoder_2": 5e-5, "unet": 1e-3}
    # lr 0 freezes one encoder only
    frozen = {g["name"] for g in network.param_groups(1e-4, [0, 3e-5], 1e-3)}
    assert frozen == {"text_encoder_2", "unet"}
    assert not any(p.requires_grad for m in network.part_modules("text_encoder_1") for p in m.parameters())


def test_two_text_encoder_lrs_on_sd1_is_a_config_error(sd1):
    network = create_network(sd1.unet, sd1.text_encoder, parts=keys.model_parts(sd1), dim=4)
    with pytest.raises(ConfigError, match=r"2 values.*1 text encoder"):
        network.param_groups(1e-4, [2e-5, 3e-5], 1e-3)


# --- 6. block-wise ranks --------------------------------------------------------------------------------
def test_sdxl_block_dims_has_23_values(sdxl):
    dims = [0 if b in (5, 16) else 1 + b % 4 for b in range(23)]
    alphas = [0.5 * (1 + b % 3) for b in range(23)]
    network = sdxl_network(
        sdxl, dim=8, alpha=1, block_dims=",".join(map(str, dims)), block_alphas=",".join(map(str, alphas))
    )
    seen_blocks = set()
    for module in network.unet_modules:
        block = sdxl_block_index(module.lora_name)
        assert block is not None, module.lora_name
        seen_blocks.add(block)
        assert module.lora_dim == dims[block], module.lora_name
        assert float(module.alpha) == alphas[block], module.lora_name
    # the blocks with transformers: IN04/05, IN07/08, M01, OUT00-05 (5, 16 set to rank 0: no module)
    assert seen_blocks == {6, 8, 9, 11, 13, 14, 15, 17, 18}
    assert all(m.lora_dim == 8 for m in network.text_encoder_modules)


def test_sdxl_conv_block_dims(sdxl):
    conv_dims = [1 + b % 3 for b in range(23)]
    network = sdxl_network(sdxl, dim=4, conv_dim=2, conv_block_dims=",".join(map(str, conv_dims)))
    convs = [m for m in network.unet_modules if m.is_conv and m.lora_down.kernel_size != (1, 1)]
    assert convs
    for module in convs:
        assert module.lora_dim == conv_dims[sdxl_block_index(module.lora_name)], module.lora_name


@pytest.mark.parametrize("key", ["block_dims", "conv_block_dims"])
def test_sdxl_block_dims_with_25_values_names_23(sdxl, key):
    with pytest.raises(ConfigError, match=rf"{key} has 25 values; it needs 23"):
        sdxl_network(sdxl, dim=4, conv_dim=2, **{key: ",".join(["4"] * 25)})
