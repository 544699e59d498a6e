"""Inspect a LoRA file: type, ranks and alphas, target architecture, metadata, hashes, fit to a base model.

LoHa / LoKr modules (LyCORIS) are reported like LoRA ones: rank = the factor rank
(``hada_w1_b.shape[0]``; a LoKr factor's inner size, "full" when both Kronecker sides are whole),
alpha as stored.

Hashes as the webui and model sites show them (library.tools.models.hashes): ``sha256`` of the whole
file (its first 10 hex digits are Civitai's "AutoV2"); the webui's legacy 8-digit ``model_hash``; the
additional-networks model hash = sha256 of the tensor data after the safetensors header
(``sshs_model_hash``; first 12 hex digits = the webui's LoRA short hash / Civitai "AutoV3"); the
extension's legacy hash (``sshs_legacy_hash``, taken as if the file held only its ``ss_*`` metadata).
Stored hashes are compared with the computed ones.
"""

from __future__ import annotations

import collections
import datetime
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from library.networks import keys
from library.tools.models.hashes import hash_file
from library.tools.models.lora_file import (
    LoraFile,
    LoraModule,
    foreign_network_type,
    layout_family_names,
    lora_family,
    read_lora,
)
from library.tools.models.lycoris_file import LycorisModule
from library.util.safetensors_io import LEGACY_HASH_KEY, MODEL_HASH_KEY

#: cross-attention / text width -> architecture, from the first text-encoder or attn2.to_k module.
WIDTH_ARCH = {768: "SD1", 1024: "SD2", 2048: "SDXL"}
_TE_PREFIX = re.compile(r"^(lora_te\d*)_")
TIME_KEYS = ("ss_training_started_at", "ss_training_finished_at")
JSON_KEYS = ("ss_network_args", "ss_dataset_dirs", "ss_reg_dataset_dirs")


@dataclass
class BaseCheck:
    """How the LoRA fits a base model (``family``: the base's; ``family_problem``: a LoRA of another family)."""

    base: str
    matched: int = 0
    unknown: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    uncovered_targets: int = 0
    family: str = ""
    family_problem: str = ""
    #: modules of parts the base file does not hold (a FLUX transformer file has no clip_l / t5xxl)
    other_parts: int = 0

    @property
    def ok(self) -> bool:
        return not self.unknown and not self.mismatched and not self.family_problem


@dataclass
class Inspection:
    path: str
    network_type: str
    n_unet: int
    n_text_encoder: int
    ranks: dict[int, int]
    conv_ranks: dict[int, int]
    alphas: dict[float, int]
    alpha_defaulted: int
    dtype: str
    architecture: str
    architecture_reason: str
    metadata: dict[str, str]
    hashes: dict[str, str]
    hash_problems: list[str]
    other_keys: list[str]
    check: BaseCheck | None = None
    #: modules per key prefix (``lora_te1`` / ``lora_te2`` / ``lora_unet`` …)
    prefix_counts: dict[str, int] = field(default_factory=dict)
    #: the families whose key layout the file is in ("sd1/sd2", "sdxl"; "" unknown)
    fits: str = ""
    base_model_version: str = ""
    #: damaged modules ("name: NaN/inf values in lora_up.weight", rank mismatches, ...); empty when sound
    problems: list[str] = field(default_factory=list)
    #: denoiser modules per block of the family's layout ({"D00": 10, "S00": 3}; SD "IN01" …), "other" outside
    block_counts: dict[str, int] = field(default_factory=dict)
    #: the family's block names in short ("D00–D18, S00–S37"), "" when the family is unknown
    block_layout: str = ""


def file_hashes(path: str | os.PathLike) -> dict[str, str]:
    """{"sha256", "autov2", "legacy_hash", "model_hash", "autov3", "sshs_legacy_hash"} of a safetensors file
    (see library.tools.models.hashes)."""
    return hash_file(path).as_dict()


