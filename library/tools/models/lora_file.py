"""LoRA files as the tools see them: per-module (down, up, alpha), read from ours or sd-scripts' files.

Reading goes through :func:`library.networks.network.read_state_dict` / ``group_by_module`` and the
key contract in :mod:`library.networks.keys`; ΔW through :mod:`library.networks.functional`. Files
from sd-scripts may hold fp16 tensors, modules without ``alpha`` (alpha = rank then, as sd-scripts
loads them) and LoCon 3x3 conv modules; all are handled here. LoHa and LoKr modules are read on
request (:mod:`library.tools.models.lycoris_file`); other algorithms (IA3, OFT, ...) are recognised
by their key suffixes so the tools can say what a file is.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from library.errors import ModelLoadError
from library.networks import keys
from library.networks.functional import lora_delta_weight, lora_scale
from library.networks.network import group_by_module, read_state_dict
from library.util.atomic import atomic_path
from library.util.safetensors_io import read_metadata, save_safetensors

logger = logging.getLogger(__name__)

DORA_SUFFIX = ".dora_scale"
#: key suffix -> network type, for files the tools can only describe (LyCORIS / diffusers naming).
FOREIGN_SUFFIXES = {
    ".hada_w1_a": "LoHa",
    ".lokr_w1": "LoKr",
    ".lokr_w1_a": "LoKr",
    ".lokr_w2": "LoKr",
    ".lokr_w2_a": "LoKr",
    ".on_input": "IA3",
    ".oft_blocks": "OFT",
    ".oft_diag": "OFT",
    ".a1.weight": "GLoRA",
    ".diff": "full (LyCORIS diff)",
    ".lora_A.weight": "LoRA (diffusers/PEFT layout)",
    DORA_SUFFIX: "DoRA",
}


@dataclass
class LoraModule:
    """One module of a LoRA file. ``down``: (r, in) or (r, in, kh, kw); ``up``: (out, r) or (out, r, 1, 1)."""

    name: str
    down: torch.Tensor
    up: torch.Tensor
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def is_conv(self) -> bool:
        return self.down.dim() == 4

    @property
    def kernel(self) -> tuple[int, ...]:
        """(kh, kw) for conv modules, () for Linear."""
        return tuple(self.down.shape[2:]) if self.is_conv else ()

    @property
    def is_conv3x3(self) -> bool:
        """A conv module with a kernel larger than 1x1 (LoCon, sized by conv_dim)."""
        return self.is_conv and self.kernel != (1, 1)

    @property
    def scale(self) -> float:
        return lora_scale(self.alpha, self.rank)

    @property
    def out_features(self) -> int:
        return int(self.up.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.down.shape[1])

    def delta(self, multiplier: float = 1.0) -> torch.Tensor:
        """ΔW · multiplier in float32, shape (out, in) or (out, in, kh, kw)."""
        return lora_delta_weight(self.down, self.up, self.scale * multiplier)


@dataclass
class LoraFile:
    """A LoRA/LoCon file: its modules by contract name, metadata and anything it held besides."""

    source: str
    modules: dict[str, LoraModule]
    metadata: dict[str, str] = field(default_factory=dict)
    alpha_defaulted: list[str] = field(default_factory=list)
    other_keys: list[str] = field(default_factory=list)
    dtype: torch.dtype | None = None
    #: LoHa / LoKr modules (:class:`library.tools.models.lycoris_file.LycorisModule`), read on request.
    lycoris: dict = field(default_factory=dict)
    #: DoRA magnitudes by module name (``.dora_scale``), read on request.
    dora_scales: dict = field(default_factory=dict)

    @property
    def network_type(self) -> str:
        kinds = sorted({m.kind for m in self.lycoris.values()})
        if self.modules or not kinds:
            kinds.insert(0, "LoCon" if any(m.is_conv3x3 for m in self.modules.values()) else "LoRA")
        return " + ".join(kinds)


def foreign_network_type(state_dict: dict[str, torch.Tensor]) -> str | None:
    """The name of a non-LoRA algorithm (LoHa, LoKr, IA3, ...) whose keys the file holds, else None."""
    found = {kind for key in state_dict for suffix, kind in FOREIGN_SUFFIXES.items() if key.endswith(suffix)}
    return ", ".join(sorted(found)) or None


def read_lora(
    source: str | os.PathLike | dict, *, allow_other_types: bool = False, allow_lycoris: bool = False,
    allow_dora: bool = False, problems: list[str] | None = None,
) -> LoraFile:
    """Read a LoRA / LoCon file (``.safetensors`` or a tensor-only ``.ckpt/.pt``) or a state dict.

    With ``allow_lycoris`` LoHa / LoKr modules are read too (into ``LoraFile.lycoris``); with
    ``allow_dora`` the DoRA magnitudes of any module (into ``LoraFile.dora_scales``). Raises
    ModelLoadError for a file with no modules the caller handles, naming what it holds instead (a
    LoHa file, a checkpoint, ...); with ``allow_other_types`` such keys are only listed.

    Damaged modules (NaN/inf values, lora_down rank != lora_up rank, integer tensors, a vector alpha,
    wrong dimensions) raise ModelLoadError naming the file and the first modules; when a ``problems``
    list is given they are described there instead (modules that cannot be read are left out).
    """
    from library.tools.models.lycoris_file import read_lycoris_modules

    state_dict, description = read_tensor_file(source)
    found = _nonfinite_problems(state_dict)
    n_nonfinite = len(found)
    dora_scales = {}
    if allow_dora:
        dora_scales = {k[: -len(DORA_SUFFIX)]: v for k, v in state_dict.items() if k.endswith(DORA_SUFFIX)}
        state_dict = {k: v for k, v in state_dict.items() if not k.endswith(DORA_SUFFIX)}
    metadata = {}
    if not isinstance(source, dict) and Path(source).suffix.lower() == ".safetensors":
        metadata = read_metadata(source)
    lycoris, lycoris_keys = (
        read_lycoris_modules(state_dict, description, strict=not allow_other_types)
        if allow_lycoris
        else ({}, set())
    )
    rest = {k: v for k, v in state_dict.items() if k not in lycoris_keys}
    modules, alpha_defaulted, other = {}, [], []
    for name, entries in group_by_module(rest).items():
        down, up = entries.get(keys.DOWN_SUFFIX), entries.get(keys.UP_SUFFIX)
        if down is None or up is None:
            other.extend(name + s if s.startswith(".") else s for s in entries)
            continue
        alpha = entries.get(keys.ALPHA_SUFFIX)
        if problem := module_problem(down, up, alpha):
            found.append(f"{name}: {problem}")
            continue
        if alpha is None:
            alpha_defaulted.append(name)
        modules[name] = LoraModule(
            name, down, up, float(alpha) if alpha is not None else float(down.shape[0])
        )
    structural = len(found) > n_nonfinite
    if problems is not None:
        problems.extend(found)
    elif structural or (found and (modules or lycoris)):
        raise ModelLoadError(damaged_message(description, found))
    foreign = foreign_network_type(rest)
    handled = "LoRA/LoCon" + (", LoHa and LoKr" if allow_lycoris else "")
    if not modules and not lycoris and not allow_other_types:
        what = f"a {foreign} file" if foreign else _describe(state_dict)
        raise ModelLoadError(
            f"{description} has no LoRA modules (.lora_down.weight / .lora_up.weight pairs): it is {what}. "
            f"This tool handles {handled} files in the kohya (sd-scripts) / LyCORIS layout."
        )
    if foreign and (modules or lycoris) and not allow_other_types:
        raise ModelLoadError(
            f"{description} mixes {handled} modules with {foreign} modules, which this tool cannot "
            "process. Use a LyCORIS tool for this file."
        )
    dtypes = [t.dtype for t in state_dict.values() if t.is_floating_point() and t.dim() > 0]
    dtype = max(set(dtypes), key=dtypes.count) if dtypes else None
    orphans = sorted(set(dora_scales) - set(modules) - set(lycoris))
    if orphans and not allow_other_types:
        raise ModelLoadError(f"{description}: DoRA magnitudes without their module, e.g. {orphans[:3]}; the "
                             "file is incomplete or damaged.")
    return LoraFile(description, modules, metadata, sorted(alpha_defaulted), sorted(other), dtype, lycoris,
                    dora_scales)


def read_tensor_file(source) -> tuple[dict[str, torch.Tensor], str]:
    """:func:`read_state_dict` with torch.load's many-paragraph refusals cut to the one line that matters."""
    try:
        return read_state_dict(source)
    except ModelLoadError as error:
        cause = error.__cause__
        if cause is None or isinstance(source, dict) or Path(source).suffix.lower() == ".safetensors":
            raise
        raise ModelLoadError(
            f"Cannot load {source}: it is not a plain tensor file ({_short_reason(cause)}). Only tensors are "
            "loaded from .ckpt/.pt files, for safety. Check that the file is complete and is a LoRA; a LoRA "
            "from a trusted source can be converted to .safetensors."
        ) from None


