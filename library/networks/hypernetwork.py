"""``network_module = "networks.hypernetwork"``: hypernetworks in AUTOMATIC1111's format.

A hypernetwork (the webui's ``modules/hypernetworks/hypernetwork.py``) is, per input width ("size", e.g. 768
for SD1's text context), a pair of small MLPs (k, v). Every attention layer of the UNet whose ``to_k``/``to_v``
input has that width feeds them ``x + mlp(x) · multiplier`` instead of ``x``: by default the sizes are the
cross-attention context widths (768 SD1, 1024 SD2, 2048 SDXL), as the webui's default; ``enable_sizes`` adds
self-attention widths (320, 640, 1280), which the webui then applies to self-attention too (its hijack keys by
the context's last dimension, and self-attention's context is the hidden state).

The MLP is built exactly as the webui builds it from ``layer_structure`` (``1,2,1`` -> Linear(d, 2d),
Linear(2d, d)), the activation after every Linear but the last (unless ``activate_output``), a LayerNorm
after every Linear (``add_layer_norm``) and Dropout where ``dropout_structure`` is non-zero, so the
``linear.<i>.weight`` indices of a file match the webui's ``load_state_dict``. Initialisation is the webui's
(``Normal``: weights N(0, 0.01), biases 0 — not zero, so a fresh hypernetwork changes the model slightly).

Files: ``.pt`` is the webui's layout, written by ``torch.save`` from plain containers only, so that
``torch.load(weights_only=True)`` (ComfyUI's loader, ours) reads it::

    {768: ({"linear.0.weight": …, "linear.0.bias": …, …}, {…v…}), "layer_structure": [1.0, 2.0, 1.0],
     "activation_func": "linear", "is_layer_norm": False, "weight_initialization": "Normal",
     "use_dropout": False, "dropout_structure": [0.0, 0.0, 0.0], "last_layer_dropout": False,
     "activate_output": False, "name": …, "step": …, "sd_checkpoint": None, "sd_checkpoint_name": …,
     "optional_info": None}

``.safetensors`` holds the same tensors flattened (``768.0.linear.0.weight``; 0 = k, 1 = v) and the other
fields as JSON in the metadata (``hypernetwork.layer_structure`` …). The webui only lists ``.pt`` files.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from library.errors import ConfigError, ModelLoadError
from library.networks.args import boolean, parse_network_args
from library.networks.hypernetwork_files import FILE_FIELDS, META_PREFIX, flatten, read_hypernetwork
from library.networks.network import LoadReport
from library.util.atomic import atomic_path
from library.util.safetensors_io import save_safetensors

logger = logging.getLogger(__name__)


def _activations() -> dict[str, type[nn.Module]]:
    """The webui's ``activation_dict``: its named ones, then every torch activation class by lower-case name
    (only those that build without arguments; the webui lists the rest too, but cannot build them)."""
    named = {"linear": nn.Identity, "relu": nn.ReLU, "leakyrelu": nn.LeakyReLU, "elu": nn.ELU,
             "swish": nn.Hardswish, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
    for cls_name, cls in inspect.getmembers(torch.nn.modules.activation, inspect.isclass):
        if cls.__module__ != "torch.nn.modules.activation" or cls_name.lower() in named:
            continue
        try:
            cls()
        except TypeError:
            continue
        named[cls_name.lower()] = cls
    named.pop("multiheadattention", None)
    return named


ACTIVATIONS = _activations()
#: activations ComfyUI's HypernetworkLoader builds (it refuses a file with any other)
COMFYUI_ACTIVATIONS = ("linear", "relu", "leakyrelu", "elu", "swish", "tanh", "sigmoid", "softsign", "mish")
WEIGHT_INITS = ("Normal", "XavierUniform", "XavierNormal", "KaimingUniform", "KaimingNormal")
#: the dropout the webui uses where ``use_dropout`` is on and no ``dropout_structure`` is given
LEGACY_DROPOUT = 0.3


def _number_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise ValueError("must be comma-separated numbers, e.g. 1,2,1") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise ValueError("must be comma-separated finite numbers, e.g. 1,2,1")
    return values


def _activation(text: str) -> str:
    name = text.strip().lower()
    if name not in ACTIVATIONS:
        raise ValueError(f"must be one of the webui's activations: {', '.join(ACTIVATIONS)}")
    return name


def _weight_init(text: str) -> str:
    by_lower = {name.lower(): name for name in WEIGHT_INITS}
    if text.strip().lower() not in by_lower:
        raise ValueError(f"must be one of {', '.join(WEIGHT_INITS)}")
    return by_lower[text.strip().lower()]


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise ValueError("must be comma-separated widths, e.g. 768,320,640,1280") from None
    if not sizes or min(sizes) <= 0:
        raise ValueError("must be comma-separated positive widths, e.g. 768,320,640,1280")
    return sizes


#: network_args of networks.hypernetwork, by the webui's names (``add_layer_norm`` is saved as ``is_layer_norm``)
HYPERNETWORK_ARGS = {
    "layer_structure": _number_list,
    "activation_func": _activation,
    "add_layer_norm": boolean,
    "use_dropout": boolean,
    "dropout_structure": _number_list,
    "last_layer_dropout": boolean,
    "weight_initialization": _weight_init,
    "activate_output": boolean,
    "enable_sizes": _sizes,
}


def parse_hypernetwork_args(items: list[str] | tuple[str, ...] | None) -> dict[str, object]:
    """``network_args`` strings -> keyword arguments of :func:`create_hypernetwork`, the structure checked."""
    parsed = parse_network_args(items, known=HYPERNETWORK_ARGS)
    structure_from_args(**{k: v for k, v in parsed.items() if k != "enable_sizes"})
    return parsed


@dataclass(frozen=True)
class HypernetworkStructure:
    """The shape of each k/v MLP, as the webui stores it. ``layer_structure`` multiplies the size per layer."""

    layer_structure: tuple[float, ...] = (1.0, 2.0, 1.0)
    activation_func: str = "linear"
    add_layer_norm: bool = False
    dropout_structure: tuple[float, ...] = (0.0, 0.0, 0.0)
    weight_initialization: str = "Normal"
    activate_output: bool = False

    @property
    def use_dropout(self) -> bool:
        return any(self.dropout_structure)

    @property
    def last_layer_dropout(self) -> bool:
        """The webui's saved flag: dropout after the second-to-last layer."""
        return self.dropout_structure[-2] != 0

    def file_fields(self) -> dict[str, object]:
        return {
            "layer_structure": list(self.layer_structure),
            "activation_func": self.activation_func,
            "is_layer_norm": self.add_layer_norm,
            "weight_initialization": self.weight_initialization,
            "activate_output": self.activate_output,
            "use_dropout": self.use_dropout,
            "dropout_structure": list(self.dropout_structure),
            "last_layer_dropout": self.last_layer_dropout,
        }


