"""Where LoRA modules and checkpoint keys land in a model: layers by contract name, UNet blocks.

Every ``nn.Linear`` / ``nn.Conv2d`` of each network part (the UNet and the family's text encoders, see
:class:`library.networks.keys.NetworkPart`) is indexed under its contract name
(:func:`library.networks.keys.lora_name`; the SDXL UNet by its SGM paths), a superset of the layers a
trainer targets, so LoRAs from other trainers that adapt more layers still merge. UNet blocks are
numbered by the family's :class:`library.models.family.BlockLayout`, as the webui's and sd-scripts'
block-weight tools do: 25 for SD1/SD2 (IN00–IN11 = LDM ``input_blocks.0–11``, M00 = ``middle_block``,
OUT00–OUT11 = ``output_blocks.0–11``), 23 for SDXL (BASE = time/label embedding, IN00–IN08, M00–M02 =
``middle_block.0–2``, OUT00–OUT08, OUT = the final norm and conv). A diffusers key is mapped to its LDM
name through :func:`library.models.ldm_keys.unet_prefix_table`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from torch import nn

from library.errors import ConfigError
from library.models import ldm_keys
from library.models.family import BlockLayout
from library.networks import blocks, keys

BLOCK_NAMES = tuple([f"IN{i:02d}" for i in range(12)] + ["M00"] + [f"OUT{i:02d}" for i in range(12)])
#: the SD1/SD2 numbering, used when no family layout is given (the tools' historic default)
SD_LAYOUT = BlockLayout(BLOCK_NAMES, blocks.NUM_BLOCKS, blocks.block_index)
_LDM_BLOCK = re.compile(r"^(input_blocks|middle_block|output_blocks)\.(\d+)")
#: LDM UNet prefixes before the down path (a layout's ``leading`` block) and after the up path (its last)
_LEADING_LDM = ("time_embed.", "label_emb.")
_TRAILING_LDM = ("out.",)


@dataclass(frozen=True)
class LayerRef:
    """A model layer a LoRA module can target: its part name (``unet``, ``text_encoder``, ``text_encoder_2``
    …), its path in that part's module, the layer."""

    part: str
    path: str
    module: nn.Module


def parts_layer_index(parts: list[keys.NetworkPart]) -> dict[str, LayerRef]:
    """{contract name: layer} for every Linear / Conv2d layer of every part, named as the part's keys."""
    index: dict[str, LayerRef] = {}
    for part in parts:
        path_of = _key_path_of(part)
        for path, module in part.module.named_modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                index[keys.lora_name(part.prefix, path_of(path))] = LayerRef(part.name, path, module)
    return index


def _key_path_of(part: keys.NetworkPart):
    """Module path in the part -> the path its keys use (SGM paths for SDXL's UNet, ``text_model.`` roots)."""
    if part.key_path is not None:  # the family's naming (SGM paths, FLUX's T5 by its own paths)
        return part.key_path
    if part.is_unet:
        return lambda path: path
    return lambda path: keys.text_encoder_key_path(part.module, path)


def model_layer_index(model) -> dict[str, LayerRef]:
    """:func:`parts_layer_index` of a loaded :class:`library.models.base_model.BaseModel` (any family)."""
    return parts_layer_index(keys.model_parts(model))


def layer_index(unet: nn.Module | None, text_encoder: nn.Module | None) -> dict[str, LayerRef]:
    """{contract name: layer} for a UNet named by its diffusers paths and one text encoder (``lora_te``)."""
    return parts_layer_index(keys.default_parts(unet, text_encoder))


def block_of_ldm_key(ldm_key: str, layout: BlockLayout = SD_LAYOUT) -> str | None:
    """The block of an LDM/SGM UNet key in ``layout``, else None.

    SD1/SD2: "IN04" for ``input_blocks.4.…``, "M00" for ``middle_block.…``, "OUT11" for ``output_blocks.11.…``.
    SDXL: also "M02" for ``middle_block.2.…``, "BASE" for ``time_embed`` / ``label_emb``, "OUT" for ``out.``.
    Computed from the layout's data: ``leading`` blocks, ``per_path`` per side, ``mid_count`` middle ones.
    """
    names, lead = layout.names, layout.leading
    match = _LDM_BLOCK.match(ldm_key)
    if match:
        kind, number = match.group(1), int(match.group(2))
        if kind == "input_blocks":
            index = lead + number
        elif kind == "middle_block":
            index = lead + layout.per_path + min(number, layout.mid_count - 1)
        else:
            index = lead + layout.per_path + layout.mid_count + number
        return names[index] if index < len(names) else None
    if lead and ldm_key.startswith(_LEADING_LDM):
        return names[0]
    trailing = len(names) > lead + 2 * layout.per_path + layout.mid_count
    if trailing and ldm_key.startswith(_TRAILING_LDM):
        return names[-1]
    return None


