"""The LoRA tools on a family's separate part files, key by key: FLUX.1's transformer file in BFL's layout
(sd-scripts' ``--flux_model``), ``clip_l`` and ``t5xxl``, as sd-scripts' flux_merge_lora.py and
flux_extract_lora.py work on them.

A LoRA module patches the weight whose module path its name spells (:meth:`ModelFamily.part_file_key_path`:
``lora_unet_double_blocks_0_img_attn_qkv`` -> ``double_blocks.0.img_attn.qkv.weight``,
``lora_te1_text_model_encoder_layers_0_mlp_fc1`` -> clip_l's ``text_model.encoder.layers.0.mlp.fc1.weight``,
``lora_te3_encoder_block_0_layer_0_SelfAttention_q`` -> t5xxl's ``encoder.block.0.layer.0.SelfAttention.q.weight``).
Fused projections (FLUX's qkv, a single block's linear1 = q, k, v and the MLP input) are one weight and one LoRA
module, patched whole. A merge adds Σ ratio · ΔW in float32 and rounds once to each key's own dtype (or
``save_precision``); every other tensor, the key set and the file's metadata stay (``modelspec.merged_from`` is
added). An extract takes the layers a LoRA trainer adapts (the part built on the meta device by
:meth:`ModelFamily.part_file_module`, searched with the family's target blocks) and factorises each difference
by truncated SVD, as :mod:`library.tools.models.extract_lora` does for whole checkpoints.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import types
from dataclasses import dataclass
from pathlib import Path

import torch

from library.errors import ConfigError, ModelLoadError
from library.models.family import UNET_PART, ModelFamily, all_families
from library.networks import keys
from library.tools.models import lora_file
from library.tools.models.lora_file import LoraFile, LoraModule
from library.tools.models.merge_lora import (
    MERGE_NAN_FIX,
    MergeReport,
    check_ratios,
    dora_merged_weight,
    module_block_weight,
    module_merged_weight,
    module_mismatch,
)

logger = logging.getLogger(__name__)


def part_file_family(path: str | os.PathLike) -> ModelFamily | None:
    """The family of a ``.safetensors`` file when that family's checkpoints come as part files (a FLUX.1
    transformer file, also with ComfyUI's ``model.diffusion_model.`` prefix), read from its header only; None for
    anything else (whole checkpoints, folders, pickles, unreadable files)."""
    from library.util.safetensors_io import read_header

    path = Path(path)
    if not path.is_file() or path.suffix.lower() != ".safetensors":
        return None
    try:
        names = dict.fromkeys(k for k in read_header(path) if k != "__metadata__")
    except ModelLoadError:
        return None
    # asked directly: the SD families take any file with model.diffusion_model. keys for theirs
    return next((f for f in all_families() if f.part_file_options and f.detects_single_file(names)), None)


def family_of_options(options) -> ModelFamily:
    """The family whose :attr:`~ModelFamily.part_file_options` include every option (``flux_model``, ``clip_l``)."""
    options = set(options)
    for family in all_families():
        if options <= set(family.part_file_options.values()):
            return family
    raise ConfigError(f"No model family has the part files {', '.join(sorted(options))}.")


def lora_key_index(family: ModelFamily, part: str, file_keys) -> dict[str, str]:
    """{LoRA module name: weight key} of one part file: every key the family names a module weight."""
    prefix = family.lora_prefixes[part]
    index = {}
    for key in file_keys:
        path = family.part_file_key_path(part, key)
        if path is not None:
            index[keys.lora_name(prefix, path)] = key
    return index


def part_of_module(family: ModelFamily, name: str) -> str | None:
    """The part a LoRA module name belongs to, by the longest matching key prefix (``lora_te1`` over ``lora_te``)."""
    found = [
        (len(prefix), part) for part, prefix in family.lora_prefixes.items() if name.startswith(prefix + "_")
    ]
    return max(found)[1] if found else None


@dataclass
class PartFile:
    """One part file being merged: its option (``flux_model``), part (``unet``), tensors, metadata, key index."""

    option: str
    part: str
    source: Path
    save_to: Path | None
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    index: dict[str, str]


def load_part_file(family: ModelFamily, option: str, source, save_to=None) -> PartFile:
    """Read one part file; a transformer file of another family (or none) is refused naming both."""
    from library.models.safe_load import load_state_dict_file

    part = next(p for p, o in family.part_file_options.items() if o == option)
    tensors, metadata = load_state_dict_file(source)
    if part == UNET_PART and not family.detects_single_file(tensors):
        from library.models.family import family_of_single_file

        other = family_of_single_file(tensors)
        what = f"a {other.name} checkpoint" if other is not None else "not a model file of a known family"
        raise ModelLoadError(
            f"--{option} {source} is {what}, not a {family.label} transformer file ({family.description}). Give "
            f"the {family.label} transformer file as --{option}, or merge into a whole checkpoint with --sd_model."
        )
    index = lora_key_index(family, part, tensors)
    return PartFile(option, part, Path(source), Path(save_to) if save_to else None, tensors, metadata, index)


def merge_into_part_files(
    files: dict[str, str],
    save_to: dict[str, str],
    models: list[str],
    ratios: list[float] | None,
    *,
    save_precision: str | None = None,
    device: str | None = None,
    block_weights: list[float] | str | None = None,
):
    """Merge LoRA files at ``ratios`` into part files: ``files`` / ``save_to`` map options (``flux_model``,
    ``clip_l``, ``t5xxl``) to paths. Returns a :class:`~library.tools.models.merge_lora.MergeReport`.
    ``block_weights``: one weight per block of the family's layout (FLUX: D00–D18, S00–S37) scaling the
    transformer's modules; text-encoder modules keep the plain ratio. ``device``: where ΔW is computed.

    Each patched weight is W + Σ ratio · ΔW in float32, rounded once to its output dtype, one weight at a time
    (memory: the files plus one float32 weight). Raises ConfigError for an input without its destination (or
    the reverse), ModelLoadError for a LoRA of another family, a LoRA whose modules match no weight of the files,
    a module whose shape does not fit its weight (named), and NaN/inf results (nothing is written then).
    """
    from library.tools.models.common import precision_dtype
    from library.util.tensor_checks import require_finite_tensors

    files = {o: p for o, p in files.items() if p}
    save_to = {o: p for o, p in save_to.items() if p}
    if not files:
        raise ConfigError("Give at least one model file to merge into (e.g. --flux_model).")
    family = family_of_options(files)
    _check_destinations(family, files, save_to)
    ratios = check_ratios(models, ratios)
    weights = None
    if block_weights is not None:
        from library.tools.models.layers import parse_block_weights

        weights = parse_block_weights(block_weights, family.block_layout, family.name)
    dtype = precision_dtype(save_precision)
    loras = [
        (lora_file.read_lora(p, allow_lycoris=True, allow_dora=True), r)
        for p, r in zip(models, ratios, strict=True)
    ]
    transformer = files.get(family.part_file_options[UNET_PART])
    what = (
        f"{Path(transformer).name} is a {family.name} model"
        if transformer
        else f"the files are {family.name} parts"
    )
    for lora, _ in loras:
        lora_file.check_lora_family(lora, family, what)
    parts = {pf.part: pf for pf in (load_part_file(family, o, p, save_to[o]) for o, p in files.items())}
    report = MergeReport()
    plan: dict[tuple[str, str], list] = {}  # (part, key) -> [(module, multiplier, dora scale)] in file order
    for lora, ratio in loras:
        matched, unmatched, no_file = _match(family, parts, lora)
        for option, names in no_file.items():
            logger.warning(
                "%s: %d modules not merged: no --%s file given (e.g. %s)",
                lora.source,
                len(names),
                option,
                names[0],
            )
        if unmatched:
            logger.warning(
                "%s: %d modules match no weight of the files, e.g. %s",
                lora.source,
                len(unmatched),
                unmatched[:3],
            )
        for module, pf, key in matched:
            multiplier = ratio * module_block_weight(module.name, weights, family.block_layout)
            plan.setdefault((pf.part, key), []).append(
                (module, multiplier, lora.dora_scales.get(module.name))
            )
        skipped = [n for names in no_file.values() for n in names]
        report.entries.append(
            {"source": lora.source, "ratio": ratio, "merged": len(matched), "unmatched": unmatched + skipped}
        )
    merged = {}
    for (part, key), contributions in plan.items():
        tensor = parts[part].tensors[key]
        weight = _apply(tensor.to(device or "cpu", torch.float32), contributions, device)
        require_finite_tensors(
            {f"--{parts[part].option} {key}": weight},
            f"The merge of {', '.join(Path(m).name for m in models)}",
            MERGE_NAN_FIX,
        )
        merged[(part, key)] = weight.to("cpu", dtype if dtype is not None else tensor.dtype)
    for (part, key), weight in merged.items():
        parts[part].tensors[key] = weight
    merged_from = ", ".join(f"{Path(p).name}:{r}" for p, r in zip(models, ratios, strict=True))
    for pf in parts.values():
        _write_part_file(pf, dtype, merged_from)
    return report


def _check_destinations(family: ModelFamily, files: dict, save_to: dict) -> None:
    lonely = sorted(set(files) ^ set(save_to))
    if lonely:
        option = lonely[0]
        raise ConfigError(
            f"--{option} and its destination go together: {'no destination' if option in files else 'no input'} "
            f"for {option}. Give both --{option} and {save_option(family, option)}."
        )
    bad = sorted(
        f"{save_option(family, o)} {p}"
        for o, p in save_to.items()
        if Path(p).suffix.lower() != ".safetensors"
    )
    if bad:
        raise ConfigError(
            f"{bad[0]}: a merged part file is written as .safetensors, as its input; give a "
            "destination ending in .safetensors."
        )


def save_option(family: ModelFamily, option: str) -> str:
    """The destination option of a part file's option: ``--save_to`` for the transformer, ``--clip_l_save_to`` …"""
    return "--save_to" if option == family.part_file_options[UNET_PART] else f"--{option}_save_to"


