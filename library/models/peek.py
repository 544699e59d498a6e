"""Which model family a base-model source is, without loading its weights.

A ``.safetensors`` file gives its header's key names, a diffusers folder (or a hub repo already in the local
Hugging Face cache) its ``model_index.json`` and text-encoder config, a ``builtin:`` name the built-in table.
The trainer uses it for family defaults before the model loads (resolution), the GUI to show the family.
"""

from __future__ import annotations

from pathlib import Path

from library.models.family import ModelFamily


class UnknownFamily(Exception):
    """Why the family of a source could not be told (the text after "unknown: ")."""


def detect_family(source: str) -> ModelFamily:
    """The family of a base-model source without loading weights; raises UnknownFamily with the reason."""
    from library.models.loading import HUB_ID, SINGLE_FILE_SUFFIXES
    from library.models.tiny import BUILTIN_NAMES

    if source.startswith("builtin:"):
        if source not in BUILTIN_NAMES:
            raise UnknownFamily(
                f"no built-in model {source!r} (built-in: {', '.join(sorted(BUILTIN_NAMES))})"
            )
        return _family(BUILTIN_NAMES[source])
    path = Path(source).expanduser()
    if path.is_dir():
        return _diffusers_folder(path)
    if path.is_file():
        return _single_file(path)
    if path.suffix.lower() in SINGLE_FILE_SUFFIXES:
        raise UnknownFamily(f"no such file: {source}")
    if HUB_ID.match(source) and not source.startswith((".", "~")):
        return _cached_hub_repo(source)
    raise UnknownFamily(f"{source} is not an existing file or folder, a hub id or a built-in model")


def _family(name: str) -> ModelFamily:
    from library.models.family import get_model_family

    return get_model_family(name)


def _from_diffusers_info(folder: Path, what: str) -> ModelFamily:
    from library.models.family import family_of_diffusers
    from library.models.loading import diffusers_info

    info = diffusers_info(str(folder), local=True)
    family = family_of_diffusers(info)
    if family is None:
        raise UnknownFamily(
            f"{what} is a diffusers {info.get('class_name') or 'model'} of no supported family"
        )
    return family


def _diffusers_folder(path: Path) -> ModelFamily:
    if not (path / "model_index.json").is_file() and not (path / "unet").is_dir():
        raise UnknownFamily(f"{path} is not a diffusers model folder (no model_index.json, no unet/)")
    return _from_diffusers_info(path, str(path))


def _single_file(path: Path) -> ModelFamily:
    from library.models.family import family_of_single_file
    from library.models.loading import describe_foreign_keys

    if path.suffix.lower() != ".safetensors":
        raise UnknownFamily(
            f"{path.name}: only .safetensors headers are read here (a pickle checkpoint is not opened); "
            "the trainer detects the family when it loads the model"
        )
    keys = dict.fromkeys(_safetensors_keys(path))
    family = family_of_single_file(keys)
    if family is None and not any(k.startswith("model.diffusion_model.") for k in keys):
        raise UnknownFamily(f"{path.name} is not a base model: {describe_foreign_keys(keys)}")
    if family is None:
        raise UnknownFamily(f"{path.name}: its layout matches no supported model family")
    return family


def _safetensors_keys(path: Path) -> list[str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())
    except Exception as exc:  # SafetensorError (random bytes, empty, truncated): the loader names the problem
        raise UnknownFamily(f"{path.name} is not a readable .safetensors file ({exc})") from None


def _cached_hub_repo(repo_id: str) -> ModelFamily:
    """A hub repo's family from the local Hugging Face cache only (never the network)."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "model_index.json")
    if not isinstance(cached, str):
        raise UnknownFamily(
            f"hub id {repo_id} is not in the local Hugging Face cache; the trainer detects the family "
            "when it downloads the model"
        )
    return _from_diffusers_info(Path(cached).parent, f"hub repo {repo_id}")
