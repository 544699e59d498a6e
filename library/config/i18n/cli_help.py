"""The trainers' ``--help`` from the catalogue: each option's help (Chinese with ``--help_lang zh-CN``), its
choices and its default.

The language is a flag, ``--help_lang``, rather than ``LANG``/``LC_ALL``: most users of the Chinese guides
run Windows, where those variables are not set, and a flag keeps logs and CI output in a Chinese locale the
same as everywhere else (error paragraphs stay English either way).

The choices and the default are added when the help is printed (by the formatter), not when the parser is
built: a lazy choice list (the optimizer or scheduler registry) is only resolved for ``--help``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from library.config.i18n import catalogue, label, normalize_lang, text
from library.config.schema import Option

HELP_LANG_FLAG = "--help_lang"


def help_lang_from_argv(argv: Sequence[str]) -> str:
    """The language asked for by ``--help_lang X`` / ``--help_lang=X`` in ``argv`` ("en" when absent).

    Read before the parser is built, because argparse prints ``--help`` while it parses."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == HELP_LANG_FLAG and i + 1 < len(argv):
            return normalize_lang(argv[i + 1])
        if arg.startswith(HELP_LANG_FLAG + "="):
            return normalize_lang(arg.split("=", 1)[1])
    return "en"


def option_help(opt: Option, lang: str) -> str:
    """The help line of ``opt`` as argparse takes it (``%`` escaped): the English help, or in zh-CN the
    label, then the translated help."""
    if lang == "en":
        body = opt.help
    else:
        translated = catalogue(lang)["help"].get(opt.name) or opt.help
        body = f"{label(opt.name, lang)} — {translated}"
    return body.replace("%", "%%")


def choices_and_default(opt: Option, lang: str) -> str:
    """``"choices: a, b, c; default: x"`` (either part only where it applies; "" for neither)."""
    parts = []
    choices = _choices(opt)
    if choices:
        parts.append(text("cli.choices", lang, choices=", ".join(str(c) for c in choices)))
    default = _shown_default(opt.default)
    if default is not None:
        parts.append(text("cli.default", lang, default=default))
    return "; ".join(parts)


def _choices(opt: Option) -> tuple:
    try:
        return opt.allowed_choices() or ()
    except ImportError:  # a registry whose module cannot load here: the help still prints, without the list
        return ()


def _shown_default(value: Any) -> str | None:
    """The default as the help shows it; None for "unset", off switches and empty lists."""
    if value is None or value is False or value == "" or value == [] or value == ():
        return None
    if value is True:
        return "true"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


class SchemaHelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, appending choices and default to the options that carry a schema ``Option``."""

    def __init__(self, prog: str, lang: str = "en", **kwargs: Any) -> None:
        super().__init__(prog, **kwargs)
        self.lang = lang

    def _get_help_string(self, action: argparse.Action) -> str:
        base = action.help or ""
        opt = getattr(action, "schema_option", None)
        if opt is None:
            return base
        extra = choices_and_default(opt, self.lang).replace("%", "%%")
        if not extra:
            return base
        return f"{base} ({extra})" if base else extra