def _match(family, parts: dict[str, PartFile], lora: LoraFile):
    """(matched [(module, part file, key)], unmatched names, {option: names of parts without a file}); raises
    ModelLoadError when nothing matches or a module's shape does not fit its weight."""
    matched, unmatched, no_file = [], [], {}
    for name, module in {**lora.modules, **lora.lycoris}.items():
        part = part_of_module(family, name)
        pf = parts.get(part)
        key = pf.index.get(name) if pf is not None else None
        if pf is None and part is not None:
            no_file.setdefault(family.part_file_options[part], []).append(name)
        elif key is None:
            unmatched.append(name)
        else:
            matched.append((module, pf, key))
    bad = [msg for module, pf, key in matched if (msg := module_mismatch(module, pf.tensors[key]))]
    if bad or not matched:
        raise ModelLoadError(_no_fit_message(lora, family, parts, unmatched, bad, no_file))
    return matched, unmatched, no_file


def _apply(weight: torch.Tensor, contributions: list, device) -> torch.Tensor:
    """W (float32) with every (module, multiplier, DoRA magnitude) added in turn."""
    with torch.no_grad():
        for module, multiplier, dora_scale in contributions:
            if device is not None and isinstance(module, LoraModule):
                module = dataclasses.replace(module, down=module.down.to(device), up=module.up.to(device))
            if dora_scale is None:
                weight = module_merged_weight(weight, module, multiplier)
            else:
                weight = dora_merged_weight(weight, module, dora_scale, multiplier)
    return weight


