"""networks.hypernetwork: AUTOMATIC1111's hypernetworks (layout, math, files as the webui and ComfyUI read them)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from library.config.load import parse_config
from library.errors import ConfigError, ModelLoadError
from library.networks import get_network_type, network_module_names
from library.networks.hypernetwork import (
    FILE_FIELDS,
    HypernetworkModule,
    create_hypernetwork,
    hypernetwork_from_weights,
    parse_hypernetwork_args,
    read_hypernetwork,
    structure_from_args,
)


# --- a tiny stand-in for a UNet: one self-attention (width 16) and one cross-attention (context 8) -----------
class _Attention(nn.Module):
    def __init__(self, width: int, context: int):
        super().__init__()
        self.to_q, self.to_k, self.to_v = nn.Linear(width, width), nn.Linear(context, width), nn.Linear(context, width)


class FakeUNet(nn.Module):
    def __init__(self):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.block = nn.Module()
            self.block.attn1, self.block.attn2 = _Attention(16, 16), _Attention(16, 8)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        a1, a2 = self.block.attn1, self.block.attn2
        return a1.to_k(x) * a1.to_v(x) + a2.to_k(context).mean(1, keepdim=True) * a2.to_v(context).mean(1, keepdim=True)


def fake_inputs():
    gen = torch.Generator().manual_seed(3)
    return torch.randn(2, 5, 16, generator=gen), torch.randn(2, 7, 8, generator=gen)


def make(unet, *args: str, seed: int = 0, **kwargs):
    return create_hypernetwork(unet, generator=torch.Generator().manual_seed(seed),
                               **parse_hypernetwork_args(list(args)), **kwargs)


# --- an independent reading of the webui's hypernetwork.py: how it builds a module and loads a file ----------
def webui_sequential(dim: int, fields: dict) -> nn.Sequential:
    """The layers the webui's HypernetworkModule builds for ``fields`` (read as its Hypernetwork.load reads them)."""
    ls = fields.get("layer_structure", [1, 2, 1])
    act = fields.get("activation_func", None)
    drops = fields["dropout_structure"]
    acts = {"linear": nn.Identity, "relu": nn.ReLU, "swish": nn.Hardswish, "tanh": nn.Tanh, "elu": nn.ELU}
    layers = []
    for i in range(len(ls) - 1):
        layers.append(nn.Linear(int(dim * ls[i]), int(dim * ls[i + 1])))
        last = i >= len(ls) - 2
        if act not in (None, "linear") and not (last and not fields.get("activate_output", True)):
            layers.append(acts[act]())
        if fields.get("is_layer_norm", False):
            layers.append(nn.LayerNorm(int(dim * ls[i + 1])))
        if drops[i + 1] > 0:
            layers.append(nn.Dropout(drops[i + 1]))
    return nn.Sequential(*layers)


def webui_load(path) -> dict[int, list[nn.Sequential]]:
    """What the webui's loader does with a file, with weights_only as ComfyUI reads it: every int key is a size,
    ``sd[0]``/``sd[1]`` load strictly into the k/v module."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    out = {}
    for size, sd in state.items():
        if type(size) is int:
            out[size] = []
            for index in (0, 1):
                module = nn.Module()
                module.linear = webui_sequential(size, state)
                module.load_state_dict(sd[index])  # strict: every key and shape as the webui's module has it
                out[size].append(module.linear.eval())
    return out


def comfyui_sequential(sd: dict, fields: dict) -> nn.Sequential:
    """ComfyUI's HypernetworkLoader reading of one module: Linear layers from the ``.weight`` keys in order."""
    names = [k[: -len(".weight")] for k in sd if k.endswith(".weight")]
    layers, i = [], 0
    acts = {"linear": nn.Identity, "relu": nn.ReLU, "swish": nn.Hardswish, "tanh": nn.Tanh}
    while i < len(names):
        w, b = sd[names[i] + ".weight"], sd[names[i] + ".bias"]
        lin = nn.Linear(w.shape[1], w.shape[0])
        lin.load_state_dict({"weight": w, "bias": b})
        layers.append(lin)
        if fields["activation_func"] != "linear" and (i != len(names) - 1 or fields["activate_output"]):
            layers.append(acts[fields["activation_func"]]())
        if fields["is_layer_norm"]:
            i += 1
            ln = nn.LayerNorm(sd[names[i] + ".weight"].shape[0])
            ln.load_state_dict({"weight": sd[names[i] + ".weight"], "bias": sd[names[i] + ".bias"]})
            layers.append(ln)
        i += 1
    return nn.Sequential(*layers).eval()


