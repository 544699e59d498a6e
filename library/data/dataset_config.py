"""Build :class:`DatasetSpec` lists from the folder layout or from an sd-scripts dataset TOML/JSON.

Lookup order for every key: subset -> dataset -> [general] -> ``defaults`` (training config) -> built-in.
The dataset file is validated strictly (unknown key, wrong type, wrong table), like sd-scripts does.
"""

from __future__ import annotations

import difflib
import json
import logging
from pathlib import Path
from typing import Any

import tomllib

from library.data.folders import REPEATS_MAX, discover_concept_folders
from library.data.specs import DatasetSpec, SubsetSpec
from library.errors import DatasetError

logger = logging.getLogger(__name__)

# key -> type tag: "bool", "int", "float", "str", "resolution"
DATASET_KEYS: dict[str, str] = {
    "resolution": "resolution",
    "batch_size": "int",
    "enable_bucket": "bool",
    "min_bucket_reso": "int",
    "max_bucket_reso": "int",
    "bucket_reso_steps": "int",
    "bucket_no_upscale": "bool",
    "validation_split": "float",
    "validation_seed": "int",
}
SUBSET_INHERITABLE_KEYS: dict[str, str] = {
    "num_repeats": "int",
    "class_tokens": "str",
    "caption_extension": "str",
    "keep_tokens": "int",
    "keep_tokens_separator": "str",
    "secondary_separator": "str",
    "caption_separator": "str",
    "shuffle_caption": "bool",
    "caption_prefix": "str",
    "caption_suffix": "str",
    "caption_dropout_rate": "float",
    "caption_dropout_every_n_epochs": "int",
    "caption_tag_dropout_rate": "float",
    "flip_aug": "bool",
    "color_aug": "bool",
    "random_crop": "bool",
    "alpha_mask": "bool",
    "conditioning_data_dir": "str",
    "enable_wildcard": "bool",
    "token_warmup_min": "int",
    "token_warmup_step": "float",
    "resize_interpolation": "str",
}
# Allowed in [[datasets.subsets]] too, as sd-scripts' validation docs write them (a validation-only folder).
SUBSET_VALIDATION_KEYS: dict[str, str] = {"validation_split": "float", "validation_seed": "int"}
SUBSET_ONLY_KEYS: dict[str, str] = {"image_dir": "str", "is_reg": "bool", "metadata_file": "str"}
# sd-scripts keys that we recognise but do not implement yet.
UNSUPPORTED_KEYS: frozenset[str] = frozenset(
    {
        "network_multiplier",
        "face_crop_aug_range",
        "custom_attributes",
        "cache_info",
    }
)
# Spellings of sd-scripts' docs that its schema names otherwise: key -> sd-scripts' key.
KEY_ALIASES: dict[str, str] = {"interpolation_type": "resize_interpolation"}
#: resize_interpolation values (sd-scripts' validate_interpolation_fn).
INTERPOLATIONS: tuple[str, ...] = ("lanczos", "nearest", "bilinear", "linear", "bicubic", "cubic", "area", "box")
# Training-config (CLI) names that map onto dataset keys.
DEFAULT_ALIASES: dict[str, str] = {"train_batch_size": "batch_size", "dataset_repeats": "num_repeats"}

BUILTIN_DEFAULTS: dict[str, Any] = {
    "resolution": (512, 512),
    "batch_size": 1,
    "enable_bucket": False,
    "min_bucket_reso": 256,
    "max_bucket_reso": 1024,
    "bucket_reso_steps": 64,
    "bucket_no_upscale": False,
    "validation_split": 0.0,
    "validation_seed": None,
    "num_repeats": 1,
    "class_tokens": None,
    "caption_extension": None,
    "keep_tokens": 0,
    "keep_tokens_separator": None,
    "secondary_separator": None,
    "caption_separator": ",",
    "shuffle_caption": False,
    "caption_prefix": None,
    "caption_suffix": None,
    "caption_dropout_rate": 0.0,
    "caption_dropout_every_n_epochs": 0,
    "caption_tag_dropout_rate": 0.0,
    "flip_aug": False,
    "color_aug": False,
    "random_crop": False,
    "alpha_mask": False,
    "conditioning_data_dir": None,
    "enable_wildcard": False,
    "token_warmup_min": 1,
    "token_warmup_step": 0.0,
    "resize_interpolation": None,
}