def _short_reason(error: BaseException) -> str:
    """The telling line of an exception: torch's "WeightsUnpickler error: X" gives X, else the first line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error" in line:
            rest = line.split("WeightsUnpickler error:", 1)[-1].strip()
            return (rest or (lines[i + 1] if i + 1 < len(lines) else line))[:200]
    first = lines[0] if lines else ""
    if len(first.strip("'\"")) < 8:  # e.g. KeyError('101') from reading text as a pickle
        return f"unreadable data, {type(error).__name__} {first}".strip()
    return first[:200]


def module_problem(down: torch.Tensor, up: torch.Tensor, alpha: torch.Tensor | None) -> str | None:
    """Why a (lora_down, lora_up, alpha) triple is not a usable LoRA module, or None when it is."""
    for label, tensor in (("lora_down", down), ("lora_up", up)):
        if not tensor.is_floating_point():
            return f"{label} holds {str(tensor.dtype).replace('torch.', '')} values, not floating point"
        if tensor.dim() not in (2, 4) or 0 in tensor.shape:
            return f"{label} has shape {tuple(tensor.shape)}; a LoRA weight has 2 (Linear) or 4 (conv) dimensions"
    if down.dim() != up.dim():
        return f"lora_down {tuple(down.shape)} and lora_up {tuple(up.shape)} do not have the same number of dimensions"
    if up.shape[1] != down.shape[0]:
        return f"rank mismatch: lora_down has rank {down.shape[0]} but lora_up has rank {up.shape[1]}"
    if up.dim() == 4 and tuple(up.shape[2:]) != (1, 1):
        return f"lora_up {tuple(up.shape)} of a conv module must have a 1x1 kernel"
    if alpha is not None:
        if alpha.numel() != 1:
            return f"alpha has {alpha.numel()} values (shape {tuple(alpha.shape)}); it must be one number"
        if alpha.dtype == torch.bool or alpha.is_complex():
            return f"alpha is a {str(alpha.dtype).replace('torch.', '')} value, not a number"
    return None


def _nonfinite_problems(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """ "name: NaN/inf in lora_down.weight, alpha" per module with non-finite values."""
    from library.util.tensor_checks import nonfinite_keys

    by_module: dict[str, list[str]] = {}
    for key in nonfinite_keys(state_dict):
        name, suffix = keys.split_key(key)
        if not suffix and "." in key:
            name, suffix = key.split(".", 1)
        by_module.setdefault(name, []).append(suffix.lstrip(".") or key)
    return [f"{name}: NaN/inf values in {', '.join(parts)}" for name, parts in by_module.items()]


def damaged_message(description: str, problems: list[str]) -> str:
    """One paragraph naming the file, how many modules are damaged and the first ones."""
    first = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
    nan = any("NaN/inf" in p for p in problems)
    fix = (
        "A LoRA with NaN/inf weights comes from a training that diverged (a NaN loss) or a damaged save: use "
        "an earlier saved epoch, or retrain with a lower learning rate (or mixed_precision bf16)."
        if nan
        else "The file is damaged or was not written by a LoRA trainer; use another copy of it."
    )
    return f"{description} has {len(problems)} damaged LoRA modules ({first}). {fix}"


def _describe(state_dict: dict) -> str:
    from library.models.loading import describe_foreign_keys

    if any(k.startswith("model.diffusion_model.") for k in state_dict):
        return "a full Stable Diffusion checkpoint, not a LoRA"
    return f"not a LoRA file ({describe_foreign_keys(state_dict)})"


def modules_state_dict(
    modules: dict[str, LoraModule], dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """The file tensors of ``modules`` by the key contract; ``dtype`` applies to all (alpha included)."""
    out = {}
    for name, module in modules.items():
        down_key, up_key, alpha_key = keys.module_keys(name)
        out[down_key] = module.down.detach().to("cpu", dtype or module.down.dtype).contiguous()
        out[up_key] = module.up.detach().to("cpu", dtype or module.up.dtype).contiguous()
        out[alpha_key] = torch.tensor(module.alpha, dtype=dtype or torch.float32)
    return out


def save_lora(
    path: str | os.PathLike,
    modules: dict[str, LoraModule],
    metadata: dict[str, str] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write a LoRA file atomically; ``.safetensors`` gets metadata and fresh sshs hashes.

    Refuses (ModelLoadError, nothing written) tensors holding NaN/inf, e.g. after an fp16 overflow.
    """
    from library.util.tensor_checks import require_finite_tensors

    tensors = modules_state_dict(modules, dtype)
    require_finite_tensors(
        tensors,
        f"The LoRA to save as {path}",
        "Nothing was saved. The values overflow the precision (try --save_precision float or bf16) or an "
        "input holds extreme values; check the inputs with tools/inspect_lora.py.",
    )
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        meta = {k: v for k, v in (metadata or {}).items() if k not in ("sshs_model_hash", "sshs_legacy_hash")}
        return save_safetensors(path, tensors, meta)
    with atomic_path(path) as tmp:
        torch.save(tensors, tmp)
    return path


