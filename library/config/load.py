"""The CLI and TOML faces of the schema: argparse flags, config files, merging and validation.

Order of precedence: schema defaults < ``--config_file`` TOML < command-line flags. Everything is
validated here, before any model is loaded; errors are ``ConfigError`` with one clear paragraph.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import toml

from library.config.i18n import group_description, group_title, text
from library.config.i18n.cli_help import HELP_LANG_FLAG, SchemaHelpFormatter, help_lang_from_argv, option_help
from library.config.known_elsewhere import SD_SCRIPTS_NAMES
from library.config.options import SCHEMA
from library.config.schema import Group, Option, Schema
from library.config.values import coerce, is_off_value
from library.errors import ConfigError

logger = logging.getLogger(__name__)


class Config:
    """The validated, typed options of one run: attribute access by option name, read-only.

    ``explicit`` holds the names the user set (in the TOML or on the command line).
    """

    def __init__(self, values: dict[str, Any], explicit: set[str], trainer: str):
        object.__setattr__(self, "_values", dict(values))
        object.__setattr__(self, "explicit", frozenset(explicit))
        object.__setattr__(self, "trainer", trainer)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"no option named {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Config is read-only; use replace()")

    def to_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def replace(self, **changes: Any) -> Config:
        values = {**self._values, **changes}
        return Config(values, set(self.explicit) | set(changes), self.trainer)


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors become a one-paragraph ``ConfigError`` instead of a usage dump."""

    def error(self, message: str):
        raise ConfigError(f"command line: {message}. Run with --help to list the options.")


def build_parser(
    trainer: str, description: str = "", schema: Schema = SCHEMA, lang: str = "en"
) -> argparse.ArgumentParser:
    """argparse flags for every option of ``trainer``; unset flags are absent from the namespace.

    ``lang``: the language of ``--help`` (see ``library.config.i18n.cli_help``); the help lists each
    option's choices and default."""
    formatter = functools.partial(SchemaHelpFormatter, lang=lang)
    parser = _Parser(description=description, argument_default=argparse.SUPPRESS, formatter_class=formatter)
    groups = {g.key: parser.add_argument_group(*_group_texts(g, lang)) for g in schema.groups}
    for opt in schema.for_trainer(trainer):
        group = groups[opt.group]
        flag = f"--{opt.name}"
        helptext = option_help(opt, lang)
        if opt.kind == "bool":
            action = group.add_argument(flag, action=argparse.BooleanOptionalAction, help=helptext)
        elif opt.kind in ("strs", "float_or_floats"):
            action = group.add_argument(flag, nargs="*", metavar="VALUE", help=helptext)
        else:
            action = group.add_argument(flag, metavar=opt.kind.upper(), help=helptext)
        action.schema_option = opt  # read by SchemaHelpFormatter when --help prints
    parser.add_argument(HELP_LANG_FLAG, metavar="LANG", help=text("cli.help_lang", lang))
    for alias, name in schema.aliases.items():
        if name in schema and trainer in schema[name].trainers:
            parser.add_argument(f"--{alias}", dest=name, help=argparse.SUPPRESS)
    return parser


def _group_texts(group: Group, lang: str) -> tuple[str, str]:
    if lang == "en":
        return group.title, group.description
    return group_title(group.key, lang), group_description(group.key, lang)


def read_toml(path: str | Path, trainer: str, schema: Schema = SCHEMA) -> dict[str, Any]:
    """Read a flat sd-scripts style TOML; ``[section]`` headers are grouping only and flattened."""
    path = Path(path)
    if not path.exists() and path.suffix != ".toml" and path.with_suffix(path.suffix + ".toml").exists():
        path = path.with_suffix(path.suffix + ".toml")
    if not path.is_file():
        raise ConfigError(f"config_file {str(path)!r} does not exist. Give the path of a TOML config file.")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: editors on Windows may save a BOM first
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config_file {str(path)!r} is not UTF-8 text ({exc}). Save it as UTF-8.") from None
    except OSError as exc:
        raise ConfigError(f"config_file {str(path)!r} cannot be read ({exc.strerror or exc}).") from None
    try:
        raw = toml.loads(text)
    except toml.TomlDecodeError as exc:
        raise ConfigError(f"config_file {str(path)!r} is not valid TOML: {exc}. Fix the syntax at that line.") from None
    except RecursionError:
        raise ConfigError(
            f"config_file {str(path)!r} is nested too deeply (arrays or tables inside each other thousands of "
            f"levels deep). Options are plain values or flat lists; fix the file."
        ) from None
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict) and not _is_option(key, schema):
            for inner_key, inner_value in value.items():
                if isinstance(inner_value, dict) and not _is_option(inner_key, schema):
                    raise ConfigError(
                        f"config_file {str(path)!r}: [{key}.{inner_key}] is nested two levels deep; options go "
                        f"directly under a [section] header or at the top level."
                    )
                _put(flat, inner_key, inner_value, path)
        else:
            _put(flat, key, value, path)
    return _check_names(flat, trainer, f"config_file {str(path)!r}", schema)


def _is_option(key: str, schema: Schema) -> bool:
    """A table under an option's name is a wrong value (``network_dim = {a = 1}``), not a section:
    it is kept as the value, and coercion says the option must be a number, not a table."""
    return schema.aliases.get(key, key) in schema