# --- registry and options -------------------------------------------------------------------------------------
def test_registered_with_its_network_args():
    assert "networks.hypernetwork" in network_module_names()
    entry = get_network_type("networks.hypernetwork")
    assert {"layer_structure", "activation_func", "add_layer_norm", "use_dropout", "dropout_structure",
            "weight_initialization", "activate_output", "last_layer_dropout"} <= set(entry.known_args)
    assert (entry.lora_keys, entry.trains_text_encoder, entry.default_save_format) == (False, False, "pt")


@pytest.mark.parametrize("args,message", [
    (["layer_structure=2,2,1"], "must start and end with 1"),
    (["layer_structure=1,a,1"], "comma-separated numbers"),
    (["activation_func=gelux"], "webui's activations: linear, relu, leakyrelu, elu, swish"),
    (["weight_initialization=Uniform"], "Normal, XavierUniform, XavierNormal, KaimingUniform, KaimingNormal"),
    (["dropout_structure=0,0.3"], "does not fit layer_structure=1,2,1.*e.g. 0,0.3,0"),
    (["dropout_structure=0,1.5,0"], "one probability in \\[0, 1\\)"),
    (["use_dropout=false", "dropout_structure=0,0.3,0"], "contradicts"),
    (["enable_sizes=768,x"], "comma-separated widths"),
    (["layer_struct=1,2,1"], "Did you mean 'layer_structure'"),
])
def test_bad_network_args_are_named(args, message):
    with pytest.raises(ConfigError, match=message):
        parse_hypernetwork_args(args)


def test_bad_network_args_fail_at_config_parse(tmp_path):
    argv = ["--pretrained_model_name_or_path", "builtin:tiny", "--train_data_dir", str(tmp_path),
            "--output_dir", str(tmp_path / "o"), "--network_module", "networks.hypernetwork",
            "--network_args", "layer_structure=1,2,2"]
    with pytest.raises(ConfigError, match="layer_structure=1,2,2 is invalid"):
        parse_config(argv, "network")


@pytest.mark.parametrize("args,drops", [
    ([], (0, 0, 0)),
    (["use_dropout=true"], (0, 0.3, 0)),  # the webui's legacy rule; last_layer_dropout defaults to on there
    (["use_dropout=true", "last_layer_dropout=false"], (0, 0, 0)),
    (["use_dropout=true", "layer_structure=1,2,2,1", "last_layer_dropout=false"], (0, 0.3, 0, 0)),
    (["dropout_structure=0,0.1,0.2,0", "layer_structure=1,2,2,1"], (0, 0.1, 0.2, 0)),
])
def test_dropout_structure_as_the_webui_derives_it(args, drops):
    parsed = parse_hypernetwork_args(args)
    structure = structure_from_args(**parsed)
    assert structure.dropout_structure == pytest.approx(drops)
    assert structure.use_dropout == any(drops)


# --- the module: layer indices, initialisation, math ----------------------------------------------------------
@pytest.mark.parametrize("args,keys", [
    ([], ["linear.0", "linear.1"]),
    (["activation_func=relu"], ["linear.0", "linear.2"]),  # Linear ReLU Linear
    (["activation_func=relu", "activate_output=true"], ["linear.0", "linear.2"]),  # … Linear ReLU
    (["activation_func=relu", "add_layer_norm=true", "dropout_structure=0,0.3,0"],
     ["linear.0", "linear.2", "linear.4", "linear.5"]),  # Linear ReLU LN Drop Linear LN
    (["layer_structure=1,2,2,1", "activation_func=swish", "activate_output=true", "use_dropout=true"],
     ["linear.0", "linear.3", "linear.6"]),  # Linear Act Drop Linear Act Drop Linear Act
    (["layer_structure=1,1.5,1", "add_layer_norm=true"], ["linear.0", "linear.1", "linear.2", "linear.3"]),
])
def test_module_keys_are_the_webuis(args, keys):
    structure = structure_from_args(**parse_hypernetwork_args(args))
    module = HypernetworkModule(8, structure)
    assert list(module.state_dict()) == [f"{k}.{p}" for k in keys for p in ("weight", "bias")]
    fields = structure.file_fields()
    webui = nn.Module()
    webui.linear = webui_sequential(8, fields)
    webui.load_state_dict(module.state_dict())  # strict: the webui's module has exactly these keys and shapes
    assert module.linear[0].weight.shape == (int(8 * structure.layer_structure[1]), 8)