class UnetBlocks:
    """Maps diffusers UNet parameter keys (or module paths) to block names, for one UNet config and layout."""

    def __init__(self, unet_config: dict, layout: BlockLayout | None = None):
        self.table = ldm_keys.unet_prefix_table(dict(unet_config))
        self.layout = layout or SD_LAYOUT

    def block_of_key(self, key: str) -> str | None:
        """Block of a diffusers parameter key such as ``down_blocks.0.attentions.0.proj_in.weight``."""
        ldm = ldm_keys.rename_key(key, self.table)
        return block_of_ldm_key(ldm, self.layout) if ldm else None

    def block_of_path(self, module_path: str) -> str | None:
        """Block of a diffusers module path such as ``down_blocks.0.attentions.0.proj_in``."""
        return self.block_of_key(module_path + ".weight")


def layout_summary(layout: BlockLayout) -> str:
    """The block names in short: "IN00–IN11, M00, OUT00–OUT11"; "BASE, IN00–IN08, M00–M02, OUT00–OUT08, OUT"."""
    groups: list[list[str]] = []
    for name in layout.names:
        stem = name.rstrip("0123456789")
        if groups and groups[-1][0].rstrip("0123456789") == stem and groups[-1][0] != stem and name != stem:
            groups[-1].append(name)
        else:
            groups.append([name])
    return ", ".join(g[0] if len(g) == 1 else f"{g[0]}–{g[-1]}" for g in groups)


def parse_block_weights(values, layout: BlockLayout | None = None, family: str = "") -> dict[str, float]:
    """One number per block of ``layout`` (a list or a comma-separated string) -> {block name: w}.

    Default layout: SD1/SD2's 25 blocks (IN00–IN11, M00, OUT00–OUT11); SDXL has 23. ``family`` names the
    model family in the error message. The webui LoRA Block Weight forms (17 / 12 / 20 / 26 values, presets
    such as ``INALL``: :mod:`library.networks.block_weight_presets`) are mapped to the layout, their BASE
    (the text encoders' weight) under ``"TE"``.
    """
    layout = layout or SD_LAYOUT
    from library.networks import block_weight_presets as lbw

    if lbw.is_lbw(values, layout.total):  # the webui's LoRA Block Weight forms: 17 / 12 values, presets
        if not any(n.startswith("IN") for n in layout.names):
            raise ConfigError(f"block weights {values!r} are a LoRA Block Weight (UNet) form; {family or 'this'} "
                              f"models number their blocks {layout_summary(layout)}: give {layout.total} values.")
        numbers, te_weight = lbw.to_layout(values, layout.names)
        return {**dict(zip(layout.names, numbers, strict=True)), lbw.TEXT_ENCODER_KEY: te_weight}
    if isinstance(values, str):
        values = [v for v in values.replace(" ", "").split(",") if v]
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ConfigError(f"block weights must be numbers, got {values!r}.") from None
    bad = [v for v in numbers if not math.isfinite(v)]
    if bad:
        raise ConfigError(f"block weights must be finite numbers, got {bad[0]} in {values!r}.")
    if len(numbers) != layout.total:
        where = f" for {family} models" if family else ""
        raise ConfigError(
            f"block weights need {layout.total} values{where} ({layout_summary(layout)}), got {len(numbers)}. "
            "Give one comma-separated weight per block of the model's family."
        )
    return dict(zip(layout.names, numbers, strict=True))


def precheck_block_weights(values) -> None:
    """Fail fast, before any model is read: block weights must be numbers, as many as some family's layout
    has (SD1/SD2 25, SDXL 23); the exact count for the model comes with :func:`parse_block_weights`."""
    from library.models.family import all_families

    layouts: dict[int, tuple[list[str], BlockLayout]] = {}
    for family in all_families():
        layout = family.block_layout
        layouts.setdefault(layout.total, ([], layout))[0].append(family.name)
    from library.networks import block_weight_presets as lbw

    if lbw.is_lbw(values):
        lbw.expand_to_26(values)
        return
    values = [v for v in values.replace(" ", "").split(",") if v] if isinstance(values, str) else list(values)
    if len(values) in layouts:
        parse_block_weights(values, layouts[len(values)][1])
        return
    known = " or ".join(f"{total} values ({'/'.join(names)}: {layout_summary(layout)})"
                        for total, (names, layout) in sorted(layouts.items(), reverse=True))
    raise ConfigError(f"block weights need {known}, got {len(values)}: one weight per UNet block of the model, "
                      "or a LoRA Block Weight form (17 values for SD1/SD2, 12 for SDXL, 26 with BASE, or a preset "
                      "such as INALL, MIDD, OUTALL).")


def unet_part(parts: list[keys.NetworkPart]) -> keys.NetworkPart | None:
    """The UNet part of a part list (None for a text-encoder-only list)."""
    return next((p for p in parts if p.is_unet), None)