_TYPE_WORDS = {
    "bool": "true or false",
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "resolution": "an integer or a [width, height] list",
}


def parse_resolution(value: Any, where: str) -> tuple[int, int]:
    """``512`` / ``"512"`` / ``"512,768"`` / ``[512, 768]`` -> ``(width, height)``."""
    items: list[Any]
    if isinstance(value, bool):
        items = []
    elif isinstance(value, int):
        items = [value, value]
    elif isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
        items = items * 2 if len(items) == 1 else items
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = []
    try:
        if len(items) != 2 or any(isinstance(v, (bool, float)) for v in items):
            raise ValueError
        w, h = int(items[0]), int(items[1])
        if w <= 0 or h <= 0:
            raise ValueError
    except (TypeError, ValueError):
        raise DatasetError(
            f"{where}: resolution = {value!r} is not valid. Use one positive integer (512) or "
            f"a [width, height] pair ([512, 768]; on the command line '512,768')."
        ) from None
    return w, h


def _check_type(key: str, value: Any, kind: str, where: str) -> Any:
    ok = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "str": isinstance(value, str),
        "resolution": True,
    }[kind]
    if not ok:
        raise DatasetError(
            f"{where}: '{key}' must be {_TYPE_WORDS[kind]}, got {value!r} ({type(value).__name__}). "
            f"Fix the value of '{key}' in the dataset config."
        )
    if kind == "resolution":
        return parse_resolution(value, where)
    return float(value) if kind == "float" else value


def _check_table(table: Any, allowed: dict[str, str], where: str, level: str) -> dict[str, Any]:
    """Validate one table's keys and types; return its values (typed)."""
    if not isinstance(table, dict):
        raise DatasetError(f"{where} must be a table of key = value pairs, got {type(table).__name__}.")
    out: dict[str, Any] = {}
    all_known = {**DATASET_KEYS, **SUBSET_INHERITABLE_KEYS, **SUBSET_ONLY_KEYS}
    for key, value in table.items():
        if key == "subsets" and level == "dataset":
            continue
        if key in KEY_ALIASES:
            name = KEY_ALIASES[key]
            if name in table:
                raise DatasetError(f"{where}: '{key}' and '{name}' are the same option; keep one of them.")
            logger.info("%s: '%s' is read as sd-scripts' '%s'", where, key, name)
            key = name
        if key in allowed:
            out[key] = _check_type(key, value, allowed[key], where)
            continue
        if key == "face_crop_aug_range":
            raise DatasetError(
                f"{where}: 'face_crop_aug_range' is not supported: it needs the face position that sd-scripts' "
                "detect_face_rotate.py writes into each file name, and crops around it. Remove it; use "
                "random_crop = true for crop variety, or crop the pictures beforehand."
            )
        if key in UNSUPPORTED_KEYS:
            raise DatasetError(
                f"{where}: '{key}' is an sd-scripts dataset option that this trainer does not support yet "
                f"(network_multiplier, custom_attributes, cache_info). Remove '{key}' from the dataset config."
            )
        if key in SUBSET_ONLY_KEYS:
            raise DatasetError(f"{where}: '{key}' is only allowed in [[datasets.subsets]]; move it there.")
        if key in DATASET_KEYS:
            raise DatasetError(
                f"{where}: '{key}' is a dataset-level key; move it to [[datasets]] or [general]."
            )
        if key == "subsets":
            raise DatasetError(f"{where}: 'subsets' belongs in [[datasets]] as [[datasets.subsets]].")
        close = difflib.get_close_matches(key, list(all_known) + ["subsets"], n=1, cutoff=0.6)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise DatasetError(
            f"{where}: unknown key '{key}'.{hint} Valid keys here: {', '.join(sorted(allowed))}."
        )
    return out


