"""The option schema: one typed declaration per training option.

Every option is declared once (see ``options.py``). The argparse flags of the trainers, the keys of the
TOML config, validation, ``--output_config`` and the GUI form are all derived from these declarations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Value kinds. ``path``/``dir``/``file`` are strings with a filesystem meaning (the GUI shows pickers,
#: validation checks existence where ``must_exist``); ``strs`` is a list of strings (argparse nargs="*");
#: ``steps`` is a count, a ratio < 1 of the total steps or a "N%" string; ``float_or_floats`` accepts one
#: float or a list (sd-scripts' ``text_encoder_lr``); ``resolution`` is "512", "512,768" or [w, h].
KINDS = ("bool", "int", "float", "str", "path", "dir", "file", "strs", "steps", "float_or_floats", "resolution")

TRAINERS = frozenset({"network", "db", "ti"})  # ti: textual inversion (train_textual_inversion.py)


@dataclass(frozen=True)
class Option:
    """One training option: its name (sd-scripts' name), kind, default, help and where it belongs."""

    name: str
    kind: str
    default: Any
    help: str
    group: str
    choices: tuple | Callable[[], tuple] | None = None
    min: float | None = None
    max: float | None = None
    #: ``min_exclusive``: the value must be strictly greater than ``min``.
    min_exclusive: bool = False
    trainers: frozenset = TRAINERS
    #: shown in the GUI's common section (the rest goes under "Advanced").
    common: bool = False
    #: for path kinds: validation fails when the path does not exist.
    must_exist: bool = False
    #: extra check returning an error message or None (called with the coerced value).
    check: Callable[[Any], str | None] | None = None
    #: accepted for compatibility with sd-scripts configs, with this note logged when set.
    compat_note: str | None = None
    #: never written by --output_config (e.g. the config file path itself).
    transient: bool = False
    #: ``0`` is one of sd-scripts' spellings of "unset" for this option (its code tests ``if args.x:``, or
    #: kohya_ss writes 0 for an empty field): it reads as the default, which is "off" where that is None.
    zero_is_off: bool = False
    #: ``""`` is a value of its own (refused or used as written), not "unset" (see values.empty_is_unset).
    empty_is_value: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"option {self.name}: unknown kind {self.kind!r}")

    def allowed_choices(self) -> tuple | None:
        """The allowed values, resolving a lazy (registry-backed) choice list."""
        if callable(self.choices):
            return tuple(self.choices())
        return self.choices


@dataclass(frozen=True)
class Group:
    """A named group of options, in display order."""

    key: str
    title: str
    description: str = ""


@dataclass
class Schema:
    """An ordered collection of options and groups, with name lookup and aliases."""

    groups: list[Group]
    options: list[Option]
    #: old or misspelt names accepted with a warning: alias -> current name.
    aliases: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._by_name = {}
        group_keys = {g.key for g in self.groups}
        for opt in self.options:
            if opt.name in self._by_name:
                raise ValueError(f"option {opt.name} declared twice")
            if opt.group not in group_keys:
                raise ValueError(f"option {opt.name}: unknown group {opt.group}")
            self._by_name[opt.name] = opt

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def __getitem__(self, name: str) -> Option:
        return self._by_name[name]

    def names(self) -> list[str]:
        return [o.name for o in self.options]

    def for_trainer(self, trainer: str) -> list[Option]:
        """Options used by ``trainer`` ("network" or "db"), in declaration order."""
        return [o for o in self.options if trainer in o.trainers]

    def defaults(self, trainer: str | None = None) -> dict[str, Any]:
        opts = self.options if trainer is None else self.for_trainer(trainer)
        return {o.name: o.default for o in opts}
