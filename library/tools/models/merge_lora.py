"""Merge LoRAs into a checkpoint (W ← W + ratio · ΔW) or into one LoRA (concatenated ranks or SVD).

Into a checkpoint: every module of every file (LoRA, LoCon, LoHa, LoKr) is added to the layer with the same contract name
(:mod:`library.tools.models.layers`), in float32, with ``merged_weight`` from
:mod:`library.networks.functional`; optional per-block weights scale UNet modules by block.
Into one LoRA: Σ_i ratio_i ΔW_i is represented exactly by stacking the ranks,
up = [c_1 up_1 | c_2 up_2 …], down = [down_1; down_2 …] with c_i = ratio_i · scale_i (split as
√|c_i| on each side), alpha = total rank; ``new_rank`` then re-factorises that sum by SVD.
A family whose checkpoints come as separate part files (FLUX.1's BFL transformer file) is merged key by key
(:mod:`library.tools.models.part_files`) when such a file is given as ``sd_model``.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from library.errors import ConfigError, ModelLoadError
from library.models.family import BlockLayout
from library.networks import keys
from library.networks.block_weight_presets import TEXT_ENCODER_KEY
from library.networks.functional import merged_weight
from library.tools.models import lora_file
from library.tools.models.layers import SD_LAYOUT, LayerRef, UnetBlocks, parts_layer_index, unet_part
from library.tools.models.lora_file import LoraFile, LoraModule
from library.tools.models.lycoris_file import LycorisModule

logger = logging.getLogger(__name__)


@dataclass
class MergeReport:
    """Per input file: how many modules were merged and which names matched no layer."""

    entries: list[dict] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = []
        for e in self.entries:
            line = f"{e['source']} x {e['ratio']}: {e['merged']} modules merged"
            if e["unmatched"]:
                line += f", {len(e['unmatched'])} not in the model (e.g. {', '.join(e['unmatched'][:3])})"
            out.append(line)
        return out


def check_ratios(models: list, ratios: list[float] | None) -> list[float]:
    """One finite ratio per model (all 1.0 when omitted)."""
    from library.util.tensor_checks import require_finite_number

    if not ratios:
        return [1.0] * len(models)
    if len(ratios) != len(models):
        raise ConfigError(
            f"--ratios has {len(ratios)} values for {len(models)} models; give one ratio per model."
        )
    return [
        require_finite_number(r, f"--ratios (value {i + 1}, for {Path(str(m)).name})", "Give e.g. 0.8.")
        for i, (r, m) in enumerate(zip(ratios, models, strict=True))
    ]


def layer_mismatch(module: LoraModule, layer: torch.nn.Module | torch.Tensor) -> str | None:
    """Why ``module`` cannot apply to ``layer`` (a layer or its weight; shape text), or None when it fits.

    Linear and 1x1 conv are interchangeable (clients reshape), as SD1 (conv) and SD2 (linear)
    ``proj_in`` / ``proj_out`` show.
    """
    weight = layer if isinstance(layer, torch.Tensor) else layer.weight
    kernel = tuple(weight.shape[2:]) if weight.dim() == 4 else ()
    lora_kernel = module.kernel if module.kernel != (1, 1) else ()
    if kernel == (1, 1):
        kernel = ()
    if (module.out_features, module.in_features, lora_kernel) == (weight.shape[0], weight.shape[1], kernel):
        return None
    return (
        f"{module.name}: LoRA out {module.out_features}, in {module.in_features}, kernel {lora_kernel or '-'} "
        f"vs layer weight {tuple(weight.shape)}"
    )


def merge_into_model(
    unet: torch.nn.Module,
    text_encoder: torch.nn.Module,
    loras: list[tuple[LoraFile, float]],
    *,
    block_weights: dict[str, float] | None = None,
) -> MergeReport:
    """:func:`merge_into_parts` for a UNet named by its diffusers paths and one ``lora_te`` text encoder."""
    return merge_into_parts(keys.default_parts(unet, text_encoder), loras, block_weights=block_weights)


def merge_into_parts(
    parts: list[keys.NetworkPart],
    loras: list[tuple[LoraFile, float]],
    *,
    block_weights: dict[str, float] | None = None,
    layout: BlockLayout | None = None,
) -> MergeReport:
    """Add ratio · ΔW of every module to the weights of the model parts (:func:`keys.model_parts`), in place.

    ``block_weights`` ({"IN00": w, …}, blocks of ``layout``, default SD1/SD2's 25) further scales UNet
    modules by block; UNet layers outside the blocks and the text encoders keep the plain ratio (text encoders:
    times the ``"TE"`` weight, a LoRA Block Weight string's BASE, when given). Raises
    ModelLoadError when a file matches no layer or a module's shape does not fit its layer.
    """
    index = parts_layer_index(parts)
    unet = unet_part(parts)
    blocks = UnetBlocks(unet.module.config, layout) if block_weights and unet is not None else None
    report = MergeReport()
    for lora, ratio in loras:
        items = {**lora.modules, **lora.lycoris}
        unmatched = [name for name in items if name not in index]
        matched = [(m, index[n]) for n, m in items.items() if n in index]
        bad = [msg for m, ref in matched if (msg := module_mismatch(m, ref.module))]
        if not matched or bad:
            raise ModelLoadError(_no_fit_message(lora, unmatched, bad))
        with torch.no_grad():
            for module, ref in matched:
                multiplier = ratio * _block_weight(blocks, block_weights, ref, unet)
                weight = ref.module.weight
                dora_scale = lora.dora_scales.get(module.name)
                if dora_scale is None:
                    weight.copy_(module_merged_weight(weight, module, multiplier))
                else:
                    weight.copy_(dora_merged_weight(weight, module, dora_scale, multiplier))
        if unmatched:
            logger.warning(
                "%s: %d modules match no layer of the model, e.g. %s",
                lora.source,
                len(unmatched),
                unmatched[:3],
            )
        report.entries.append(
            {"source": lora.source, "ratio": ratio, "merged": len(matched), "unmatched": unmatched}
        )
    return report


def module_mismatch(module: LoraModule | LycorisModule, layer: torch.nn.Module | torch.Tensor) -> str | None:
    """:func:`layer_mismatch` for LoRA modules; LoHa / LoKr fit when ΔW's (out, in·k) equals the layer's."""
    if isinstance(module, LoraModule):
        return layer_mismatch(module, layer)
    weight = layer if isinstance(layer, torch.Tensor) else layer.weight
    if module.shape2d == (weight.shape[0], weight[0].numel()):
        return None
    return (
        f"{module.name}: {module.kind} ΔW (out, in·k) {module.shape2d} vs layer weight {tuple(weight.shape)}"
    )


def module_merged_weight(weight: torch.Tensor, module: LoraModule | LycorisModule, multiplier: float) -> torch.Tensor:
    """W + multiplier · ΔW in ``weight``'s dtype (LoRA through ``merged_weight``, LoHa/LoKr through lycoris_math)."""
    if isinstance(module, LoraModule):
        return merged_weight(weight, module.down, module.up, module.alpha, multiplier)
    delta = module.delta(multiplier).reshape(weight.shape)
    return (weight.float() + delta).to(weight.dtype)


def dora_merged_weight(weight: torch.Tensor, module, dora_scale: torch.Tensor, multiplier: float) -> torch.Tensor:
    """A DoRA module at strength ``multiplier``: W + multiplier · (D − W), D = (W + ΔW) · m / ‖W + ΔW‖.

    The norm is per output row when the magnitude ``m`` (``.dora_scale``) has one value per output
    channel, else per input column (LyCORIS' ``wd_on_out``). The strength blends the whole decomposed
    weight, as AUTOMATIC1111 and ComfyUI apply a DoRA at a strength (at 1 all of them agree).
    """
    full = module_merged_weight(weight, module, 1.0).float()
    magnitude = dora_scale.float().to(full.device)
    if magnitude.shape[0] == full.shape[0] and magnitude.numel() == full.shape[0]:
        norm = full.reshape(full.shape[0], -1).norm(dim=1).reshape(magnitude.shape)
    else:
        norm = full.transpose(0, 1).reshape(full.shape[1], -1).norm(dim=1).reshape(magnitude.shape)
    decomposed = full * (magnitude / (norm + torch.finfo(torch.float32).eps))
    return (weight.float() + multiplier * (decomposed - weight.float())).to(weight.dtype)


def _block_weight(blocks: UnetBlocks | None, weights: dict | None, ref: LayerRef, unet) -> float:
    if weights and (unet is None or ref.part != unet.name):  # text encoders: a LoRA Block Weight BASE, else 1
        return weights.get(TEXT_ENCODER_KEY, 1.0)
    if blocks is None or ref.part != unet.name:
        return 1.0
    block = blocks.block_of_path(ref.path)
    return 1.0 if block is None else weights[block]


def _no_fit_message(lora: LoraFile, unmatched: list[str], bad: list[str]) -> str:
    if bad:
        return (
            f"{lora.source} does not fit this model: {len(bad)} modules have other shapes ({'; '.join(bad[:3])}). "
            "Is it a LoRA for another base model (SD1 vs SD2 vs SDXL)? Check it with tools/inspect_lora.py --check."
        )
    return (
        f"No module of {lora.source} matches a layer of this model (e.g. {', '.join(unmatched[:3]) or 'no modules'}). "
        "Is it a LoRA for another architecture (SDXL, SD3, Flux)?"
    )


def merge_into_checkpoint(
    sd_model: str,
    models: list[str],
    ratios: list[float] | None,
    save_to: str,
    *,
    save_precision: str | None = None,
    v2: bool | None = None,
    block_weights: list[float] | None = None,
    allow_unsafe_pickle: bool = False,
) -> MergeReport:
    """Load ``sd_model``, merge the LoRA files at ``ratios``, save to ``save_to`` (file or diffusers folder)."""
    from library.tools.models import checkpoint
    from library.tools.models.common import precision_dtype
    from library.tools.models.layers import parse_block_weights, precheck_block_weights
    from library.tools.models.part_files import merge_into_part_files, part_file_family

    ratios = check_ratios(models, ratios)
    if block_weights:
        precheck_block_weights(block_weights)
    part_family = part_file_family(sd_model)
    if part_family is not None:  # e.g. a FLUX.1 transformer file: merged key by key, as its --flux_model
        option = part_family.part_file_options["unet"]
        return merge_into_part_files({option: sd_model}, {option: save_to}, models, ratios,
                                     save_precision=save_precision, block_weights=block_weights)
    dtype = precision_dtype(save_precision)
    loras = [
        (lora_file.read_lora(path, allow_lycoris=True, allow_dora=True), ratio)
        for path, ratio in zip(models, ratios, strict=True)
    ]
    loaded = checkpoint.load_model(sd_model, v2=v2, allow_unsafe_pickle=allow_unsafe_pickle)
    model = loaded.model
    family = model.adapter
    for lora, _ in loras:
        lora_file.check_lora_family(lora, family, f"{Path(sd_model).name} is a {family.name} model")
    layout = family.block_layout
    weights = parse_block_weights(block_weights, layout, family.name) if block_weights else None
    report = merge_into_parts(keys.model_parts(model), loras, block_weights=weights, layout=layout)
    require_finite_model(
        model,
        f"The merge of {', '.join(Path(m).name for m in models)} into {Path(sd_model).name}",
        MERGE_NAN_FIX,
    )
    merged_from = ", ".join(f"{Path(p).name}:{r}" for p, r in zip(models, ratios, strict=True))
    checkpoint.save_model(
        model,
        save_to,
        dtype=dtype or loaded.source_dtype or torch.float32,
        prediction_type=loaded.prediction_type,
        extra_metadata={"modelspec.merged_from": f"{Path(sd_model).name} + {merged_from}"},
    )
    return report


MERGE_NAN_FIX = (
    "Nothing was saved. The base model may already hold NaN/inf weights (use another copy), or the ratios "
    "are too strong: check the LoRAs with tools/inspect_lora.py and use lower ratios."
)


def require_finite_model(model, what: str, fix: str = "Use an undamaged copy of the model.") -> None:
    """ModelLoadError naming the first weights of ``model`` (a BaseModel) that hold NaN/inf."""
    from library.util.tensor_checks import require_finite_tensors

    for part, module in model.parts.items():
        require_finite_tensors(module.state_dict(), f"{what} ({part})", fix)


def module_block(name: str, layout: BlockLayout = SD_LAYOUT) -> str | None:
    """The block ("IN01", "M00", "OUT11", …; SDXL also "BASE", "M02", "OUT") of a UNet LoRA module by its
    name in ``layout`` (default SD1/SD2's 25 blocks), else None.

    Numbered by the layout's ``index_of`` (sd-scripts' / the webui's numbering); SD's ``conv_in`` is IN00
    (LDM ``input_blocks.0``), as in checkpoint merges (:class:`library.tools.models.layers.UnetBlocks`),
    though LoRA trainers rarely adapt it.
    """
    if name == keys.UNET_PREFIX + "_conv_in":
        return layout.names[layout.leading]
    if not name.startswith(keys.UNET_PREFIX + "_"):
        return None
    index = layout.index_of(name)
    return None if index is None else layout.names[index]


def module_block_weight(
    name: str, block_weights: dict[str, float] | None, layout: BlockLayout = SD_LAYOUT
) -> float:
    """The block weight of a LoRA module (:func:`module_block`); the ``"TE"`` weight (a LoRA Block Weight
    BASE) or 1 for text-encoder modules; 1 for UNet
    modules outside the numbered blocks (SD: time embedding, conv_out) or without ``block_weights``."""
    block = module_block(name, layout) if block_weights else None
    if block is None and block_weights and not name.startswith(keys.UNET_PREFIX + "_"):
        return block_weights.get(TEXT_ENCODER_KEY, 1.0)  # text encoders: a LoRA Block Weight BASE, else 1
    return 1.0 if block is None else block_weights[block]


def concat_modules(
    loras: list[tuple[LoraFile, float]],
    block_weights: dict[str, float] | None = None,
    layout: BlockLayout = SD_LAYOUT,
) -> dict[str, LoraModule]:
    """One module per name holding Σ ratio_i · w_block · ΔW_i exactly, rank = Σ ranks, alpha = rank (scale 1).

    ``block_weights`` ({"IN00": w, …}, blocks of ``layout``) scales each UNet module's contribution by its
    block's weight.
    """
    grouped: dict[str, list[tuple[LoraModule, float]]] = collections.defaultdict(list)
    for lora, ratio in loras:
        for name, module in lora.modules.items():
            grouped[name].append((module, ratio * module_block_weight(name, block_weights, layout)))
    out = {}
    for name, parts in grouped.items():
        shapes = {(m.out_features, m.in_features, m.kernel) for m, _ in parts}
        if len(shapes) > 1:
            raise ModelLoadError(
                f"{name} has different layer shapes in the files ({sorted(shapes)}); the LoRAs are for "
                "different base models and cannot be merged."
            )
        downs, ups = [], []
        for module, ratio in parts:
            c = ratio * module.scale
            root = math.sqrt(abs(c))
            downs.append(module.down.float() * root)
            ups.append(module.up.float() * (root if c >= 0 else -root))
        down, up = torch.cat(downs, 0), torch.cat(ups, 1)
        out[name] = LoraModule(name, down, up, float(down.shape[0]))
    return out


def merge_lora_files(
    models: list[str],
    ratios: list[float] | None,
    save_to: str | os.PathLike,
    *,
    new_rank: int | None = None,
    new_conv_rank: int | None = None,
    save_precision: str | None = None,
    device: str | None = None,
    block_weights: list[float] | str | None = None,
) -> tuple[Path, list]:
    """Merge LoRA files into one: concatenated ranks, or SVD to ``new_rank`` (``new_conv_rank`` for 3x3 convs).

    ``block_weights``: one weight per UNet block of the files' family (SD1/SD2: 25, IN00–IN11, M00,
    OUT00–OUT11; SDXL: 23, BASE, IN00–IN08, M00–M02, OUT00–OUT08, OUT) scaling each module's
    contribution (see :func:`module_block_weight`). LoHa / LoKr files are refused (their ΔW has no
    exact LoRA form): merge them into a checkpoint instead. Returns (path, per-module resize rows, empty without SVD). Metadata: the first file's minimal
    ``ss_*`` and ``modelspec.*`` keys, ranks updated, ``modelspec.merged_from`` listing the inputs.
    """
    from library.tools.models.common import precision_dtype
    from library.tools.models.layers import parse_block_weights, precheck_block_weights
    from library.tools.models.resize_lora import resize_modules

    ratios = check_ratios(models, ratios)
    if block_weights is not None:
        precheck_block_weights(block_weights)
    loras = [lora_file.read_lora(path, allow_lycoris=True) for path in models]
    for lora in loras:
        if lora.lycoris:
            raise ModelLoadError(
                f"{lora.source} is a {lora.network_type} file: its ΔW has no exact LoRA (up · down) form, so it "
                "cannot be merged into a LoRA. Merge it into a checkpoint with --sd_model instead."
            )
    family = lora_file.common_lora_family(loras)
    layout = family.block_layout if family is not None else SD_LAYOUT
    weights = None
    if block_weights is not None:
        weights = parse_block_weights(block_weights, layout, family.name if family else "")
    modules = concat_modules(list(zip(loras, ratios, strict=True)), weights, layout)
    rows: list = []
    if new_rank is not None:
        modules, rows = resize_modules(modules, new_rank, new_conv_rank=new_conv_rank, device=device)
    dtype = precision_dtype(save_precision) or loras[0].dtype or torch.float32
    metadata = merged_metadata(loras[0].metadata, modules, models, ratios)
    return lora_file.save_lora(save_to, modules, metadata, dtype), rows


def merged_metadata(first: dict[str, str], modules: dict[str, LoraModule], models, ratios) -> dict[str, str]:
    """Minimal metadata for a merged / resized file, ranks and alphas from ``modules``."""
    from library.training.metadata import MINIMAL_KEYS

    meta = {k: v for k, v in first.items() if k in MINIMAL_KEYS or k.startswith("modelspec.")}
    linear = [m for m in modules.values() if not m.is_conv3x3]
    conv = [m for m in modules.values() if m.is_conv3x3]
    meta["ss_network_module"] = lora_network_module(first.get("ss_network_module"))
    if linear:
        meta["ss_network_dim"] = str(_most_common(m.rank for m in linear))
        meta["ss_network_alpha"] = str(_most_common(m.alpha for m in linear))
    if conv:
        args = _json_dict(meta.get("ss_network_args"))
        args.update(
            conv_dim=str(_most_common(m.rank for m in conv)),
            conv_alpha=str(_most_common(m.alpha for m in conv)),
        )
        meta["ss_network_args"] = json.dumps(args)
    if models:
        meta["modelspec.merged_from"] = ", ".join(
            f"{Path(p).name}:{r}" for p, r in zip(models, ratios, strict=True)
        )
    return meta


def lora_network_module(name: str | None) -> str:
    """The ``ss_network_module`` of a LoRA the tools write from a file that named ``name``: the same when it is
    a name of plain LoRA (``networks.lora``, FLUX's ``networks.lora_flux``), else ``networks.lora`` (a LyCORIS
    or other input becomes a plain LoRA)."""
    from library.networks import LORA, NETWORK_TYPES

    entry = NETWORK_TYPES.find(name) if name else None
    return name if entry is not None and entry.factory is LORA else "networks.lora"


def _json_dict(text: str | None) -> dict:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _most_common(values):
    return collections.Counter(values).most_common(1)[0][0]