def guess_architecture(lora: LoraFile, key_names) -> tuple[str, str]:
    """("SD1"/"SD2"/"SDXL"/"FLUX.1"/"unknown", why): a key layout only one family has names it (with the
    file's ``modelspec.architecture`` when that is the family's, e.g. FLUX.1's dev / schnell); SD1 and SD2 share
    theirs and are told apart by widths or metadata."""
    family = _distinct_family(lora)
    if family is not None:
        prefixes = "/".join(f"{p}_" for p in sorted(family.lora_prefixes.values()))
        why = f"{family.name} key layout ({prefixes}, lora_unet_{'/'.join(family.lora_unet_markers)} names)"
        declared = lora.metadata.get("modelspec.architecture", "").removesuffix("/lora")
        if declared and lora.metadata.get("ss_base_model_version") == family.base_model_version:
            return family.label, f"{why}; modelspec.architecture {declared}"
        return family.label, why
    for name, module in {**lora.modules, **lora.lycoris}.items():
        width = module.in_features if isinstance(module, LoraModule) else module.shape2d[1]
        if name.startswith(keys.TE_PREFIX + "_") and name.endswith("q_proj"):
            if width in WIDTH_ARCH:
                return WIDTH_ARCH[width], f"text encoder width {width}"
        if name.endswith("attn2_to_k") and width in WIDTH_ARCH:
            return WIDTH_ARCH[width], f"cross-attention width {width}"
    meta = lora.metadata
    arch = meta.get("modelspec.architecture", "")
    if arch.startswith("stable-diffusion-v2") or meta.get("ss_base_model_version", "").startswith("sd_v2"):
        return "SD2", "metadata (modelspec.architecture / ss_base_model_version)"
    if arch.startswith("stable-diffusion-v1") or meta.get("ss_base_model_version", "").startswith("sd_v1"):
        return "SD1", "metadata (modelspec.architecture / ss_base_model_version)"
    if meta.get("ss_v2") in ("True", "False"):
        return ("SD2" if meta["ss_v2"] == "True" else "SD1"), "metadata ss_v2"
    return "unknown", "no known widths and no architecture metadata"


def _distinct_family(lora: LoraFile):
    """The family whose layout (shared with no other family) the file is in, or that some of its denoiser
    modules are named in (a mixed file); None for SD1/SD2's shared layout and unknown names."""
    from library.models.family import UNET_PART, all_families

    family = lora_family(lora)
    if family is not None and "/" not in layout_family_names(family):
        return family
    names = [*lora.modules, *lora.lycoris]
    for candidate in all_families():
        if "/" in layout_family_names(candidate):
            continue
        unet = tuple(f"{candidate.lora_prefixes[UNET_PART]}_{marker}" for marker in candidate.lora_unet_markers)
        if unet and any(name.startswith(unet) for name in names):
            return candidate
    return None


def readable_metadata(metadata: dict[str, str], top_tags: int = 10) -> dict[str, str]:
    """Metadata for people: timestamps as dates, JSON compacted, tag frequencies as top tags per folder."""
    out = {}
    for key, value in sorted(metadata.items()):
        if key in (MODEL_HASH_KEY, LEGACY_HASH_KEY) or key.startswith("sdtrain."):
            continue
        if key in TIME_KEYS:
            try:
                value = datetime.datetime.fromtimestamp(float(value)).isoformat(sep=" ", timespec="seconds")
            except (ValueError, OverflowError, OSError):
                pass
        elif key == "ss_tag_frequency":
            value = _top_tags(value, top_tags)
        elif key == "modelspec.thumbnail" and value.startswith("data:"):
            value = _data_url_summary(value)
        elif key in JSON_KEYS:
            try:
                value = json.dumps(json.loads(value), ensure_ascii=False)
            except ValueError:
                pass
        out[key] = value if len(value) <= 400 else value[:400] + "…"
    return out