def _no_fit_message(lora, family, parts, unmatched, bad, no_file) -> str:
    names = ", ".join(f"--{pf.option} {pf.source.name}" for pf in parts.values())
    if bad:
        return (
            f"{lora.source} does not fit {names}: {len(bad)} modules have other shapes ({'; '.join(bad[:3])}). Is it a "
            f"LoRA for another {family.label} size or variant? Check it with tools/inspect_lora.py."
        )
    if no_file and not unmatched:
        options = ", ".join(f"--{o}" for o in sorted(no_file))
        return (
            f"{lora.source} only has modules for parts whose files were not given ({options}); give "
            f"{options} with {', '.join(save_option(family, o) for o in sorted(no_file))}."
        )
    return (
        f"No module of {lora.source} matches a weight of {names} (e.g. {', '.join(unmatched[:3]) or 'no modules'}). "
        f"The LoRA's names are not the {family.label} files' module paths: is it a LoRA in another key layout "
        "(diffusers / ai-toolkit names) or for another model?"
    )


def _write_part_file(pf: PartFile, dtype: torch.dtype | None, merged_from: str) -> Path:
    """The part file with its merged weights, each key in its own dtype (or ``dtype`` for floating tensors)."""
    from library.models.single_file import write_checkpoint

    state = {
        key: tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
        for key, tensor in pf.tensors.items()
    }
    metadata = {**pf.metadata, "modelspec.merged_from": f"{pf.source.name} + {merged_from}"}
    return write_checkpoint(pf.save_to, state, metadata)


# --- extract -----------------------------------------------------------------------------------------------


