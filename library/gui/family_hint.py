"""Which model family the chosen base model is, found cheaply enough to run on every edit of the field.

No weights are read: a ``.safetensors`` file gives its header's key names, a diffusers folder (or a hub
repo already in the local Hugging Face cache) its ``model_index.json`` and text-encoder config, a
``builtin:`` name the built-in table. The trainer detects the family again when it loads the model; this
is only what the form shows. Nothing here raises: a source that cannot be told gives an "unknown: …" hint.
"""

from __future__ import annotations

from dataclasses import dataclass

from library.models.family import ModelFamily
from library.models.peek import UnknownFamily, detect_family

#: options that only mean something for a family with more than one text encoder (SDXL): the
#: declarations of ``library.config.options_families``, shown only when such a family is detected.
MULTI_TEXT_ENCODER_OPTIONS = (
    "cache_text_encoder_outputs",
    "cache_text_encoder_outputs_to_disk",
    "no_half_vae",
    "learning_rate_te1",
    "learning_rate_te2",
)


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


def option_visibility(family: ModelFamily | None, names, changed=()) -> dict[str, bool]:
    """For the family-only options among ``names``: whether the form shows each. A family with two text
    encoders shows them all, a known family with one hides them; when the family is unknown (a placeholder
    path, a hub id not downloaded yet) the ones in ``changed`` (set away from their default, e.g. by a
    loaded config) stay shown, so no setting is hidden that the run would use."""
    if family is None:
        return {name: name in changed for name in names if name in MULTI_TEXT_ENCODER_OPTIONS}
    multi = len(family.text_parts) > 1
    return {name: multi for name in names if name in MULTI_TEXT_ENCODER_OPTIONS}