def _data_url_summary(value: str) -> str:
    """"data:image/jpeg;base64,…" -> "image/jpeg picture, 12.3 KiB (data URL)"."""
    head, _, data = value.partition(",")
    mime = head[5:].split(";")[0] or "text/plain"
    size = len(data) * 3 // 4 if head.endswith(";base64") else len(data)
    return f"{mime} picture, {size / 1024:.1f} KiB (data URL)"


def _top_tags(value: str, n: int) -> str:
    try:
        folders = json.loads(value)
    except ValueError:
        return value
    parts = []
    for folder, tags in folders.items():
        best = sorted(tags.items(), key=lambda kv: -kv[1])[:n]
        parts.append(f"{folder}: " + ", ".join(f"{t} ({c})" for t, c in best))
    return "; ".join(parts)


def check_against_base(lora: LoraFile, base_model: str, *, allow_unsafe_pickle: bool = False) -> BaseCheck:
    """Which LoRA modules match a layer of ``base_model`` (any family: its parts named as its LoRA files
    name them) with the right shape."""
    from library.models.loading import load_base_model
    from library.tools.models.layers import model_layer_index
    from library.tools.models.lora_file import lora_family
    from library.tools.models.merge_lora import module_mismatch
    from library.tools.models.part_files import check_against_part_file, part_file_family

    part_family = part_file_family(base_model)
    if part_family is not None:  # a FLUX.1 transformer file: checked key by key, without its other parts
        return check_against_part_file(lora, base_model, part_family)
    model = load_base_model(base_model, allow_unsafe_pickle=allow_unsafe_pickle)
    index = model_layer_index(model)
    result = BaseCheck(str(base_model), family=model.family)
    found = lora_family(lora)
    if found is not None and found.lora_layout() != model.adapter.lora_layout():
        result.family_problem = (
            f"the LoRA is for {layout_family_names(found)} but {Path(base_model).name} is a {model.family} model"
        )
    modules = {**lora.modules, **lora.lycoris}
    for name, module in modules.items():
        ref = index.get(name)
        if ref is None:
            result.unknown.append(name)
        elif problem := module_mismatch(module, ref.module):
            result.mismatched.append(problem)
        else:
            result.matched += 1
    targets = [t for part in keys.model_parts(model) for t in part.targets()]
    result.uncovered_targets = sum(t.lora_name not in modules for t in targets)
    return result


def prefix_counts(names) -> dict[str, int]:
    """Modules per key prefix: {"lora_te1": 44, "lora_te2": 64, "lora_unet": 700} (text encoders first)."""
    counts = collections.Counter(_prefix_of(name) for name in names)
    return dict(sorted(counts.items(), key=lambda kv: (kv[0] == keys.UNET_PREFIX, kv[0])))


def _prefix_of(name: str) -> str:
    if name.startswith(keys.UNET_PREFIX + "_"):
        return keys.UNET_PREFIX
    match = _TE_PREFIX.match(name)
    return match.group(1) if match else name.split("_", 1)[0]


