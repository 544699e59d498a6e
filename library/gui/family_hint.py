"""Which model family the chosen base model is, found cheaply enough to run on every edit of the field.

No weights are read: a ``.safetensors`` file gives its header's key names, a diffusers folder (or a hub
repo already in the local Hugging Face cache) its ``model_index.json`` and text-encoder config, a
``builtin:`` name the built-in table. The trainer detects the family again when it loads the model; this
is only what the form shows. Nothing here raises: a source that cannot be told gives an "unknown: …" hint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from library.models.family import ModelFamily

#: options that only mean something for a family with more than one text encoder (SDXL): the
#: declarations of ``library.config.options_families``, shown only when such a family is detected.
MULTI_TEXT_ENCODER_OPTIONS = (
    "cache_text_encoder_outputs",
    "cache_text_encoder_outputs_to_disk",
    "no_half_vae",
    "learning_rate_te1",
    "learning_rate_te2",
)


class UnknownFamily(Exception):
    """Why the family of a source could not be told (the text after "unknown: ")."""


@dataclass(frozen=True)
class FamilyHint:
    """The detected family (None when unknown) and the line the form shows next to the model field."""

    family: ModelFamily | None
    text: str

    @property
    def multi_text_encoder(self) -> bool:
        return self.family is not None and len(self.family.text_parts) > 1


def family_label(family: ModelFamily) -> str:
    """e.g. "SDXL — Stable Diffusion XL (two text encoders, size conditioning)"."""
    return f"{family.name.upper()} — {family.description}" if family.description else family.name.upper()


def family_hint(source: str | None) -> FamilyHint:
    """The hint for a ``pretrained_model_name_or_path`` value; empty text for an empty field."""
    source = (source or "").strip()
    if not source:
        return FamilyHint(None, "")
    try:
        family = detect_family(source)
    except UnknownFamily as why:
        return FamilyHint(None, f"unknown: {why}")
    except Exception as error:  # noqa: BLE001 - a bad file must never break the form
        return FamilyHint(None, f"unknown: {type(error).__name__}: {error}")
    return FamilyHint(family, family_label(family))


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
    if not any(k.startswith("model.diffusion_model.") for k in keys):
        raise UnknownFamily(f"{path.name} is not a base model: {describe_foreign_keys(keys)}")
    family = family_of_single_file(keys)
    if family is None:
        raise UnknownFamily(f"{path.name}: its layout matches no supported model family")
    return family


def _safetensors_keys(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return list(handle.keys())


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


def option_visibility(family: ModelFamily | None, names, changed=()) -> dict[str, bool]:
    """For the family-only options among ``names``: whether the form shows each. A family with two text
    encoders shows them all, a known family with one hides them; when the family is unknown (a placeholder
    path, a hub id not downloaded yet) the ones in ``changed`` (set away from their default, e.g. by a
    loaded config) stay shown, so no setting is hidden that the run would use."""
    if family is None:
        return {name: name in changed for name in names if name in MULTI_TEXT_ENCODER_OPTIONS}
    multi = len(family.text_parts) > 1
    return {name: multi for name in names if name in MULTI_TEXT_ENCODER_OPTIONS}
