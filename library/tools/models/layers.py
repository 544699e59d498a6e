"""Where LoRA modules and checkpoint keys land in a model: layers by contract name, UNet blocks.

Every ``nn.Linear`` / ``nn.Conv2d`` of the UNet and text encoder is indexed under its contract name
(:func:`library.networks.keys.lora_name`), a superset of the layers a trainer targets, so LoRAs
from other trainers that adapt more layers still merge. UNet blocks are numbered as the webui's
block-weight merge tools do (25 for SD1/SD2): IN00–IN11 = LDM ``input_blocks.0–11``, M00 =
``middle_block``, OUT00–OUT11 = ``output_blocks.0–11``; a diffusers key is mapped to its LDM name
through :func:`library.models.ldm_keys.unet_prefix_table`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from library.errors import ConfigError
from library.models import ldm_keys
from library.networks import keys

BLOCK_NAMES = tuple([f"IN{i:02d}" for i in range(12)] + ["M00"] + [f"OUT{i:02d}" for i in range(12)])
_LDM_BLOCK = re.compile(r"^(input_blocks|middle_block|output_blocks)\.(\d+)?")


@dataclass(frozen=True)
class LayerRef:
    """A model layer a LoRA module can target: part ("unet"/"text_encoder"), path in that module, the layer."""

    part: str
    path: str
    module: nn.Module


def layer_index(unet: nn.Module | None, text_encoder: nn.Module | None) -> dict[str, LayerRef]:
    """{contract name: layer} for every Linear / Conv2d layer of the UNet and text encoder."""
    index: dict[str, LayerRef] = {}
    if unet is not None:
        for path, module in unet.named_modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                index[keys.lora_name(keys.UNET_PREFIX, path)] = LayerRef("unet", path, module)
    if text_encoder is not None:
        for path, module in text_encoder.named_modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                name = keys.lora_name(keys.TE_PREFIX, keys.text_encoder_key_path(text_encoder, path))
                index[name] = LayerRef("text_encoder", path, module)
    return index


def block_of_ldm_key(ldm_key: str) -> str | None:
    """ "IN04" for ``input_blocks.4.…``, "M00" for ``middle_block.…``, "OUT11" for ``output_blocks.11.…``; else None."""
    match = _LDM_BLOCK.match(ldm_key)
    if not match:
        return None
    kind, number = match.groups()
    if kind == "middle_block":
        return "M00"
    return f"{'IN' if kind == 'input_blocks' else 'OUT'}{int(number):02d}"


class UnetBlocks:
    """Maps diffusers UNet parameter keys (or module paths) to block names, for one UNet config."""

    def __init__(self, unet_config: dict):
        self.table = ldm_keys.unet_prefix_table(dict(unet_config))

    def block_of_key(self, key: str) -> str | None:
        """Block of a diffusers parameter key such as ``down_blocks.0.attentions.0.proj_in.weight``."""
        ldm = ldm_keys.rename_key(key, self.table)
        return block_of_ldm_key(ldm) if ldm else None

    def block_of_path(self, module_path: str) -> str | None:
        """Block of a diffusers module path such as ``down_blocks.0.attentions.0.proj_in``."""
        return self.block_of_key(module_path + ".weight")


def parse_block_weights(values) -> dict[str, float]:
    """25 numbers (a list or a comma-separated string) -> {"IN00": w, …, "M00": w, …, "OUT11": w}."""
    if isinstance(values, str):
        values = [v for v in values.replace(" ", "").split(",") if v]
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ConfigError(f"block weights must be numbers, got {values!r}.") from None
    if len(numbers) != len(BLOCK_NAMES):
        raise ConfigError(
            f"block weights need {len(BLOCK_NAMES)} values (IN00–IN11, M00, OUT00–OUT11), got {len(numbers)}."
        )
    return dict(zip(BLOCK_NAMES, numbers, strict=True))