def inspect_lora(
    path: str | os.PathLike, base_model: str | None = None, *, allow_unsafe_pickle: bool = False
) -> Inspection:
    """Everything the inspector reports about ``path`` (and its fit to ``base_model`` when given)."""
    from library.tools.models.lora_file import read_tensor_file

    state_dict, _ = read_tensor_file(path)
    damaged: list[str] = []
    lora = read_lora(state_dict, allow_other_types=True, allow_lycoris=True, problems=damaged)
    lora.source, lora.metadata = str(path), _metadata_of(path)
    prefixes = tuple(name + "." for name in lora.lycoris)
    foreign = foreign_network_type({k: v for k, v in state_dict.items() if not k.startswith(prefixes)})
    if not lora.modules and not lora.lycoris and not foreign and not damaged:
        read_lora(path)  # raises the "not a LoRA" error naming what the file holds
    every = [*lora.modules.values(), *lora.lycoris.values()]
    linear = [_rank(m) for m in every if not m.is_conv3x3]
    conv = [_rank(m) for m in every if m.is_conv3x3]
    has_modules = bool(lora.modules or lora.lycoris)
    network_type = (
        lora.network_type if not foreign else (f"{lora.network_type} + {foreign}" if has_modules else foreign)
    )
    arch, reason = guess_architecture(lora, state_dict)
    family = lora_family(lora)
    blocks, layout = block_counts(family, [*lora.modules, *lora.lycoris])
    hashes, problems = {}, []
    if Path(path).suffix.lower() == ".safetensors":
        hashes = file_hashes(path)
        for meta_key, ours in ((MODEL_HASH_KEY, "model_hash"), (LEGACY_HASH_KEY, "sshs_legacy_hash")):
            stored = lora.metadata.get(meta_key)
            if stored and stored != hashes[ours]:
                problems.append(
                    f"stored {meta_key} {stored} != computed {hashes[ours]} (tensors changed after saving)"
                )
    return Inspection(
        path=str(path),
        network_type=network_type,
        n_unet=sum(n.startswith(keys.UNET_PREFIX + "_") for n in {**lora.modules, **lora.lycoris}),
        n_text_encoder=sum(
            not n.startswith(keys.UNET_PREFIX + "_") for n in {**lora.modules, **lora.lycoris}
        ),
        ranks=_sorted_counts(linear),
        conv_ranks=_sorted_counts(conv),
        alphas=_sorted_counts(_alpha(m) for m in every),
        alpha_defaulted=len(lora.alpha_defaulted),
        dtype=str(lora.dtype).replace("torch.", ""),
        architecture=arch,
        architecture_reason=reason,
        metadata=readable_metadata(lora.metadata),
        hashes=hashes,
        hash_problems=problems,
        other_keys=lora.other_keys,
        check=check_against_base(lora, base_model, allow_unsafe_pickle=allow_unsafe_pickle)
        if base_model
        else None,
        prefix_counts=prefix_counts([*lora.modules, *lora.lycoris]),
        fits=layout_family_names(family) if family is not None else "",
        base_model_version=lora.metadata.get("ss_base_model_version", ""),
        problems=damaged,
        block_counts=blocks,
        block_layout=layout,
    )


def block_counts(family, names) -> tuple[dict[str, int], str]:
    """({block: denoiser modules} in the family's block order, "other" last; the layout in short)."""
    from library.tools.models.layers import layout_summary
    from library.tools.models.merge_lora import module_block

    if family is None:
        return {}, ""
    layout = family.block_layout
    counts = collections.Counter(
        module_block(n, layout) or "other" for n in names if n.startswith(keys.UNET_PREFIX + "_")
    )
    order = {name: i for i, name in enumerate(layout.names)}
    return dict(sorted(counts.items(), key=lambda kv: order.get(kv[0], len(order)))), layout_summary(layout)


def _rank(module: LoraModule | LycorisModule) -> int | str:
    """A module's rank; "full" for a LoKr module whose sides are both stored whole."""
    rank = module.rank
    return "full" if rank is None else rank


def _alpha(module: LoraModule | LycorisModule) -> float:
    """The stored alpha, else the rank (scale 1); a whole-sided LoKr stores alpha = dim and ignores it."""
    if module.alpha is not None:
        return float(module.alpha)
    return float(module.rank or 1)


def _sorted_counts(values) -> dict:
    return dict(sorted(collections.Counter(values).items(), key=lambda kv: (isinstance(kv[0], str), kv[0])))


def _metadata_of(path) -> dict[str, str]:
    if Path(path).suffix.lower() != ".safetensors":
        return {}
    from library.util.safetensors_io import read_metadata

    return read_metadata(path)


def _counts(counter: dict) -> str:
    return (
        ", ".join(f"{k:g} x{n}" if isinstance(k, float) else f"{k} x{n}" for k, n in counter.items()) or "-"
    )