def test_normal_initialisation_is_the_webuis_and_seeded():
    structure = structure_from_args(add_layer_norm=True)
    a = HypernetworkModule(64, structure, torch.Generator().manual_seed(5))
    b = HypernetworkModule(64, structure, torch.Generator().manual_seed(5))
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
        if name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name
        else:  # Linear and LayerNorm weights alike: N(0, 0.01), as the webui (so not zero: step 0 != base)
            assert 0.007 < p.std().item() < 0.013 and abs(p.mean().item()) < 0.004, name


@pytest.mark.parametrize("init,std", [("XavierNormal", (2 / (64 + 128)) ** 0.5),
                                      ("KaimingNormal", (2 / 64) ** 0.5)])
def test_other_initialisations(init, std):
    module = HypernetworkModule(64, structure_from_args(weight_initialization=init), torch.Generator().manual_seed(1))
    first = module.linear[0].weight  # (128, 64): fan_in 64, fan_out 128
    assert first.std().item() == pytest.approx(std, rel=0.08)
    assert torch.count_nonzero(module.linear[0].bias) == 0


def test_forward_is_x_plus_mlp_times_multiplier():
    structure = structure_from_args(activation_func="tanh", layer_structure=(1, 2, 1),
                                    weight_initialization="XavierNormal")
    module = HypernetworkModule(8, structure, torch.Generator().manual_seed(2)).eval()
    x = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(4))
    w1, b1, w2, b2 = (t.double() for t in module.state_dict().values())
    f = torch.tanh(x.double() @ w1.T + b1) @ w2.T + b2
    module.multiplier = 0.6
    assert torch.allclose(module(x).double(), x.double() + 0.6 * f, atol=1e-6)
    module.multiplier = 0.0
    assert torch.equal(module(x), x)


# --- the network over a (fake) UNet: hooks, multiplier, files -------------------------------------------------
def test_hooks_k_and_v_of_the_attention_whose_input_has_the_size():
    unet = FakeUNet()
    x, ctx = fake_inputs()
    base = unet(x, ctx)
    net = make(unet, "weight_initialization=XavierNormal")
    assert net.sizes == (8,)  # the cross-attention context width by default
    net.apply_to()
    hk, hv = net.layers["8"]
    a1, a2 = unet.block.attn1, unet.block.attn2
    expected = a1.to_k(x) * a1.to_v(x) + (nn.functional.linear(hk(ctx), a2.to_k.weight, a2.to_k.bias).mean(1, True)
                                          * nn.functional.linear(hv(ctx), a2.to_v.weight, a2.to_v.bias).mean(1, True))
    assert torch.equal(unet(x, ctx), expected) and not torch.allclose(expected, base)
    net.set_multiplier(0.0)
    assert torch.equal(unet(x, ctx), base)
    net.remove()
    net.set_multiplier(1.0)
    assert torch.equal(unet(x, ctx), base)


def test_enable_sizes_reaches_self_attention_and_unknown_sizes_are_refused():
    unet = FakeUNet()
    net = make(unet, "enable_sizes=8,16")
    assert net.sizes == (8, 16) and net.info["hooked_layers"] == 4
    with pytest.raises(ConfigError, match="enable_sizes 768: no attention layer.*Widths here: 8, 16"):
        make(unet, "enable_sizes=768")
    with pytest.raises(ConfigError, match="FLUX"):
        create_hypernetwork(nn.Sequential(nn.Linear(4, 4)))