def _defaults_from_training(defaults: dict[str, Any]) -> dict[str, Any]:
    """Pick the dataset-relevant keys of a training config (sd-scripts option names)."""
    known = {**DATASET_KEYS, **SUBSET_INHERITABLE_KEYS}
    out: dict[str, Any] = {}
    for name, value in defaults.items():
        key = DEFAULT_ALIASES.get(name, name)
        if key not in known or value is None:
            continue
        out[key] = parse_resolution(value, "training config") if key == "resolution" else value
    return out


def _merge(*layers: dict[str, Any]) -> dict[str, Any]:
    """Merge layers given from lowest to highest priority."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    return merged


def _build_subset(values: dict[str, Any], where: str) -> SubsetSpec:
    subset_values = {k: v for k, v in values.items() if k in SubsetSpec.__dataclass_fields__}
    _check_ranges(subset_values, where)
    if subset_values.get("metadata_file"):  # fine-tuning subset: image_dir is optional (full-path keys)
        subset_values["metadata_file"] = Path(subset_values["metadata_file"])
        subset_values.setdefault("image_dir", subset_values["metadata_file"].parent)
    subset_values["image_dir"] = Path(subset_values["image_dir"])
    if subset_values.get("conditioning_data_dir"):
        subset_values["conditioning_data_dir"] = Path(subset_values["conditioning_data_dir"])
    return SubsetSpec(**subset_values)


def _build_dataset(values: dict[str, Any], subsets: list[SubsetSpec], where: str) -> DatasetSpec:
    ds_values = {k: v for k, v in values.items() if k in DATASET_KEYS}
    _check_ranges(ds_values, where)
    if ds_values.get("enable_bucket"):
        ds_values.update(bucket_range_by_steps(ds_values["resolution"], ds_values["min_bucket_reso"],
                                               ds_values["max_bucket_reso"], ds_values["bucket_reso_steps"], where))
    return DatasetSpec(subsets=subsets, **ds_values)


def bucket_range_by_steps(resolution: tuple[int, int], min_reso: int, max_reso: int, steps: int,
                          where: str) -> dict[str, int]:
    """sd-scripts' ``adjust_min_max_bucket_reso_by_steps``: min_bucket_reso rounded down and max_bucket_reso
    rounded up to multiples of bucket_reso_steps (with a note). The minimum stays at least one step (sd-scripts
    would divide by zero at 0). Where sd-scripts refuses a range that leaves out the resolution, this says so
    and goes on: the square bucket of the resolution is always made."""
    new_min = max(steps, min_reso - min_reso % steps)
    new_max = max_reso if max_reso % steps == 0 else max_reso + steps - max_reso % steps
    for name, old, new in (("min_bucket_reso", min_reso, new_min), ("max_bucket_reso", max_reso, new_max)):
        if new != old:
            logger.info("%s: %s %d is rounded to %d, a multiple of bucket_reso_steps (%d), as sd-scripts does",
                        where, name, old, new, steps)
    if min(resolution) < new_min or max(resolution) > new_max:
        logger.warning("%s: the bucket range %d-%d does not hold the resolution %dx%d (sd-scripts refuses this); "
                       "only the buckets inside the range and the resolution's square are made", where, new_min,
                       new_max, *resolution)
    return {"min_bucket_reso": new_min, "max_bucket_reso": new_max}


def _check_ranges(values: dict[str, Any], where: str) -> None:
    positive = ("batch_size", "bucket_reso_steps", "min_bucket_reso", "max_bucket_reso")
    for key in positive:
        if key in values and values[key] < 1:
            raise DatasetError(f"{where}: '{key}' = {values[key]} must be >= 1.")
    for key in ("num_repeats", "keep_tokens", "caption_dropout_every_n_epochs"):
        if key in values and values[key] < 0:
            raise DatasetError(f"{where}: '{key}' = {values[key]} must be >= 0.")
    if values.get("num_repeats", 0) > REPEATS_MAX:
        raise DatasetError(
            f"{where}: 'num_repeats' = {values['num_repeats']} is more than {REPEATS_MAX}: every repeat lists each "
            "picture once more per epoch, so this cannot fit in memory. Use fewer repeats and more epochs."
        )
    extension = values.get("caption_extension")
    if extension:
        from library.config.values import file_name_problem

        problem = file_name_problem(extension) if extension.strip(".") else "is only dots"
        if problem:
            raise DatasetError(f"{where}: 'caption_extension' = {extension!r} {problem}; give one such as '.txt'.")
    for key in ("caption_dropout_rate", "caption_tag_dropout_rate"):
        if key in values and not 0.0 <= values[key] <= 1.0:
            raise DatasetError(f"{where}: '{key}' = {values[key]} must be between 0 and 1.")
    split = values.get("validation_split")
    if split is not None and not 0.0 <= split <= 1.0:
        raise DatasetError(
            f"{where}: 'validation_split' = {split} must be between 0 and 1 (the share of each folder's "
            "pictures held out for the validation loss, e.g. 0.1; 1.0 makes the whole folder a validation set)."
        )
    if values.get("caption_separator") == "":
        raise DatasetError(f"{where}: 'caption_separator' is empty; give the text between tags, e.g. ','.")
    interpolation = values.get("resize_interpolation")
    if interpolation is not None and interpolation not in INTERPOLATIONS:
        raise DatasetError(
            f"{where}: resize_interpolation = {interpolation!r} is not one of {', '.join(INTERPOLATIONS)}."
        )
    for key in ("token_warmup_min", "token_warmup_step"):
        if values.get(key, 0) < 0:
            raise DatasetError(f"{where}: '{key}' = {values[key]} must be >= 0.")
    if values.get("min_bucket_reso", 0) > values.get("max_bucket_reso", 1 << 30):
        raise DatasetError(
            f"{where}: min_bucket_reso ({values['min_bucket_reso']}) is larger than max_bucket_reso "
            f"({values['max_bucket_reso']}); swap or fix them."
        )


def specs_from_folders(
    train_data_dir: str | Path, reg_data_dir: str | Path | None, defaults: dict[str, Any]
) -> list[DatasetSpec]:
    """One :class:`DatasetSpec` from the ``<repeats>_<class tokens>`` folders of train (and reg) dirs.

    ``defaults`` maps sd-scripts option names (``train_batch_size``, ``resolution``,
    ``caption_extension``, ``shuffle_caption``, ...) to the training config's values.
    """
    base = _merge(BUILTIN_DEFAULTS, _defaults_from_training(defaults))
    subsets = []
    for root, option, is_reg in (
        (train_data_dir, "train_data_dir", False),
        (reg_data_dir, "reg_data_dir", True),
    ):
        if root is None:
            continue
        for folder in discover_concept_folders(root, option):
            values = _merge(
                base,
                {
                    "image_dir": folder.path,
                    "num_repeats": folder.repeats,
                    "is_reg": is_reg,
                    "class_tokens": folder.class_tokens,
                },
            )
            subsets.append(_build_subset(values, f"{option} folder '{folder.path.name}'"))
    return [_build_dataset(base, subsets, "training config")]


def load_dataset_file(path: str | Path) -> dict[str, Any]:
    """Read a dataset config file (``.toml`` or ``.json``) into a dict."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset_config '{path}' does not exist. Check the dataset_config path.")
    try:
        if path.suffix.lower() == ".json":
            return json.loads(path.read_text(encoding="utf-8"))
        return tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except RecursionError:
        raise DatasetError(f"dataset_config '{path}' is nested too deeply to read; flatten its arrays and tables.") from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(
            f"dataset_config '{path}' cannot be parsed: {exc}. Fix the syntax "
            f"(TOML paths with backslashes need single quotes, e.g. image_dir = 'C:\\data')."
        ) from exc