def lora_family(lora: LoraFile):
    """The :class:`library.models.family.ModelFamily` whose LoRA key layout the file's module names are in
    (SD1 and SD2 share one: the first, sd1, stands for both), or None for names no family uses."""
    from library.models.family import family_of_lora_names

    return family_of_lora_names([*lora.modules, *lora.lycoris])


def layout_family_names(family) -> str:
    """ "sd1/sd2" for a family whose LoRA layout others share, else the family's name."""
    from library.models.family import all_families

    return "/".join(f.name for f in all_families() if f.lora_layout() == family.lora_layout())


def check_lora_family(lora: LoraFile, family, what: str) -> None:
    """Raise ModelLoadError when ``lora``'s key layout is another family's than ``family``'s.

    ``what`` says what the other side is (e.g. "base.safetensors is a sdxl model").
    """
    found = lora_family(lora)
    if found is None or found.lora_layout() == family.lora_layout() or fits_family_layout(lora, family):
        return
    raise ModelLoadError(
        f"{lora.source} is a LoRA for {layout_family_names(found)} (its keys are in that family's layout), "
        f"but {what}. A LoRA only fits models of the family it was trained on: use a "
        f"{layout_family_names(family)} LoRA, or a {layout_family_names(found)} model."
    )


def fits_family_layout(lora: LoraFile, family) -> bool:
    """Whether every module name is in ``family``'s layout (a CLIP-L-only ``lora_te1_`` file fits SDXL and FLUX)."""
    from library.models.family import UNET_PART

    text = tuple(f"{prefix}_" for part, prefix in family.lora_prefixes.items() if part != UNET_PART)
    unet = tuple(f"{family.lora_prefixes[UNET_PART]}_{marker}" for marker in family.lora_unet_markers)
    names = [*lora.modules, *lora.lycoris]
    return bool(names) and all(name.startswith(text) or (unet and name.startswith(unet)) for name in names)