def test_pt_file_has_the_webui_layout_and_loads_weights_only(tmp_path):
    unet = FakeUNet()
    net = make(unet, "activation_func=relu", "add_layer_norm=true", "dropout_structure=0,0.3,0",
               "weight_initialization=KaimingUniform")
    path = net.save(tmp_path / "hn.pt", metadata={"ss_steps": "12", "ss_output_name": "mine",
                                                   "ss_sd_model_name": "base.safetensors"})
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert set(state) == {8, *FILE_FIELDS}
    assert isinstance(state[8], tuple) and len(state[8]) == 2
    assert list(state[8][0]) == [f"linear.{i}.{p}" for i in (0, 2, 4, 5) for p in ("weight", "bias")]
    assert {k: state[k] for k in FILE_FIELDS} == {
        "step": 12, "name": "mine", "layer_structure": [1.0, 2.0, 1.0], "activation_func": "relu",
        "is_layer_norm": True, "weight_initialization": "KaimingUniform", "sd_checkpoint": None,
        "sd_checkpoint_name": "base.safetensors", "activate_output": False, "use_dropout": True,
        "dropout_structure": [0.0, 0.3, 0.0], "last_layer_dropout": True, "optional_info": None}
    x = torch.randn(2, 7, 8, generator=torch.Generator().manual_seed(0))
    net.eval()
    webui = webui_load(path)
    for ours, theirs in zip(net.layers["8"], webui[8], strict=True):
        assert torch.equal(ours(x), x + theirs(x))


def test_comfyui_reads_the_pt_file_alike(tmp_path):
    """ComfyUI's loader (weights-only) gives the same MLP. Not with add_layer_norm and a non-linear activation:
    ComfyUI counts the LayerNorms as layers and so also activates the last Linear, unlike the webui."""
    net = make(FakeUNet(), "layer_structure=1,2,2,1", "activation_func=swish", "weight_initialization=XavierNormal")
    state = torch.load(net.save(tmp_path / "hn.pt"), map_location="cpu", weights_only=True)
    x = torch.randn(2, 7, 8, generator=torch.Generator().manual_seed(0))
    for ours, sd in zip(net.eval().layers["8"], state[8], strict=True):
        assert torch.equal(ours(x), x + comfyui_sequential(sd, state)(x))