def extract_from_part_files(
    model_org: str,
    model_tuned: str,
    save_to: str | os.PathLike,
    *,
    dim: int = 4,
    clamp_quantile: float | None = None,
    save_precision: str | None = None,
    device: str | None = None,
):
    """A LoRA for tuned − org of two transformer files of a part-file family (FLUX.1, BFL layout).

    One module per layer a LoRA trainer adapts (the family's target blocks: FLUX's double and single blocks),
    named as the trainer names it; up·down = U_k S_k V_kᵀ with alpha = k. Metadata: the family's
    ``ss_base_model_version``, ``ss_network_module`` and ``modelspec.architecture`` (``flux-1-dev/lora`` or
    ``flux-1-schnell/lora``, from the original file). Returns (path, ExtractReport).
    """
    from library.models.safe_load import load_state_dict_file
    from library.tools.models.common import precision_dtype
    from library.tools.models.extract_lora import ExtractReport, check_extract_options, extract_difference

    clamp_quantile = check_extract_options(dim, None, clamp_quantile)
    dtype = precision_dtype(save_precision) or torch.float32
    family = part_file_family(model_org)
    tuned_family = part_file_family(model_tuned)
    if family is None or tuned_family is not family:
        raise ModelLoadError(
            f"{model_org} and {model_tuned} must both be transformer files of one family; "
            f"they are {_family_text(model_org)} and {_family_text(model_tuned)}."
        )
    org, _ = load_state_dict_file(model_org)
    tuned, _ = load_state_dict_file(model_tuned)
    module = family.part_file_module(UNET_PART, org)
    part = keys.NetworkPart(
        UNET_PART,
        family.lora_prefixes[UNET_PART],
        module,
        True,
        family.unet_key_path(module),
        blocks=family.unet_target_blocks,
        conv_blocks=family.unet_conv_target_blocks,
    )
    index = lora_key_index(family, UNET_PART, org)
    report = ExtractReport()
    modules = {}
    for target in part.targets():
        key = index.get(target.lora_name)
        if key is None or key not in tuned or tuned[key].shape != org[key].shape:
            raise ModelLoadError(
                f"The models differ in architecture at {key or target.module_path} ({tuple(org[key].shape) if key else '?'} "
                f"vs {tuple(tuned[key].shape) if key in tuned else 'missing'} in {model_tuned}); extract needs the "
                "tuned model and the model it was tuned from."
            )
        diff = tuned[key].float() - org[key].float()
        modules[target.lora_name], s = extract_difference(target.lora_name, diff, dim, clamp_quantile, device,
                                                           report)
        report.ranks[target.lora_name], report.singular_values[target.lora_name] = (
            modules[target.lora_name].rank,
            s,
        )
    report.part_counts[UNET_PART] = len(modules)
    metadata = lora_file.network_metadata(
        family=family.name,
        v_parameterization=False,
        dim=dim,
        alpha=dim,
        title=Path(save_to).stem,
        resolution=family.default_resolution,
        architecture=family.architecture(False, types.SimpleNamespace(unet=module)),
        extra={
            "ss_sd_model_name": Path(model_org).name,
            "ss_training_comment": f"extracted from {Path(model_tuned).name} - {Path(model_org).name}",
        },
    )
    return lora_file.save_lora(save_to, modules, metadata, dtype), report


def _family_text(path) -> str:
    from library.models.peek import UnknownFamily, detect_family

    try:
        return f"a {detect_family(str(path)).name} model ({Path(path).name})"
    except UnknownFamily as reason:
        return f"unknown ({reason})"


# --- inspect --check ---------------------------------------------------------------------------------------


def check_against_part_file(lora: LoraFile, base_model: str, family: ModelFamily):
    """:class:`~library.tools.models.inspect_lora.BaseCheck` of a LoRA against a transformer file: its
    transformer modules by key and shape; text-encoder modules are not in that file (counted as unknown only
    when they are not another part's)."""
    from library.models.safe_load import load_state_dict_file
    from library.tools.models.inspect_lora import BaseCheck

    tensors, _ = load_state_dict_file(base_model)
    result = BaseCheck(str(base_model), family=family.name)
    found = lora_file.lora_family(lora)
    if found is not None and found.lora_layout() != family.lora_layout():
        result.family_problem = (
            f"the LoRA is for {lora_file.layout_family_names(found)} but {Path(base_model).name} is a "
            f"{family.name} model"
        )
    index = lora_key_index(family, UNET_PART, tensors)
    modules = {**lora.modules, **lora.lycoris}
    for name, module in modules.items():
        part = part_of_module(family, name)
        if part is not None and part != UNET_PART:
            result.other_parts += 1
            continue
        key = index.get(name)
        if key is None:
            result.unknown.append(name)
        elif problem := module_mismatch(module, tensors[key]):
            result.mismatched.append(problem)
        else:
            result.matched += 1
    transformer = family.part_file_module(UNET_PART, tensors)
    part = keys.NetworkPart(
        UNET_PART,
        family.lora_prefixes[UNET_PART],
        transformer,
        True,
        family.unet_key_path(transformer),
        blocks=family.unet_target_blocks,
    )
    result.uncovered_targets = sum(t.lora_name not in modules for t in part.targets())
    return result