def _put(flat: dict[str, Any], key: str, value: Any, path: Path) -> None:
    if key in flat:
        raise ConfigError(f"config_file {str(path)!r}: option {key!r} is set twice (in two sections).")
    flat[key] = value


def _check_names(values: dict[str, Any], trainer: str, where: str, schema: Schema) -> dict[str, Any]:
    """Map aliases to current names and reject unknown or unsupported names."""
    out: dict[str, Any] = {}
    known = [o.name for o in schema.for_trainer(trainer)]
    for key, value in values.items():
        name = schema.aliases.get(key, key)
        if name != key:
            logger.warning("%s: option %r is an old name; use %r", where, key, name)
        if name in schema and trainer in schema[name].trainers:
            out[name] = value
            continue
        if name in schema:
            if _is_off_for(schema[name], value):
                logger.debug("%s: option %r is off; this trainer does not use it, so it is skipped", where, key)
                continue
            raise ConfigError(f"{where}: option {key!r} is not used by this trainer; remove it.")
        if name in SD_SCRIPTS_NAMES:
            if value in (False, None, "", 0, [], "no"):
                # switched off: nothing to support (kohya_ss writes every option, most of them off;
                # accelerate-style options say "no", e.g. dynamo_backend = "no")
                logger.info("%s: option %r is off; it is not supported here, so it is skipped", where, key)
                continue
            raise ConfigError(
                f"{where}: option {key!r} is an sd-scripts option this trainer does not support yet. Remove it "
                f"from the config; nothing is silently ignored here."
            )
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]!r}?" if close else " Run with --help to list the options."
        raise ConfigError(f"{where}: unknown option {key!r}.{hint}")
    return out


def parse_config(argv: Sequence[str] | None, trainer: str, schema: Schema = SCHEMA) -> Config:
    """Parse the command line (and the TOML it names) into a validated ``Config``."""
    args = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(trainer, schema=schema, lang=help_lang_from_argv(args))
    namespace, unknown = parser.parse_known_args(args)
    if unknown:
        flags = [u[2:].split("=")[0] for u in unknown if u.startswith("--")]
        _check_names(dict.fromkeys(flags or unknown, True), trainer, "command line", schema)
        raise ConfigError(f"command line: unexpected argument(s) {' '.join(unknown)!r}.")
    cli = vars(namespace)
    cli.pop("help_lang", None)
    file_values: dict[str, Any] = {}
    if cli.get("config_file"):
        file_values = read_toml(cli["config_file"], trainer, schema)
        file_values.pop("config_file", None)
        file_values.pop("output_config", None)
    return config_from_values({**file_values, **cli}, trainer, schema)


def config_from_values(values: dict[str, Any], trainer: str, schema: Schema = SCHEMA) -> Config:
    """Validate raw values (TOML types or CLI strings) into a ``Config``; also used by the GUI."""
    values = _check_names(values, trainer, "config", schema)
    merged = {name: coerce(schema[name], raw) for name, raw in schema.defaults(trainer).items()}
    explicit = set()
    for name, raw in values.items():
        value = coerce(schema[name], raw)
        if value is None:  # an off value (false, 0, ""): the default, as if not set
            continue
        merged[name] = value
        explicit.add(name)
    _apply_sd_scripts_readings(merged, explicit)
    config = Config(merged, explicit, trainer)
    from library.config.rules import check_rules

    check_rules(config, schema)
    for name in values:
        note = schema[name].compat_note
        if note and merged[name]:
            logger.info("%s: %s", name, note)
    return config


def _is_off_for(opt: Option, raw: Any) -> bool:
    """An off value of an option another trainer uses: unset, false, 0 or empty, as written or as read."""
    if is_off_value(opt, raw):
        return True
    try:
        value = coerce(opt, raw)
    except ConfigError:
        return False
    return value is None or value is False or value == 0 or value == []


def _apply_sd_scripts_readings(merged: dict[str, Any], explicit: set[str]) -> None:
    """Values that sd-scripts reads as another value: ``network_alpha = 0`` is alpha = rank (scale 1, as
    sd-scripts' LoRAModule sets it)."""
    if merged.get("network_alpha") == 0 and "network_alpha" in explicit:
        rank = merged.get("network_dim") or 4
        logger.info("network_alpha = 0 means alpha = network_dim (%s): the update is not scaled, as in sd-scripts",
                    rank)
        merged["network_alpha"] = float(rank)


def effective_toml(config: Config, schema: Schema = SCHEMA) -> str:
    """The options that differ from their defaults, as a TOML grouped by the schema's sections."""
    lines = [f"# effective config for {config.trainer} training; reload with --config_file", ""]
    defaults = schema.defaults(config.trainer)
    for group in schema.groups:
        entries = {}
        for opt in schema.for_trainer(config.trainer):
            if opt.group != group.key or opt.transient:
                continue
            value = getattr(config, opt.name)
            if value is None or (value == defaults[opt.name] and opt.name != "schema_version"):
                continue
            entries[opt.name] = _toml_value(opt, value)
        if entries:
            lines.append(f"[{group.key}]")
            lines.append(toml.dumps(entries).rstrip())
            lines.append("")
    return "\n".join(lines)


def _toml_value(opt: Option, value: Any) -> Any:
    if opt.kind == "resolution":
        w, h = value
        return f"{w}" if w == h else f"{w},{h}"
    if isinstance(value, tuple):
        return list(value)
    return value
