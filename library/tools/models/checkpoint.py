"""Load and save whole Stable Diffusion checkpoints for the model tools.

Loading goes through :func:`library.models.loading.load_base_model` (diffusers folder, LDM / SGM single
file, built-in tiny model); saving through the model family's hooks (``save_single_file``: the LDM
layout for SD1/SD2, Stability's SGM layout for SDXL; ``diffusers_pipeline`` for a diffusers folder,
written atomically). The output format follows the destination name: ``.safetensors`` and ``.ckpt`` are
single files, anything else is a diffusers folder.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from library.errors import ConfigError, ModelLoadError
from library.models.base_model import BaseModel
from library.util.atomic import atomic_folder

logger = logging.getLogger(__name__)

FORMATS = ("diffusers", "safetensors", "ckpt")
#: metadata key of our single files that records the prediction type ("epsilon" / "v_prediction").
META_PREDICTION = "sdtrain.prediction_type"
_SAFETENSORS_DTYPES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F64": torch.float64,
}


@dataclass
class LoadedModel:
    """A base model plus where it came from: its dtype on disk and its prediction type."""

    model: BaseModel
    source: str
    source_dtype: torch.dtype | None
    prediction_type: str
    prediction_from: str

    @property
    def family(self) -> str:
        return self.model.family


def load_model(
    source: str | os.PathLike,
    *,
    v2: bool | None = None,
    v_parameterization: bool | None = None,
    allow_unsafe_pickle: bool = False,
) -> LoadedModel:
    """Load a checkpoint as float32 diffusers modules.

    The prediction type is, in order: ``v_parameterization`` when given, the file's metadata
    (``sdtrain.prediction_type`` / ``modelspec.prediction_type``), a diffusers folder's scheduler
    config, else the family default (SD1 and SDXL epsilon, SD2 v-prediction, as the 768-v SD2 models).
    """
    from library.models.loading import load_base_model

    source = str(source)
    declared = _declared_prediction_type(Path(source))
    model = load_base_model(source, v2=v2, allow_unsafe_pickle=allow_unsafe_pickle)
    if v_parameterization is not None:
        prediction, where = ("v_prediction" if v_parameterization else "epsilon"), "given"
    elif declared is not None:
        prediction, where = declared, "read from the model"
    else:
        prediction, where = default_prediction_type(model.family), f"{model.family} default"
    if (prediction == "v_prediction") != model.v_parameterization:
        from library.models.families import make_noise_scheduler

        model.v_parameterization = prediction == "v_prediction"
        model.noise_scheduler = make_noise_scheduler(prediction)
    return LoadedModel(model, source, _source_dtype(Path(source)), prediction, where)


def default_prediction_type(family: str) -> str:
    """The prediction type a model of ``family`` has when nothing says otherwise (SD2 v-prediction, as the
    768-v models; SD1 and SDXL base epsilon)."""
    from library.models.family import get_model_family

    return get_model_family(family).default_prediction_type


def _declared_prediction_type(path: Path) -> str | None:
    if path.is_file() and path.suffix.lower() == ".safetensors":
        from library.util.safetensors_io import read_metadata

        meta = read_metadata(path)
        value = meta.get(META_PREDICTION) or meta.get("modelspec.prediction_type")
        return {"v": "v_prediction", "v_prediction": "v_prediction", "epsilon": "epsilon"}.get(value or "")
    scheduler = path / "scheduler" / "scheduler_config.json"
    if path.is_dir() and scheduler.is_file():
        try:
            value = json.loads(scheduler.read_text(encoding="utf-8")).get("prediction_type")
        except (OSError, json.JSONDecodeError):
            return None
        return value if value in ("epsilon", "v_prediction") else None
    return None


def _source_dtype(path: Path) -> torch.dtype | None:
    """dtype of most weights of a safetensors file or of a diffusers folder's UNet (None if unknown)."""
    if path.is_dir():
        candidates = sorted((path / "unet").glob("*.safetensors"))
        if not candidates:
            return None
        path = candidates[0]
    if not path.is_file():
        return None
    if path.suffix.lower() != ".safetensors":
        return _pickle_dtype(path)
    from library.util.safetensors_io import read_header

    counts: dict[torch.dtype, int] = {}
    for key, entry in read_header(path).items():
        if key == "__metadata__" or entry.get("dtype") not in _SAFETENSORS_DTYPES:
            continue
        n = 1
        for dim in entry.get("shape", []):
            n *= dim
        dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
        counts[dtype] = counts.get(dtype, 0) + n
    return max(counts, key=counts.get) if counts else None


def _pickle_dtype(path: Path) -> torch.dtype | None:
    """Dominant dtype of a tensor pickle, memory-mapped (no full read); None when it cannot be mapped."""
    from library.tools.models.common import dominant_float_dtype

    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # legacy (non-zip) pickles cannot be mapped; unsafe ones are refused later anyway
        return None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        return None
    return dominant_float_dtype(v for v in data.values() if isinstance(v, torch.Tensor))


def output_format(destination: str | os.PathLike, to: str | None = None) -> str:
    """ "diffusers", "safetensors" or "ckpt": ``to`` when given (checked against the name), else by suffix."""
    suffix = Path(destination).suffix.lower()
    by_suffix = {".safetensors": "safetensors", ".ckpt": "ckpt", ".pt": "ckpt", ".pth": "ckpt"}.get(suffix)
    if to is None:
        return by_suffix or "diffusers"
    if to not in FORMATS:
        raise ConfigError(f"Unknown output format {to!r}; use one of {', '.join(FORMATS)}.")
    if to == "diffusers" and by_suffix is not None:
        raise ConfigError(
            f"--to diffusers writes a folder, but {destination} has a file extension ({suffix})."
        )
    if to != "diffusers" and by_suffix != to:
        raise ConfigError(f"--to {to} needs a destination ending in .{to}, got {destination}.")
    return to


def save_model(
    model: BaseModel,
    destination: str | os.PathLike,
    *,
    fmt: str | None = None,
    dtype: torch.dtype | None = None,
    prediction_type: str | None = None,
    extra_metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``model`` as a single file (its family's layout: LDM or SGM) or a diffusers folder, atomically.

    ``dtype`` casts floating weights (the modules themselves are cast for a diffusers folder).
    ``prediction_type`` goes into the single file's metadata and the diffusers scheduler config.
    """
    fmt = fmt or output_format(destination)
    prediction_type = prediction_type or ("v_prediction" if model.v_parameterization else "epsilon")
    if fmt == "diffusers":
        return _save_diffusers(model, Path(destination), dtype, prediction_type)
    metadata = {META_PREDICTION: prediction_type, **(extra_metadata or {})}
    return model.adapter.save_single_file(model, destination, dtype, metadata)


def _save_diffusers(model: BaseModel, destination: Path, dtype, prediction_type: str) -> Path:
    from library.models.families import make_noise_scheduler

    if dtype is not None:
        for module in model.parts.values():
            # plain nn.Module.to: diffusers' override warns about keep-in-fp32 modules SD does not have
            torch.nn.Module.to(module, dtype)
    # DDPM for epsilon / v models; a flow-matching family (FLUX.1) brings its own scheduler
    scheduler = (make_noise_scheduler(prediction_type) if prediction_type in ("epsilon", "v_prediction")
                 else model.noise_scheduler)
    pipeline = model.adapter.diffusers_pipeline(model.parts, model.tokenizers, scheduler)
    try:
        with atomic_folder(destination) as tmp:
            pipeline.save_pretrained(tmp, safe_serialization=True)
    except OSError as error:
        raise ModelLoadError(f"Could not write the diffusers folder {destination}: {error}") from error
    return destination