def legacy_dropout_structure(layer_structure, use_dropout: bool, last_layer_dropout: bool) -> list[float]:
    """The webui's ``parse_dropout_structure`` (files from before ``dropout_structure``): 0.3 after every hidden
    layer but the last, which has it only with ``last_layer_dropout``."""
    n = len(layer_structure)
    if not use_dropout:
        return [0.0] * n
    return [0.0, *[LEGACY_DROPOUT] * (n - 3), LEGACY_DROPOUT if last_layer_dropout else 0.0, 0.0]


def structure_from_args(layer_structure=None, activation_func=None, add_layer_norm=None, use_dropout=None,
                        dropout_structure=None, last_layer_dropout=None, weight_initialization=None,
                        activate_output=None) -> HypernetworkStructure:
    """A checked structure from network_args values (None = the webui's default for a new hypernetwork)."""
    layers = tuple(float(v) for v in (layer_structure or (1, 2, 1)))
    if len(layers) < 2 or layers[0] != 1 or layers[-1] != 1 or min(layers) <= 0:
        raise ConfigError(
            f"network_args layer_structure={','.join(f'{v:g}' for v in layers)} is invalid: it must start and end "
            "with 1 and hold positive width multipliers, e.g. 1,2,1 (the webui's default) or 1,1.5,1.5,1."
        )
    if dropout_structure is not None:
        drops = tuple(float(v) for v in dropout_structure)
        if len(drops) != len(layers) or drops[0] != 0 or not all(0 <= v < 1 for v in drops):
            raise ConfigError(
                f"network_args dropout_structure={','.join(f'{v:g}' for v in drops)} does not fit layer_structure="
                f"{','.join(f'{v:g}' for v in layers)}: give one probability in [0, 1) per layer_structure entry, "
                f"the first 0 (nothing before the first layer), e.g. {','.join(['0'] + ['0.3'] * (len(layers) - 2) + ['0'])}."
            )
        if use_dropout is False and any(drops):
            raise ConfigError("network_args use_dropout=false contradicts a non-zero dropout_structure: "
                              "remove one of them.")
    else:
        drops = tuple(legacy_dropout_structure(layers, bool(use_dropout),
                                               True if last_layer_dropout is None else last_layer_dropout))
    return HypernetworkStructure(layers, activation_func or "linear", bool(add_layer_norm), drops,
                                 weight_initialization or "Normal", bool(activate_output))


