"""Which model family the chosen base model is, found cheaply enough to run on every edit of the field.

No weights are read: a ``.safetensors`` file gives its header's key names, a diffusers folder (or a hub
repo already in the local Hugging Face cache) its ``model_index.json`` and text-encoder config, a
``builtin:`` name the built-in table. The trainer detects the family again when it loads the model; this
is only what the form shows. Nothing here raises: a source that cannot be told gives an "unknown: …" hint.

Which options the form shows for a family comes from the families' own ``accepted_options`` (the options only
some families take, :func:`library.models.family.check_family_options`): an option another family takes and
this one does not is hidden, with a hint naming it; options that only one family takes (FLUX's ``clip_l``,
``timestep_sampling`` …) form that family's group, shown only for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from library.config.options import SCHEMA
from library.models.family import ModelFamily, all_families
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
    #: the source is one file (for a family with separate file options: only the denoiser's weights)
    single_file: bool = False

    @property
    def multi_text_encoder(self) -> bool:
        return self.family is not None and len(self.family.text_parts) > 1


def short_name(family: ModelFamily) -> str:
    """The name people know the family by ("SD1", "SDXL", "FLUX.1"): the family's ``label`` where it has one."""
    return getattr(family, "label", None) or family.name.upper()


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
    return FamilyHint(family, family_label(family), Path(source).expanduser().is_file())


def option_visibility(family: ModelFamily | None, names, changed=()) -> dict[str, bool]:
    """For the family-only options among ``names``: whether the form shows each. A family with two text
    encoders shows them all, a known family with one hides them; when the family is unknown (a placeholder
    path, a hub id not downloaded yet) the ones in ``changed`` (set away from their default, e.g. by a
    loaded config) stay shown, so no setting is hidden that the run would use."""
    if family is None:
        return {name: name in changed for name in names if name in MULTI_TEXT_ENCODER_OPTIONS}
    multi = len(family.text_parts) > 1
    return {name: multi for name in names if name in MULTI_TEXT_ENCODER_OPTIONS}


# --- options only some families take ---------------------------------------------------------------------


def family_only_options() -> frozenset[str]:
    """Every option that some family takes and another refuses (the union of ``accepted_options``)."""
    return frozenset().union(*(f.accepted_options for f in all_families()))


def exclusive_options(family: ModelFamily) -> frozenset[str]:
    """The options ``family`` alone takes (FLUX's ``clip_l`` …): its own group in the form."""
    others = [f.accepted_options for f in all_families() if f is not family]
    return family.accepted_options - frozenset().union(*others)


def exclusive_options_any() -> frozenset[str]:
    """The options that one family alone takes (each lives in that family's group, not in the others' forms)."""
    return frozenset().union(*(exclusive_options(f) for f in all_families()))


def family_groups(names) -> list[tuple[ModelFamily, list[str]]]:
    """(family, its exclusive options among ``names`` in ``names`` order) for each family that has some."""
    groups = []
    for family in all_families():
        own = exclusive_options(family)
        members = [n for n in names if n in own]
        if members:
            groups.append((family, members))
    return groups


def file_options(family: ModelFamily) -> list[str]:
    """The separate-file options a family takes (FLUX: clip_l, t5xxl, ae), in schema order."""
    return [o.name for o in SCHEMA.options if o.name in family.accepted_options and o.kind == "file"]


def assumed_family(changed) -> ModelFamily | None:
    """The family a form is for when its model cannot be told (a preset's placeholder path): the one family
    whose own options the config sets, else None."""
    changed = set(changed)
    found = [f for f in all_families() if exclusive_options(f) & changed]
    return found[0] if len(found) == 1 else None


def family_visibility(family: ModelFamily | None, names, changed=()) -> dict[str, bool]:
    """For the options among ``names`` that only some families take: whether the form shows each.

    A known family shows the ones it takes and hides the others, except those set away from their default
    (``changed``): they stay shown so the user sees and clears them (the run refuses them). With no family,
    an option several families take stays shown, one family's own options only when set."""
    universe = family_only_options()
    changed = set(changed)
    if family is None:
        alone = exclusive_options_any()
        return {n: n not in alone or n in changed for n in names if n in universe}
    return {n: n in family.accepted_options or n in changed for n in names if n in universe}


def form_visibility(family: ModelFamily | None, names, changed=()) -> dict[str, bool]:
    """Every family-dependent option among ``names`` -> shown or not (:func:`option_visibility` for the
    multi-text-encoder options, :func:`family_visibility` for the rest)."""
    return {**option_visibility(family, names, changed), **family_visibility(family, names, changed)}


def _names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def family_notes(hint: FamilyHint, names, values: dict, changed=()) -> list[str]:
    """The lines the form shows under the family line for ``hint`` (``names``: the form's options, ``values``:
    the raw values of the family's file options, ``changed``: the options set away from their default):

    - what a family with separate files needs besides the model (FLUX's clip_l, t5xxl and ae for a single
      transformer file, which are missing or not found; for a diffusers folder, that they stay empty);
    - which options are hidden because this family refuses them, and any such option that is set anyway."""
    family, notes = hint.family, []
    if family is None:
        guess = assumed_family(changed)
        if guess is not None:
            name = short_name(guess)
            notes.append(f"The config sets {name} options, so the form shows {name}'s fields.")
        return notes
    files = [n for n in file_options(family) if n in names]
    given = {n: str(values.get(n) or "").strip() for n in files}
    if files and hint.single_file:
        missing = [n for n in files if not given[n]]
        absent = [f"{n} = {given[n]}" for n in files if given[n] and not Path(given[n]).expanduser().is_file()]
        state = [f"missing: {_names(missing)}"] if missing else []
        state += [f"no such file: {', '.join(absent)}"] if absent else []
        notes.append(
            f"A single {short_name(family)} transformer file: {_names(files)} must be set too (separate files; "
            f"{'; '.join(state) or 'all set'})."
        )
    elif files:
        extra = [n for n in files if given[n]]
        notes.append(
            f"{_names(files)} come from the model folder: leave them empty"
            + (f" (⚠ {_names(extra)} set: clear {'it' if len(extra) == 1 else 'them'}, or the run is refused)."
               if extra else ".")
        )
    changed, universe, alone = set(changed), family_only_options(), exclusive_options_any()
    refused = [n for n in names if n in universe and n not in family.accepted_options]
    hidden = [n for n in refused if n not in changed and n not in alone]
    if hidden:
        notes.append(f"Hidden (they do not apply to {short_name(family)} models): {', '.join(hidden)}.")
    refused_set = [n for n in refused if n in changed]
    if refused_set:
        notes.append(
            f"⚠ {_names(refused_set)} {'is' if len(refused_set) == 1 else 'are'} set but "
            f"{'does' if len(refused_set) == 1 else 'do'} not apply to {short_name(family)} models: clear "
            f"{'it' if len(refused_set) == 1 else 'them'}, or the run is refused."
        )
    return notes