def report_lines(insp: Inspection, show_metadata: bool = True) -> list[str]:
    """The inspector's printed report."""
    lines = [
        f"file: {insp.path}",
        f"type: {insp.network_type}, {insp.n_unet} UNet + {insp.n_text_encoder} text-encoder modules, {insp.dtype}",
        f"modules per part: {', '.join(f'{p} {n}' for p, n in insp.prefix_counts.items()) or '-'}",
        f"architecture: {insp.architecture} ({insp.architecture_reason})",
        fits_line(insp),
    ]
    if insp.block_counts:
        lines.append(f"modules per block ({insp.block_layout}): "
                     + ", ".join(f"{b} {n}" for b, n in insp.block_counts.items()))
    lines.append(f"rank (Linear / 1x1): {_counts(insp.ranks)}")
    if insp.conv_ranks:
        lines.append(f"rank (3x3 conv): {_counts(insp.conv_ranks)}")
    lines.append(
        f"alpha: {_counts(insp.alphas)}"
        + (f" ({insp.alpha_defaulted} modules without alpha: alpha = rank)" if insp.alpha_defaulted else "")
    )
    if insp.other_keys:
        lines.append(f"{len(insp.other_keys)} other keys, e.g. {', '.join(insp.other_keys[:3])}")
    for name, value in insp.hashes.items():
        lines.append(f"hash {name}: {value}")
    lines += [f"WARNING: {p}" for p in insp.hash_problems]
    if show_metadata:
        lines.append(f"metadata ({len(insp.metadata)} keys):" if insp.metadata else "metadata: none")
        lines += [f"  {k}: {v}" for k, v in insp.metadata.items()]
    if insp.check is not None:
        lines += _check_lines(insp.check)
    if insp.problems:
        lines.append(f"problems: {len(insp.problems)} damaged modules")
        lines += [f"  {p}" for p in insp.problems[:20]]
        if len(insp.problems) > 20:
            lines.append("  …")
    return lines


def fits_line(insp: Inspection) -> str:
    """Which base models the file fits, by its key layout and its ``ss_base_model_version``."""
    layout = f"{insp.fits} models (key layout)" if insp.fits else "unknown (no family's key layout)"
    version = insp.base_model_version or "not recorded"
    line = f"fits: {layout}; metadata ss_base_model_version: {version}"
    if insp.fits and insp.base_model_version and not _version_agrees(insp.fits, insp.base_model_version):
        line += " (WARNING: the metadata names another base than the keys)"
    return line


def _version_agrees(fits: str, version: str) -> bool:
    from library.models.family import get_model_family

    return any(get_model_family(name).base_model_version.split("_")[:2] == version.split("_")[:2]
               for name in fits.split("/"))


def _check_lines(check: BaseCheck) -> list[str]:
    lines = [
        f"check against {check.base} ({check.family}): {check.matched} modules match"
        + (
            ""
            if check.ok
            else f", {len(check.unknown)} not in the model, {len(check.mismatched)} wrong shape"
        )
    ]
    if check.family_problem:
        lines.append(f"  WARNING: {check.family_problem}")
    lines += [f"  not in the model: {name}" for name in check.unknown[:20]]
    lines += [f"  wrong shape: {text}" for text in check.mismatched[:20]]
    if len(check.unknown) + len(check.mismatched) > 40:
        lines.append("  …")
    if check.other_parts:
        lines.append(f"  ({check.other_parts} text-encoder modules not checked: {Path(check.base).name} holds the "
                     "transformer only)")
    if check.uncovered_targets:
        lines.append(f"  ({check.uncovered_targets} layers a LoRA usually adapts are not in this file)")
    return lines


def raise_if_damaged(insp: Inspection) -> None:
    """ModelLoadError (exit 2) when the file has damaged modules (NaN/inf, rank mismatches, ...)."""
    if insp.problems:
        from library.errors import ModelLoadError
        from library.tools.models.lora_file import damaged_message

        raise ModelLoadError(damaged_message(insp.path, insp.problems))


def check_failed(insp: Inspection) -> bool:
    """True when ``--check`` found mismatching keys (the CLI exits 1 then)."""
    return insp.check is not None and not insp.check.ok