def structure_from_file(fields: dict, description: str) -> HypernetworkStructure:
    """The structure the webui's ``Hypernetwork.load`` reads from a file (with its defaults for missing keys)."""
    layers = fields.get("layer_structure") or [1, 2, 1]
    activation = fields.get("activation_func") or "linear"
    if activation not in ACTIVATIONS:
        raise ModelLoadError(f"{description}: activation_func {activation!r} is not one the webui builds "
                             f"({', '.join(ACTIVATIONS)}).")
    drops = fields.get("dropout_structure")
    use_dropout = bool(drops is not None and any(drops)) or bool(fields.get("use_dropout", False))
    if drops is None:
        drops = legacy_dropout_structure(layers, use_dropout, bool(fields.get("last_layer_dropout", False)))
    init = fields.get("weight_initialization") or "Normal"
    try:
        return HypernetworkStructure(tuple(float(v) for v in layers), activation, bool(fields.get("is_layer_norm")),
                                     tuple(float(v) for v in drops), init if init in WEIGHT_INITS else "Normal",
                                     bool(fields.get("activate_output", True)))
    except (TypeError, ValueError):
        raise ModelLoadError(f"{description}: layer_structure {layers!r} / dropout_structure {drops!r} are not "
                             "lists of numbers; the file is damaged or not a hypernetwork.") from None


class HypernetworkModule(nn.Module):
    """One MLP of the webui: ``forward(x) = x + linear(x) · multiplier`` on inputs of width ``dim``."""

    def __init__(self, dim: int, structure: HypernetworkStructure, generator: torch.Generator | None = None):
        super().__init__()
        self.multiplier = 1.0
        ls, act = structure.layer_structure, structure.activation_func
        layers: list[nn.Module] = []
        for i in range(len(ls) - 1):
            layers.append(nn.Linear(int(dim * ls[i]), int(dim * ls[i + 1])))
            if act != "linear" and (i < len(ls) - 2 or structure.activate_output):
                layers.append(ACTIVATIONS[act]())
            if structure.add_layer_norm:
                layers.append(nn.LayerNorm(int(dim * ls[i + 1])))
            if structure.dropout_structure[i + 1] > 0:
                layers.append(nn.Dropout(p=structure.dropout_structure[i + 1]))
        self.linear = nn.Sequential(*layers)
        self._initialise(structure, generator)

    @torch.no_grad()
    def _initialise(self, structure: HypernetworkStructure, generator: torch.Generator | None) -> None:
        """The webui's initialisation (LayerNorms always Normal: weight N(0, 0.01), bias 0)."""
        init = structure.weight_initialization
        gain_of = "leaky_relu" if structure.activation_func == "leakyrelu" else "relu"
        for layer in self.linear:
            if type(layer) not in (nn.Linear, nn.LayerNorm):
                continue
            w = layer.weight
            if init == "Normal" or type(layer) is nn.LayerNorm:
                nn.init.normal_(w, mean=0.0, std=0.01, generator=generator)
            elif init == "XavierUniform":
                nn.init.xavier_uniform_(w, generator=generator)
            elif init == "XavierNormal":
                nn.init.xavier_normal_(w, generator=generator)
            elif init == "KaimingUniform":
                nn.init.kaiming_uniform_(w, nonlinearity=gain_of, generator=generator)
            else:
                nn.init.kaiming_normal_(w, nonlinearity=gain_of, generator=generator)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.linear[0].weight.dtype  # the webui runs hypernetworks in float32 (cond_cast_float)
        return x + (self.linear(x.to(dtype)) * self.multiplier).to(x.dtype)