def common_lora_family(loras: list[LoraFile]):
    """The one family of several LoRA files (None when no file's names are in a family's layout); raises
    ModelLoadError naming both families when the files are for different ones."""
    first = None
    for lora in loras:
        family = lora_family(lora)
        if family is None:
            continue
        if first is None:
            first = (lora, family)
        elif fits_family_layout(lora, first[1]):
            continue
        elif fits_family_layout(first[0], family):
            first = (lora, family)
        elif family.lora_layout() != first[1].lora_layout():
            raise ModelLoadError(
                f"{first[0].source} is a LoRA for {layout_family_names(first[1])} but {lora.source} is one for "
                f"{layout_family_names(family)}; LoRAs of different model families cannot be merged together."
            )
    return None if first is None else first[1]


def network_metadata(
    *,
    family: str,
    v_parameterization: bool,
    dim: int | str,
    alpha: float | str,
    conv_dim: int | None = None,
    conv_alpha: float | None = None,
    title: str = "",
    resolution: int = 512,
    architecture: str | None = None,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """The minimal ``ss_*`` keys sd-scripts keeps in every network file plus ``modelspec.*``.

    ``ss_v2``, ``ss_base_model_version``, ``ss_network_module`` and ``modelspec.architecture`` come from the
    model family (:func:`library.models.family.get_model_family`), e.g. ``sdxl_base_v1-0`` and
    ``stable-diffusion-xl-v1-base/lora`` for SDXL, ``flux1``, ``networks.lora_flux`` and ``flux-1-dev/lora`` for
    FLUX.1; ``architecture`` (without ``/lora``) overrides the family's default (FLUX.1 schnell's).
    """
    from library.models.family import get_model_family
    from library.networks.metadata import ADAPTER_LORA, modelspec_metadata

    spec = get_model_family(family)
    args = {} if not conv_dim else {"conv_dim": str(conv_dim), "conv_alpha": str(conv_alpha)}
    meta = {
        "ss_network_module": spec.lora_network_module,
        "ss_network_dim": str(dim),
        "ss_network_alpha": str(alpha),
        "ss_network_args": json.dumps(args),
        "ss_v2": str(spec.v2),
        "ss_base_model_version": spec.base_model_version,
    }
    meta.update(
        modelspec_metadata(
            f"{architecture or spec.architecture(v_parameterization)}/{ADAPTER_LORA}",
            title or "LoRA",
            resolution,
            "v" if v_parameterization else "epsilon",
        )
    )
    meta.update(extra or {})
    return meta
