"""The on-disk contract of LoRA files: key names and which modules get a LoRA.

Every client (AUTOMATIC1111, Forge, ComfyUI, diffusers, sd-scripts) expects the same layout::

    lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight
    lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight
    lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha
    lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight

i.e. prefix + "_" + module path with "." replaced by "_", then one of the suffixes below. The names
are a contract with the clients, not a mirror of today's module paths: transformers 5 dropped the
``text_model.`` level of ``CLIPTextModel``, yet the text-encoder keys keep ``text_model_``.

Target selection follows sd-scripts' ``networks.lora``: inside every module whose class is one of
the "target blocks", every ``nn.Linear`` and ``nn.Conv2d`` child gets a LoRA. Linear and 1x1 convs
use ``network_dim``; larger convs (only reachable through the conv target blocks) use ``conv_dim``.
The merge/extract/resize tools and the inspector import these names from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

UNET_PREFIX = "lora_unet"
TE_PREFIX = "lora_te"

DOWN_SUFFIX = ".lora_down.weight"
UP_SUFFIX = ".lora_up.weight"
ALPHA_SUFFIX = ".alpha"
SUFFIXES = (DOWN_SUFFIX, UP_SUFFIX, ALPHA_SUFFIX)

#: UNet blocks whose Linear and 1x1 Conv2d children always get a LoRA.
UNET_TARGET_BLOCKS = ("Transformer2DModel",)
#: Extra UNet blocks searched when ``conv_dim`` is set (LoCon): their 3x3 convs use conv_dim and,
#: as in sd-scripts, their Linear / 1x1 children (time_emb_proj, conv_shortcut) use network_dim.
UNET_CONV_TARGET_BLOCKS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
#: Text-encoder blocks (class name or any base class name) whose Linear children get a LoRA.
TE_TARGET_BLOCKS = ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP")
#: Text-encoder module paths in key names always start with this level.
TE_ROOT = "text_model."

#: Module kinds: "linear" = nn.Linear or 1x1 conv (sized by network_dim), "conv" = kxk conv (conv_dim).
KIND_LINEAR = "linear"
KIND_CONV = "conv"


@dataclass(frozen=True)
class Target:
    """One original layer that gets a LoRA: its contract name, its path in the model, the layer itself."""

    lora_name: str
    module_path: str
    module: nn.Module
    kind: str


def lora_name(prefix: str, module_path: str) -> str:
    """Contract name of a module: ``lora_name("lora_unet", "mid_block.proj_in") == "lora_unet_mid_block_proj_in"``."""
    return f"{prefix}.{module_path}".replace(".", "_")


def text_encoder_key_path(text_encoder: nn.Module, module_path: str) -> str:
    """Module path as used in key names: always rooted at ``text_model.``.

    transformers 5's ``CLIPTextModel`` has no ``text_model`` attribute (paths start with
    ``encoder.``); older versions and ``CLIPTextModelWithProjection`` keep it.
    """
    if hasattr(text_encoder, "text_model") or module_path.startswith(TE_ROOT):
        return module_path
    return TE_ROOT + module_path


def split_key(key: str) -> tuple[str, str]:
    """Split a LoRA file key into (lora_name, suffix); suffix is "" for a key with no known suffix."""
    for suffix in SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], suffix
    return key, ""


def module_keys(name: str) -> tuple[str, str, str]:
    """The three keys of one module: (down, up, alpha)."""
    return name + DOWN_SUFFIX, name + UP_SUFFIX, name + ALPHA_SUFFIX


def _class_names(module: nn.Module) -> set[str]:
    return {cls.__name__ for cls in type(module).__mro__}


def _layer_kind(layer: nn.Module) -> str | None:
    if isinstance(layer, nn.Linear):
        return KIND_LINEAR
    if isinstance(layer, nn.Conv2d):
        return KIND_LINEAR if tuple(layer.kernel_size) == (1, 1) else KIND_CONV
    return None


def _find_targets(
    root: nn.Module, prefix: str, block_classes: tuple[str, ...], path_of=lambda path: path
) -> list[Target]:
    """Linear/Conv2d layers inside blocks of the given classes, in model order, without duplicates."""
    found: dict[str, Target] = {}
    for block_path, block in root.named_modules():
        if not (_class_names(block) & set(block_classes)):
            continue
        for child_path, child in block.named_modules():
            kind = _layer_kind(child)
            if kind is None:
                continue
            full_path = f"{block_path}.{child_path}" if block_path else child_path
            name = lora_name(prefix, path_of(full_path))
            found.setdefault(name, Target(name, full_path, child, kind))
    return list(found.values())


def _path_targets(root: nn.Module, prefix: str, paths: tuple[str, ...], path_of, found: list[Target]) -> list[Target]:
    """Linear layers under the given module paths (those the model has), not already in ``found``."""
    seen = {t.lora_name for t in found}
    extra: list[Target] = []
    for path in paths:
        try:
            base = root.get_submodule(path)
        except AttributeError:
            continue
        for child_path, child in base.named_modules():
            if not isinstance(child, nn.Linear):
                continue
            full_path = f"{path}.{child_path}" if child_path else path
            name = lora_name(prefix, path_of(full_path))
            if name not in seen:
                seen.add(name)
                extra.append(Target(name, full_path, child, KIND_LINEAR))
    return extra


def find_unet_targets(unet: nn.Module, include_conv_blocks: bool = False) -> list[Target]:
    """UNet layers that get a LoRA, named by diffusers paths; ``include_conv_blocks`` adds the ResNet/down/upsample
    blocks (LoCon). A family that names its UNet otherwise goes through :func:`model_parts`."""
    return NetworkPart("unet", UNET_PREFIX, unet, True).targets(include_conv_blocks)


def find_text_encoder_targets(text_encoder: nn.Module, prefix: str = TE_PREFIX) -> list[Target]:
    """Text-encoder Linear layers (attention and MLP) that get a LoRA, named with the ``text_model_`` root."""
    return NetworkPart("text_encoder", prefix, text_encoder, False).targets()


@dataclass(frozen=True)
class NetworkPart:
    """One model part a network adapts: its part name, its key prefix and how module paths are named.

    ``key_path`` turns a module path inside ``module`` into the path the keys are named by (the SDXL UNet
    is named by its SGM paths; text encoders are rooted at ``text_model.``).
    """

    name: str
    prefix: str
    module: nn.Module
    is_unet: bool
    key_path: Callable[[str], str] | None = None
    #: class names of the blocks searched for layers (None: the SD defaults above); the family sets them
    blocks: tuple[str, ...] | None = None
    conv_blocks: tuple[str, ...] | None = None
    #: module paths outside the target blocks whose Linear layers are targets too (FLUX's ``in_dims`` layers)
    extra_paths: tuple[str, ...] = ()
    #: the family's per-module rules (rank, split parts, learning rate), e.g.
    #: :class:`~library.networks.flux_plan.FluxModulePlan`; None: network_dim / block_dims for every module
    plan: object | None = None

    def targets(self, include_conv_blocks: bool = False) -> list[Target]:
        """The layers of this part that get a network module (see the module docstring)."""
        if self.is_unet:
            blocks = UNET_TARGET_BLOCKS if self.blocks is None else self.blocks
            conv = UNET_CONV_TARGET_BLOCKS if self.conv_blocks is None else self.conv_blocks
            blocks = blocks + (conv if include_conv_blocks else ())
            path_of = self.key_path or (lambda path: path)
            found = _find_targets(self.module, self.prefix, blocks, path_of)
            return found + _path_targets(self.module, self.prefix, self.extra_paths, path_of, found)
        module = self.module
        blocks = TE_TARGET_BLOCKS if self.blocks is None else self.blocks
        return _find_targets(module, self.prefix, blocks,
                             self.key_path or (lambda path: text_encoder_key_path(module, path)))


def text_encoder_parts(text_encoder) -> list[NetworkPart]:
    """Parts for a text encoder given as a module (``lora_te``) or a list of modules (``lora_te1``, ``lora_te2``
    …, as sd-scripts and LyCORIS number several encoders); None gives no part."""
    if text_encoder is None:
        return []
    if isinstance(text_encoder, (list, tuple)):
        return [NetworkPart(f"text_encoder_{i + 1}", f"{TE_PREFIX}{i + 1}", te, False)
                for i, te in enumerate(text_encoder)]
    return [NetworkPart("text_encoder", TE_PREFIX, text_encoder, False)]


def default_parts(unet, text_encoder) -> list[NetworkPart]:
    """Parts of a UNet named by its diffusers paths plus the text encoder(s); text encoders first."""
    unet_part = [NetworkPart("unet", UNET_PREFIX, unet, True)] if unet is not None else []
    return text_encoder_parts(text_encoder) + unet_part


def model_parts(model) -> list[NetworkPart]:
    """The network parts of a loaded base model, named as its family's LoRA files name them."""
    family = model.adapter
    parts = [NetworkPart(name, family.lora_prefixes[name], model.parts[name], False, family.text_key_path(name),
                         blocks=family.text_target_blocks)
             for name in family.text_parts]
    unet = model.unet
    return parts + [NetworkPart("unet", family.lora_prefixes["unet"], unet, True, family.unet_key_path(unet),
                                blocks=family.unet_target_blocks, conv_blocks=family.unet_conv_target_blocks)]


def part_of_name(lora_name: str, parts: list[NetworkPart]) -> NetworkPart | None:
    """The part whose prefix a LoRA module name starts with (the longest prefix wins: lora_te1 over lora_te)."""
    matches = [p for p in parts if lora_name.startswith(p.prefix + "_")]
    return max(matches, key=lambda p: len(p.prefix)) if matches else None