class _InputHook:
    """Routes a frozen ``to_k``/``to_v`` layer's input through a hypernetwork module (not an nn.Module, so the
    network's state dict holds only the hypernetwork)."""

    def __init__(self, layer: nn.Module, module: HypernetworkModule):
        self.layer, self.module = layer, module
        self._org_forward = None
        self._had_instance_forward = False

    def apply(self) -> None:
        if self._org_forward is not None:
            return
        self._had_instance_forward = "forward" in self.layer.__dict__
        org, module = self.layer.forward, self.module
        self._org_forward = org

        def forward(x, *args, **kwargs):
            return org(module(x), *args, **kwargs)

        self.layer.forward = forward

    def remove(self) -> None:
        if self._org_forward is None:
            return
        if self._had_instance_forward:
            self.layer.forward = self._org_forward
        else:
            del self.layer.forward
        self._org_forward = None


def attention_inputs(unet: nn.Module) -> list[tuple[str, nn.Linear, nn.Linear]]:
    """(path, to_k, to_v) of every attention layer of ``unet`` (self- and cross-attention)."""
    found = []
    for path, module in unet.named_modules():
        to_k, to_v = getattr(module, "to_k", None), getattr(module, "to_v", None)
        if isinstance(to_k, nn.Linear) and isinstance(to_v, nn.Linear):
            found.append((path, to_k, to_v))
    return found


def context_sizes(unet: nn.Module) -> tuple[int, ...]:
    """The widths of the cross-attention contexts (the inputs of every ``attn2``'s ``to_k``)."""
    return tuple(sorted({k.in_features for path, k, _ in attention_inputs(unet) if path.endswith("attn2")}))