def specs_from_dataset_config(path: str | Path, defaults: dict[str, Any]) -> list[DatasetSpec]:
    """Parse and strictly validate an sd-scripts ``--dataset_config`` file into dataset specs.

    Relative ``image_dir`` paths are resolved against the current directory, as sd-scripts does.
    """
    data = load_dataset_file(path)
    where_file = f"dataset_config '{path}'"
    inheritable = {**DATASET_KEYS, **SUBSET_INHERITABLE_KEYS}
    general = _check_table(data.get("general", {}), inheritable, f"{where_file} [general]", "general")
    general = _merge(_top_level_options(data, inheritable, where_file, general), general)
    datasets_raw = data.get("datasets")
    if not isinstance(datasets_raw, list) or not datasets_raw:
        raise DatasetError(
            f"{where_file}: no [[datasets]] table. Add at least one [[datasets]] with [[datasets.subsets]]."
        )
    base = _merge(BUILTIN_DEFAULTS, _defaults_from_training(defaults), general)
    specs = []
    for i, ds_raw in enumerate(datasets_raw):
        where_ds = f"{where_file} [[datasets]] #{i + 1}"
        ds_values = _merge(base, _check_table(ds_raw, inheritable, where_ds, "dataset"))
        subsets_raw = ds_raw.get("subsets")
        if not isinstance(subsets_raw, list) or not subsets_raw:
            raise DatasetError(
                f"{where_ds}: no [[datasets.subsets]]. Add one with image_dir = '<folder of images>'."
            )
        subsets = []
        for j, sub_raw in enumerate(subsets_raw):
            where_sub = f"{where_ds} [[datasets.subsets]] #{j + 1}"
            sub_values = _check_table(
                sub_raw, {**SUBSET_INHERITABLE_KEYS, **SUBSET_ONLY_KEYS, **SUBSET_VALIDATION_KEYS}, where_sub,
                "subset"
            )
            if "image_dir" not in sub_values and "metadata_file" not in sub_values:
                raise DatasetError(
                    f"{where_sub}: 'image_dir' is required; set it to the folder of images (or set "
                    f"'metadata_file' for a fine-tuning subset)."
                )
            subsets.append(_build_subset(_merge(ds_values, sub_values), where_sub))
        from library.data.metadata import check_fine_tuning_subsets

        check_fine_tuning_subsets(subsets, where_ds)
        specs.append(_build_dataset(ds_values, subsets, where_ds))
    return specs