def test_safetensors_holds_the_same_state(tmp_path):
    unet = FakeUNet()
    net = make(unet, "layer_structure=1,1.5,1", "activation_func=elu")
    pt = torch.load(net.save(tmp_path / "a.pt"), weights_only=True)
    path = net.save(tmp_path / "a.safetensors", metadata={"modelspec.architecture": "stable-diffusion-v1/lora"})
    from library.util.safetensors_io import read_metadata

    meta = read_metadata(path)
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/hypernetwork"
    assert json.loads(meta["hypernetwork.layer_structure"]) == [1.0, 1.5, 1.0]
    state, _ = read_hypernetwork(path)
    assert set(state) == set(pt) and state["activation_func"] == "elu"
    for a, b in zip(state[8], pt[8], strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_reload_gives_the_same_outputs_and_checks_the_structure(tmp_path):
    unet = FakeUNet()
    x, ctx = fake_inputs()
    net = make(unet, "activation_func=tanh", "weight_initialization=XavierUniform", seed=3)
    net.apply_to()
    expected = unet(x, ctx)
    path = net.save(tmp_path / "h.pt", metadata={"ss_steps": "7"})
    net.remove()
    again, report = hypernetwork_from_weights(path, unet)
    again.apply_to()
    assert torch.equal(unet(x, ctx), expected) and report.loaded == ["8"]
    again.remove()
    fresh = make(unet, "activation_func=tanh", "weight_initialization=XavierUniform", seed=9)
    fresh.load_weights(path)
    assert fresh.step_offset == 7
    assert torch.load(fresh.save(tmp_path / "h2.pt", metadata={"ss_steps": "3"}), weights_only=True)["step"] == 10
    with pytest.raises(ModelLoadError, match="another structure.*file layer_structure=1,2,1 activation_func=tanh.*"
                                             "network_args layer_structure=1,2,1 activation_func=relu"):
        make(unet, "activation_func=relu").load_weights(path)


class _NotATensor:
    pass


def test_bad_files_get_clear_errors(tmp_path):
    unet = FakeUNet()
    pickled = tmp_path / "evil.pt"
    torch.save({8: ({}, {}), "optional_info": _NotATensor()}, pickled)
    with pytest.raises(ModelLoadError, match="Refused to load .*evil.pt as a hypernetwork.*weights-only"):
        hypernetwork_from_weights(pickled, unet)
    lora = tmp_path / "lora.pt"
    torch.save({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, lora)
    with pytest.raises(ModelLoadError, match="not a webui hypernetwork.*networks.lora"):
        hypernetwork_from_weights(lora, unet)
    big = tmp_path / "sd2.pt"
    make(FakeUNet(), "enable_sizes=16").save(big)
    state = torch.load(big, weights_only=True)
    state[1024] = state.pop(16)
    torch.save(state, big)
    with pytest.raises(ModelLoadError, match="width 1024, which no attention layer"):
        hypernetwork_from_weights(big, unet)
    with pytest.raises(ModelLoadError, match="does not exist"):
        hypernetwork_from_weights(tmp_path / "none.pt", unet)
    from safetensors.torch import save_file

    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, tmp_path / "lora.safetensors")
    with pytest.raises(ModelLoadError, match="not a hypernetwork safetensors file.*'lora_unet_x.lora_down.weight'"):
        hypernetwork_from_weights(tmp_path / "lora.safetensors", unet)


def test_old_webui_names_and_missing_fields_are_read(tmp_path):
    """The first webui files: linear1/linear2 keys, no dropout_structure, no activate_output (the webui's
    default for a missing one: on)."""
    unet = FakeUNet()
    gen = torch.Generator().manual_seed(0)
    sd = {"linear1.weight": torch.randn(16, 8, generator=gen), "linear1.bias": torch.zeros(16),
          "linear2.weight": torch.randn(8, 16, generator=gen), "linear2.bias": torch.zeros(8)}
    path = tmp_path / "old.pt"
    torch.save({8: (sd, copy.deepcopy(sd)), "name": "old"}, path)
    net, _ = hypernetwork_from_weights(path, unet)
    assert net.structure.layer_structure == (1, 2, 1) and net.structure.activate_output
    assert torch.equal(net.layers["8"][0].linear[0].weight, sd["linear1.weight"])


# --- trainings and the real tiny models (slow) -----------------------------------------------------------------
def _train_capturing(tmp_path, options: dict, trainer_argv: list[str] | None = None):
    """Run train_network in-process; returns (exit code, the LoRATarget that trained)."""
    import toml
    from accelerate.state import AcceleratorState

    from library.cli import run_trainer
    from library.training.lora_target import LoRATarget

    captured = {}

    def make_target(config):
        captured["target"] = LoRATarget(config)
        return captured["target"]

    AcceleratorState._reset_state(True)
    path = tmp_path / f"config_{len(list(tmp_path.glob('config_*.toml')))}.toml"
    path.write_text(toml.dumps(options), encoding="utf-8")
    return run_trainer("network", make_target, ["--config_file", str(path), *(trainer_argv or [])]), captured["target"]


def _denoise(model, seed: int = 0) -> torch.Tensor:
    """The text-conditioned UNet output for a fixed noisy latent, timestep and prompt."""
    gen = torch.Generator().manual_seed(seed)
    noisy = torch.randn(2, 4, 8, 8, generator=gen)
    with torch.no_grad():
        cond = model.encode_prompt(["sks disc, red", "a blue picture"])
        return model.adapter.predict(model, noisy, torch.tensor([100, 800]), cond, None)


@pytest.mark.slow
def test_trains_saves_the_webui_file_and_reloads_bit_for_bit(tmp_path, tiny_dataset):
    from tests.training.helpers import base_options

    out = tmp_path / "out"
    opts = base_options(tiny_dataset, out, network_module="networks.hypernetwork", network_dim=None,
                        network_alpha=None, max_train_steps=3, learning_rate=1e-2,
                        network_args=["layer_structure=1,2,1", "activation_func=relu", "add_layer_norm=true",
                                      "dropout_structure=0,0.3,0"])
    code, target = _train_capturing(tmp_path, opts)
    assert code == 0
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["lora.pt"]  # the webui's format by default
    state = torch.load(out / "lora.pt", map_location="cpu", weights_only=True)
    assert set(state) == {32, *FILE_FIELDS} and state["step"] == 3 and state["name"] == "lora"
    webui = webui_load(out / "lora.pt")  # the webui's strict load accepts every module
    assert len(webui[32]) == 2
    model, trained = target._model, target.network
    assert not target.trains_text_encoder
    assert all(not p.requires_grad for p in model.unet.parameters())  # the base stays frozen
    initial = create_hypernetwork(copy.deepcopy(model.unet), **parse_hypernetwork_args(opts["network_args"]),
                                  generator=torch.Generator().manual_seed(1))
    assert not torch.equal(initial.layers["32"][0].linear[0].weight, state[32][0]["linear.0.weight"])  # it learnt
    trained.eval()
    with_trained = _denoise(model)
    trained.remove()
    base = _denoise(model)
    reloaded, report = hypernetwork_from_weights(out / "lora.pt", model.unet)
    reloaded.apply_to()
    reloaded.eval()
    assert report.loaded == ["32"]
    assert torch.equal(_denoise(model), with_trained)
    assert not torch.allclose(with_trained, base, atol=1e-6)
    reloaded.set_multiplier(0.0)
    assert torch.equal(_denoise(model), base)
    reloaded.remove()

    # continue from the file (network_weights) and save as safetensors on request
    opts2 = {**opts, "network_weights": str(out / "lora.pt"), "output_dir": str(tmp_path / "out2"),
             "save_model_as": "safetensors", "max_train_steps": 1}
    code, target2 = _train_capturing(tmp_path, opts2)
    assert code == 0
    resumed, _ = read_hypernetwork(tmp_path / "out2" / "lora.safetensors")
    assert resumed["step"] == 4 and resumed["activation_func"] == "relu"


@pytest.mark.slow
def test_samples_render_with_the_hypernetwork_and_its_multiplier(tmp_path):
    import numpy as np

    from library.models.loading import load_base_model
    from library.training.sampling.generate import SampleSettings, generate_samples
    from library.training.sampling.prompts import SamplePrompt

    model = load_base_model("builtin:tiny")
    settings = SampleSettings("ddim", 64, 64, None, None, 5)
    prompts = [SamplePrompt("sks disc", steps=2, seed=4)]

    def render(name: str):
        [(path, image, _)] = generate_samples(model, prompts, settings, tmp_path / name, name)
        return np.asarray(image, dtype=np.int16)

    base = render("base")
    net = create_hypernetwork(model.unet, generator=torch.Generator().manual_seed(0),
                              **parse_hypernetwork_args(["weight_initialization=XavierNormal"]))
    net.apply_to()
    net.eval()
    full = render("full")
    net.set_multiplier(0.0)
    off = render("off")
    net.remove()
    assert np.array_equal(off, base)
    assert np.abs(full - base).mean() > 1.0  # the hypernetwork is in effect


@pytest.mark.slow
def test_sdxl_uses_its_2048_wide_context_size():
    """SDXL's cross-attention context is both encoders' states (2048 wide; 80 on the tiny model); the webui hooks
    SGM's CrossAttention the same way, so a file keyed by that width loads there."""
    from library.models.loading import load_base_model

    model = load_base_model("builtin:tiny-sdxl")
    width = model.unet.config.cross_attention_dim
    net = create_hypernetwork(model.unet, generator=torch.Generator().manual_seed(0))
    assert net.sizes == (width,)
    assert {hook.layer.in_features for hook in net._hooks} == {width}
    gen = torch.Generator().manual_seed(0)
    latents, states = torch.randn(1, 4, 16, 16, generator=gen), torch.randn(1, 77, width, generator=gen)
    cfg = model.unet.config
    added = {"text_embeds": torch.randn(1, cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim,
                                        generator=gen), "time_ids": torch.tensor([[128.0, 128, 0, 0, 128, 128]])}

    def call():
        with torch.no_grad():
            return model.unet(latents, torch.tensor([10]), states, added_cond_kwargs=added).sample

    base = call()
    net.apply_to()
    changed = call()
    net.remove()
    assert not torch.equal(changed, base) and torch.equal(call(), base)