class HypernetworkNetwork(nn.Module):
    """A webui hypernetwork hooked into a UNet; offers the :class:`~library.networks.network.Network` methods
    the trainer uses (apply_to, remove, set_multiplier, param_groups, save, load_weights, info)."""

    def __init__(self, unet: nn.Module, sizes: tuple[int, ...], structure: HypernetworkStructure,
                 multiplier: float = 1.0, generator: torch.Generator | None = None):
        super().__init__()
        self.structure = structure
        attentions = attention_inputs(unet)
        widths = sorted({k.in_features for _, k, _ in attentions})
        if not context_sizes(unet):
            raise ConfigError(
                "networks.hypernetwork hooks the cross-attention of a UNet (SD 1.x, 2.x, SDXL), and this model's "
                "denoiser has none (FLUX.1 mixes text into joint attention). Use networks.lora for it."
            )
        unused = [s for s in sizes if s not in widths]
        if unused:
            raise ConfigError(
                f"network_args enable_sizes {','.join(map(str, unused))}: no attention layer of this UNet takes inputs "
                f"of that width, so that part would never train. Widths here: {', '.join(map(str, widths))} "
                f"(context: {', '.join(map(str, context_sizes(unet)))})."
            )
        self.layers = nn.ModuleDict({
            str(size): nn.ModuleList([HypernetworkModule(size, structure, generator),
                                      HypernetworkModule(size, structure, generator)])
            for size in sizes
        })
        self._hooks = [
            _InputHook(layer, self.layers[str(k.in_features)][index])
            for _, k, v in attentions if str(k.in_features) in self.layers
            for index, layer in enumerate((k, v))
        ]
        #: steps of the file this one continues (the webui's ``step`` counts on from there)
        self.step_offset = 0
        self.info = {"layer_structure": ",".join(f"{v:g}" for v in structure.layer_structure),
                     "enable_sizes": ",".join(map(str, sizes)), "hooked_layers": len(self._hooks)}
        self.set_multiplier(multiplier)

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.layers)

    @property
    def text_encoder_modules(self) -> list[nn.Module]:
        return []

    def network_modules(self) -> list[HypernetworkModule]:
        return [m for pair in self.layers.values() for m in pair]

    def apply_to(self) -> None:
        for hook in self._hooks:
            hook.apply()

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()

    def set_multiplier(self, multiplier: float) -> None:
        """Strength of the hypernetwork (0 = the base model, 1 = as trained), the webui's ``set_multiplier``."""
        self.multiplier = multiplier
        for module in self.network_modules():
            module.multiplier = multiplier

    def param_groups(self, unet_lr, text_encoder_lr, default_lr, loraplus_unet_ratio=None,
                     loraplus_text_encoder_ratio=None) -> list[dict]:
        """One group at ``unet_lr`` (else the default lr): the hypernetwork lives in the UNet."""
        if loraplus_unet_ratio or loraplus_text_encoder_ratio:
            raise ConfigError("loraplus_*lr_ratio is for LoRA's up weights; a hypernetwork has none. Remove it.")
        lr = default_lr if unet_lr is None else unet_lr
        params = list(self.parameters())
        for p in params:
            p.requires_grad_(lr != 0)
        return [{"name": "hypernetwork", "params": params, "lr": lr}] if lr != 0 else []

    def apply_max_norm(self, max_norm: float):
        raise ConfigError("scale_weight_norms scales LoRA's up·down products; a hypernetwork has none. Remove it.")

    # --- files ------------------------------------------------------------------------------------------------
    def webui_state(self, dtype: torch.dtype | None = None, metadata: dict[str, str] | None = None) -> dict:
        """The webui's file dict (plain containers only): {size: (k state, v state)} + the structure fields."""
        metadata = metadata or {}
        state: dict = {}
        for size, (k, v) in zip(self.sizes, self.layers.values(), strict=True):
            state[size] = tuple({name: t.detach().to("cpu", dtype or t.dtype).clone() for name, t in
                                 m.state_dict().items()} for m in (k, v))
        steps = _int_or(metadata.get("ss_steps"), 0)
        comment = metadata.get("ss_training_comment")
        state.update({
            "step": self.step_offset + steps,
            "name": metadata.get("ss_output_name") or None,
            "sd_checkpoint": None,
            "sd_checkpoint_name": metadata.get("ss_sd_model_name") or None,
            "optional_info": comment if comment and comment != "None" else None,
            **self.structure.file_fields(),
        })
        return {key: state[key] for key in [*self.sizes, *FILE_FIELDS]}

    def save(self, path: str | os.PathLike, dtype: torch.dtype | None = None,
             metadata: dict[str, str] | None = None) -> Path:
        """``.pt``/``.ckpt``: the webui's layout; ``.safetensors``: the tensors flattened, the fields in metadata.
        Atomic either way."""
        path = Path(path)
        state = self.webui_state(dtype, metadata)
        if path.suffix.lower() == ".safetensors":
            tensors, fields = flatten(state)
            meta = dict(metadata or {})
            arch = meta.get("modelspec.architecture", "")
            if arch.endswith("/lora"):
                meta["modelspec.architecture"] = arch[: -len("lora")] + "hypernetwork"
            meta.update({META_PREFIX + k: json.dumps(v) for k, v in fields.items()})
            return save_safetensors(path, tensors, meta)
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        return path

    def load_weights(self, source, strict: bool = False) -> LoadReport:
        """Copy a hypernetwork file's weights in; its structure must be this network's (else a clear error)."""
        state, description = read_hypernetwork(source)
        return self.load_state(state, description, strict)

    def load_state(self, state: dict, description: str, strict: bool = False) -> LoadReport:
        """:meth:`load_weights` for a webui dict already read from ``description``."""
        file_structure = structure_from_file(state, description)
        if file_structure != self.structure:
            raise ModelLoadError(
                f"The hypernetwork {description} has another structure than the one being trained: file "
                f"{_describe(file_structure)}; network_args {_describe(self.structure)}. Set network_args to the "
                "file's values, or dim_from_weights = true to take the structure from the file."
            )
        report = LoadReport(source=description)
        file_sizes = [k for k in state if isinstance(k, int)]
        report.loaded = [str(s) for s in self.sizes if s in file_sizes]
        report.missing = [str(s) for s in self.sizes if s not in file_sizes]
        report.unexpected = [str(s) for s in file_sizes if s not in self.sizes]
        if not report.loaded or (strict and (report.missing or report.unexpected)):
            raise ModelLoadError(
                f"The hypernetwork {description} is for inputs of width {', '.join(map(str, file_sizes))}, but the "
                f"network being trained has {', '.join(map(str, self.sizes))}: it was made for another model "
                "family (768 = SD 1.x, 1024 = SD 2.x, 2048 = SDXL). Use one made for this base model."
            )
        with torch.no_grad():
            for size in report.loaded:
                for module, sd in zip(self.layers[size], state[int(size)], strict=True):
                    _load_module(module, sd, f"{description} [{size}]")
        self.step_offset = _int_or(state.get("step"), 0)
        logger.info("hypernetwork weights: %s", report.summary())
        return report


