"""Convert Stable Diffusion checkpoints: single file (SD1/SD2 LDM, SDXL SGM) <-> diffusers folder, precision,
pruning.

The key conversion is :mod:`library.models.ldm_convert` / :mod:`library.models.sgm` (exact renames and
reshapes), reached through :mod:`library.tools.models.checkpoint` and the model family's hooks. Single
file -> single file (a precision change, ``.ckpt`` <-> ``.safetensors``, pruning) works on the raw
tensors, so nothing but the cast and the pruned keys changes. ``prune`` keeps only the UNet, VAE and
text-encoder weights (``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.*`` or
SDXL's ``conditioner.embedders.*``): EMA copies (``model_ema.*``), optimizer states and schedule
buffers go. ``prune`` and ``fix_position_ids`` also reset corrupted CLIP ``position_ids`` (stored as
floats, or values other than 0 … 76, a known defect of merged SD1 checkpoints that shifts the text
encoder's position embeddings) to ``arange(77)`` in int64, with a report line per key; without either the
report names the corrupted keys.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from library.errors import ModelLoadError, UserError
from library.models.family import family_of_single_file
from library.models.ldm_convert import UNET_PREFIX, VAE_PREFIX, split_single_file
from library.models.sgm import is_sgm_single_file, split_sgm_single_file
from library.tools.models import checkpoint
from library.tools.models.common import dominant_float_dtype, human_size, path_size, precision_dtype
from library.util.atomic import atomic_path

logger = logging.getLogger(__name__)

TEXT_PREFIX = "cond_stage_model."
#: SDXL (SGM) files hold both text encoders under this prefix
SGM_TEXT_PREFIX = "conditioner.embedders."
MODEL_PREFIXES = (UNET_PREFIX, VAE_PREFIX, TEXT_PREFIX, SGM_TEXT_PREFIX)


@dataclass
class ConvertReport:
    """What a conversion did: formats, family, precision, sizes and the keys pruned."""

    source: str
    destination: str
    fmt: str
    family: str
    prediction_type: str | None
    dtype: str
    size_before: int
    size_after: int
    dropped_keys: list[str] = field(default_factory=list)
    #: (key, what was wrong) of corrupted CLIP position_ids; ``position_ids_fixed``: whether they were reset
    bad_position_ids: list[tuple[str, str, int]] = field(default_factory=list)
    position_ids_fixed: bool = False

    def lines(self) -> list[str]:
        """Human-readable summary for the CLI."""
        out = [
            f"converted {self.source} -> {self.destination} ({self.fmt}, {self.family}, {self.dtype}"
            + (f", {self.prediction_type})" if self.prediction_type else ")"),
            f"size: {human_size(self.size_before)} -> {human_size(self.size_after)}",
        ]
        if self.dropped_keys:
            groups = sorted({k.split(".")[0] for k in self.dropped_keys})
            out.append(f"dropped {len(self.dropped_keys)} keys not part of the model ({', '.join(groups)})")
        for key, problem, n in self.bad_position_ids:
            if self.position_ids_fixed:
                out.append(f"fixed position_ids: {key} was {problem}; reset to arange({n}) (int64)")
            else:
                out.append(f"warning: {key} is corrupted ({problem}); pass --fix_position_ids (or --prune) to reset it")
        return out


def is_model_key(key: str) -> bool:
    """True for keys of the UNet, VAE or text encoder(s) in an LDM / SGM single file."""
    return key.startswith(MODEL_PREFIXES)


def prune_state_dict(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(model tensors only, sorted dropped keys): drops ``model_ema.*`` and every non-model key."""
    kept = {k: v for k, v in state_dict.items() if is_model_key(k)}
    return kept, sorted(k for k in state_dict if k not in kept)


