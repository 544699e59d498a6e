"""What the dataset check reads: a training folder (+ reg folder), a dataset TOML, or a training config TOML."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import toml

from library.data.dataset_config import specs_from_dataset_config, specs_from_folders
from library.data.specs import DatasetSpec
from library.errors import UserError
from library.training.data_setup import DATASET_DEFAULT_OPTIONS


def _training_values(path: Path, trainer: str) -> dict[str, Any]:
    """The dataset-related options of a training config TOML, typed by the schema."""
    from library.config.load import read_toml
    from library.config.options import SCHEMA
    from library.config.values import coerce

    values = read_toml(path, trainer)
    out = {}
    for name in (*DATASET_DEFAULT_OPTIONS, "train_data_dir", "reg_data_dir", "dataset_config"):
        if name in SCHEMA:
            out[name] = coerce(SCHEMA[name], values.get(name, SCHEMA[name].default))
    return out


def load_specs(
    source: str | Path, reg_data_dir: str | Path | None = None, trainer: str = "network"
) -> list[DatasetSpec]:
    """Dataset specs from ``source``: a folder of ``<repeats>_<class>`` folders, an sd-scripts dataset
    TOML/JSON (has ``[[datasets]]``), or a training config TOML (``train_data_dir`` /
    ``dataset_config`` and the bucket options). ``reg_data_dir`` adds a reg folder to the first two."""
    source = Path(source)
    if source.is_dir():
        return specs_from_folders(source, reg_data_dir, {})
    if not source.is_file():
        raise UserError(
            f"'{source}' does not exist. Give a training folder, a dataset TOML or a training config."
        )
    if source.suffix.lower() == ".json":
        return specs_from_dataset_config(source, {})
    try:
        raw = toml.loads(source.read_text(encoding="utf-8"))
    except (toml.TomlDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"'{source}' is not valid TOML: {exc}.") from None
    if "datasets" in raw:
        return specs_from_dataset_config(source, {})
    values = _training_values(source, trainer)
    defaults = {k: v for k, v in values.items() if k in DATASET_DEFAULT_OPTIONS}
    if values.get("dataset_config"):
        return specs_from_dataset_config(values["dataset_config"], defaults)
    if not values.get("train_data_dir"):
        raise UserError(
            f"config '{source}' sets neither train_data_dir nor dataset_config: nothing to check."
        )
    return specs_from_folders(values["train_data_dir"], reg_data_dir or values.get("reg_data_dir"), defaults)