def _describe(s: HypernetworkStructure) -> str:
    return (f"layer_structure={','.join(f'{v:g}' for v in s.layer_structure)} activation_func={s.activation_func} "
            f"add_layer_norm={s.add_layer_norm} dropout_structure={','.join(f'{v:g}' for v in s.dropout_structure)} "
            f"activate_output={s.activate_output}")


def _int_or(value, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


#: the webui's ``fix_old_state_dict``: the first files named two layers linear1/linear2
_OLD_NAMES = {"linear1.weight": "linear.0.weight", "linear1.bias": "linear.0.bias",
              "linear2.weight": "linear.1.weight", "linear2.bias": "linear.1.bias"}


def _load_module(module: HypernetworkModule, sd: dict, where: str) -> None:
    sd = {_OLD_NAMES.get(k, k): v for k, v in sd.items()}
    own = module.state_dict()
    if set(sd) != set(own) or any(tuple(sd[k].shape) != tuple(own[k].shape) for k in own):
        shapes = lambda d: ", ".join(f"{k} {tuple(d[k].shape)}" for k in sorted(d))  # noqa: E731
        raise ModelLoadError(f"{where}: the tensors ({shapes(sd)}) do not fit the structure read from the file "
                             f"({shapes(own)}); the file is damaged.")
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()})


def create_hypernetwork(unet: nn.Module, text_encoder=None, *, multiplier: float = 1.0,
                        generator: torch.Generator | None = None, enable_sizes: tuple[int, ...] | None = None,
                        **options) -> HypernetworkNetwork:
    """A fresh hypernetwork over ``unet``'s attention (``text_encoder`` is never touched).

    ``options`` are the parsed network_args (layer_structure, activation_func, …); LoRA's options that the
    trainer passes to every network type (dim, alpha, dropout, parts, …) do not apply and are ignored, except
    network_dropout, which is refused (the hypernetwork's dropout is ``dropout_structure``).
    """
    if options.get("train_unet") is False:
        raise ConfigError("A hypernetwork adapts the UNet's attention only, so network_train_text_encoder_only "
                          "leaves it nothing to train. Turn that off, or use networks.lora.")
    if options.get("dropout"):
        raise ConfigError("network_dropout is LoRA's dropout; a hypernetwork uses network_args dropout_structure "
                          "(e.g. 0,0.3,0) or use_dropout=true. Remove network_dropout.")
    if options.get("dim") is not None:
        logger.warning("network_dim (LoRA's rank) does not apply to a hypernetwork: its size is network_args "
                       "layer_structure (now %s)", options.get("layer_structure") or "1,2,1")
    structure = structure_from_args(**{k: options.get(k) for k in HYPERNETWORK_ARGS if k != "enable_sizes"})
    sizes = tuple(dict.fromkeys(enable_sizes or context_sizes(unet)))
    return HypernetworkNetwork(unet, sizes, structure, multiplier, generator)


def hypernetwork_from_weights(source, unet: nn.Module, text_encoder=None, *, multiplier: float = 1.0,
                              **_ignored) -> tuple[HypernetworkNetwork, LoadReport]:
    """A hypernetwork with the structure and sizes of a file (ours or the webui's), its weights loaded."""
    if _ignored.get("train_unet") is False:
        raise ConfigError("A hypernetwork adapts the UNet's attention only, so network_train_text_encoder_only "
                          "leaves it nothing to train. Turn that off, or use networks.lora.")
    state, description = read_hypernetwork(source)
    sizes = tuple(k for k in state if isinstance(k, int))
    kept = tuple(s for s in sizes if s in {k.in_features for _, k, _ in attention_inputs(unet)})
    if not kept:
        raise ModelLoadError(
            f"The hypernetwork {description} is for inputs of width {', '.join(map(str, sizes))}, which no attention "
            f"layer of this UNet has (context: {', '.join(map(str, context_sizes(unet)))}; 768 = SD 1.x, "
            "1024 = SD 2.x, 2048 = SDXL). Use one made for this base model."
        )
    if kept != sizes:
        logger.warning("hypernetwork %s: sizes %s fit no attention layer of this UNet and are left out", description,
                       ", ".join(str(s) for s in sizes if s not in kept))
    network = HypernetworkNetwork(unet, kept, structure_from_file(state, description), multiplier)
    return network, network.load_state(state, description)