def position_ids_problems(state: dict[str, torch.Tensor]) -> list[tuple[str, str, int]]:
    """(key, what is wrong, n) for each CLIP ``*.position_ids`` that is not ``arange(n)`` in int64, shape (1, n)."""
    out = []
    for key, value in state.items():
        if not key.endswith("position_ids") or not isinstance(value, torch.Tensor) or value.numel() == 0:
            continue
        n = value.shape[-1]
        want = torch.arange(n, dtype=torch.float64)
        got = value.reshape(-1).to(torch.float64)
        problems = []
        if value.is_floating_point():
            problems.append(f"stored as {str(value.dtype).replace('torch.', '')}")
        if got.numel() != n or not torch.equal(got, want):
            wrong = (got != want).nonzero().flatten().tolist() if got.numel() == n else []
            detail = (f"{len(wrong)} positions off, e.g. position {wrong[0]} = {float(got[wrong[0]]):.6g}"
                      if wrong else f"shape {tuple(value.shape)}")
            problems.append(detail)
        elif value.is_floating_point():
            problems[-1] += " (values intact)"
        if problems:
            out.append((key, ", ".join(problems) + f" instead of int64 0..{n - 1}", n))
    return out


def fix_position_ids(state: dict[str, torch.Tensor]) -> list[tuple[str, str, int]]:
    """Reset every corrupted CLIP ``position_ids`` in ``state`` to ``arange(n)[None]`` (int64), in place;
    returns :func:`position_ids_problems` (what was fixed)."""
    problems = position_ids_problems(state)
    for key, _, n in problems:
        state[key] = torch.arange(n, dtype=torch.int64)[None]
    return problems


def convert_model(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    *,
    to: str | None = None,
    precision: str | None = None,
    prune: bool = False,
    v2: bool | None = None,
    v_parameterization: bool | None = None,
    allow_unsafe_pickle: bool = False,
    overwrite: bool = False,
    fix_position_ids: bool = False,
) -> ConvertReport:
    """Convert ``source`` (single file or diffusers folder) to ``destination``.

    ``to`` defaults from the destination name (see :func:`checkpoint.output_format`);
    ``precision`` ("float", "fp16", "bf16") defaults to the source's. ``v2`` is a hint (the layout
    decides); ``v_parameterization`` sets the prediction type written to the output. A diffusers
    folder replaces an existing one only when that is a diffusers model and nothing else, or with
    ``overwrite`` (see :func:`check_destination_folder`); the replacement is atomic either way.
    """
    fmt = checkpoint.output_format(destination, to)
    if fmt == "diffusers":
        check_destination_folder(destination, overwrite)
    dtype = precision_dtype(precision)
    source_path = Path(source)
    if Path(destination).resolve() == source_path.resolve():
        raise ModelLoadError(f"The destination {destination} is the source; choose another name.")
    size_before = path_size(source_path)
    if source_path.is_file() and fmt != "diffusers":
        report = _single_to_single(
            source_path, Path(destination), fmt, dtype, prune, v_parameterization, allow_unsafe_pickle,
            fix_positions=prune or fix_position_ids,
        )
    else:
        report = _through_modules(
            source, destination, fmt, dtype, v2, v_parameterization, allow_unsafe_pickle
        )
    report.size_before = size_before
    report.size_after = path_size(destination)
    for line in report.lines():
        logger.debug(line)
    return report


def diffusers_folder_strangers(folder: Path) -> list[str] | None:
    """The entries of ``folder`` that are not part of the diffusers model described by its
    ``model_index.json`` (its components and that file), sorted; None when it has no readable index."""
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(index, dict):
        return None
    known = {"model_index.json", *(name for name in index if not name.startswith("_"))}
    return sorted(entry.name for entry in folder.iterdir() if entry.name not in known)


def check_destination_folder(destination: str | os.PathLike, overwrite: bool) -> None:
    """Raise ``UserError`` when writing a diffusers folder at ``destination`` would delete files that are
    not a model: an existing non-empty folder is replaced only when it holds a diffusers model and nothing
    else (a folder this tool wrote), or with ``overwrite``."""
    folder = Path(destination)
    if overwrite or not folder.is_dir() or not any(folder.iterdir()):
        return
    strangers = diffusers_folder_strangers(folder)
    if strangers == []:
        return
    what = (
        "is not a diffusers model (no readable model_index.json)"
        if strangers is None
        else f"holds files that are not part of its diffusers model ({', '.join(strangers[:3])}"
        + (f" and {len(strangers) - 3} more" if len(strangers) > 3 else "")
        + ")"
    )
    raise UserError(
        f"The destination folder {str(folder)!r} is not empty and {what}; saving the diffusers model there "
        "would delete everything it holds. Choose a new or empty folder, or pass --overwrite to replace "
        "the folder and its contents."
    )