def _top_level_options(data: dict[str, Any], inheritable: dict[str, str], where_file: str,
                       general: dict[str, Any]) -> dict[str, Any]:
    """Options written above the first table (``validation_seed = 42`` before ``[[datasets]]``, as sd-scripts'
    FLUX and validation docs show them): read as [general] values. The same option in both is an error."""
    known = set(inheritable) | set(KEY_ALIASES)
    top = {key: value for key, value in data.items() if key not in ("general", "datasets")}
    for key in top:
        if key not in known:
            close = difflib.get_close_matches(key, ["general", "datasets", *inheritable], n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise DatasetError(
                f"{where_file}: unknown top-level key '{key}'.{hint} The top level holds [general], [[datasets]] "
                f"and dataset options (then read as [general] values)."
            )
    checked = _check_table(top, inheritable, f"{where_file} (top level)", "general")
    both = sorted(set(checked) & set(general))
    if both:
        raise DatasetError(
            f"{where_file}: {', '.join(both)} is set both at the top level and in [general]; keep one of them."
        )
    return checked


def specs_from_in_json(
    in_json: str | Path, train_data_dir: str | Path | None, dataset_repeats: int, defaults: dict[str, Any]
) -> list[DatasetSpec]:
    """One fine-tuning :class:`DatasetSpec` from ``in_json`` (sd-scripts' ``--in_json``): a single subset whose
    pictures and captions the metadata file lists, found in ``train_data_dir`` (unset: full-path keys or the
    file's folder), each used ``dataset_repeats`` times per epoch."""
    base = _merge(BUILTIN_DEFAULTS, _defaults_from_training(defaults))
    values = _merge(base, {"metadata_file": in_json, "num_repeats": dataset_repeats})
    if train_data_dir is not None:
        values["image_dir"] = train_data_dir
    subset = _build_subset(values, f"in_json '{in_json}'")
    return [_build_dataset(base, [subset], "training config")]