def _through_modules(source, destination, fmt, dtype, v2, v_parameterization, allow_unsafe_pickle):
    loaded = checkpoint.load_model(
        source, v2=v2, v_parameterization=v_parameterization, allow_unsafe_pickle=allow_unsafe_pickle
    )
    dtype = dtype or loaded.source_dtype or torch.float32
    dropped = _non_model_keys(Path(source)) if Path(source).is_file() else []
    if dropped:
        logger.info("%d non-model keys (EMA, optimizer...) are not carried into %s", len(dropped), fmt)
    checkpoint.save_model(
        loaded.model, destination, fmt=fmt, dtype=dtype, prediction_type=loaded.prediction_type
    )
    return ConvertReport(
        str(source),
        str(destination),
        fmt,
        loaded.family,
        loaded.prediction_type,
        str(dtype).replace("torch.", ""),
        0,
        0,
        dropped,
    )


def _non_model_keys(path: Path) -> list[str]:
    if path.suffix.lower() != ".safetensors":
        return []
    from library.util.safetensors_io import read_header

    return sorted(k for k in read_header(path) if k != "__metadata__" and not is_model_key(k))


def _single_to_single(
    source: Path, destination: Path, fmt, dtype, prune, v_parameterization, allow_unsafe_pickle,
    fix_positions: bool = False,
) -> ConvertReport:
    from library.models.loading import describe_foreign_keys
    from library.models.safe_load import load_state_dict_file

    state, metadata = load_state_dict_file(source, allow_unsafe_pickle=allow_unsafe_pickle)
    if not any(k.startswith(UNET_PREFIX) for k in state):
        raise ModelLoadError(
            f"{source} is not a Stable Diffusion checkpoint (no {UNET_PREFIX}* keys): "
            f"{describe_foreign_keys(state)}."
        )
    split = split_sgm_single_file if is_sgm_single_file(state) else split_single_file
    try:
        split(state, metadata)  # checks that every part is there
    except ModelLoadError as error:
        raise ModelLoadError(f"{source} is not a complete Stable Diffusion checkpoint: {error}.") from error
    check_complete(state, metadata, source)
    dropped: list[str] = []
    if prune:
        state, dropped = prune_state_dict(state)
    bad_positions = fix_position_ids(state) if fix_positions else position_ids_problems(state)
    dtype = dtype or dominant_float_dtype(v for k, v in state.items() if is_model_key(k)) or torch.float32
    state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    if v_parameterization is not None:
        metadata[checkpoint.META_PREDICTION] = "v_prediction" if v_parameterization else "epsilon"
    _write_single(destination, fmt, state, metadata)
    return ConvertReport(
        str(source),
        str(destination),
        fmt,
        metadata.get("sdtrain.family") or _family_name(state),
        metadata.get(checkpoint.META_PREDICTION),
        str(dtype).replace("torch.", ""),
        0,
        0,
        dropped,
        bad_positions,
        fix_positions,
    )


def check_complete(state: dict[str, torch.Tensor], metadata: dict[str, str], source: Path) -> None:
    """Raise ``ModelLoadError`` when ``state`` lacks weights of its model (or holds foreign ones).

    A single-file copy never builds the model, so a file with missing keys would be copied silently: the
    family's modules are built on the meta device (no memory, no weights copied) and the file is loaded
    into them, which checks every key as a real load does.
    """
    family = family_of_single_file(state)
    if family is None:
        return
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter")
            shapes = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in state.items()}
            family.load_single_file(shapes, metadata, str(source), components={})  # consumes its dict
    except (NotImplementedError, RuntimeError) as error:  # an operation the meta device lacks: no check then
        logger.debug("could not check the keys of %s on the meta device: %s", source, error)


def _family_name(state: dict) -> str:
    family = family_of_single_file(state)
    return family.name if family is not None else "unknown"


def _write_single(destination: Path, fmt: str, state: dict, metadata: dict[str, str]) -> None:
    with atomic_path(destination) as tmp:
        if fmt == "safetensors":
            from safetensors.torch import save_file

            save_file(state, str(tmp), metadata={k: str(v) for k, v in metadata.items()})
        else:
            torch.save({"state_dict": state}, tmp)
