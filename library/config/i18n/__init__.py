"""The message catalogue: labels, help, sections and UI strings in English and Simplified Chinese.

Everything a user reads about an option is declared once, as data, so the CLI (``--help``), the TOML
comments and the GUI never disagree:

* ``en.toml`` / ``zh_CN.toml``: ``[labels]`` (short field labels) and ``[text]`` (UI strings: buttons, tabs,
  messages, section titles); zh-CN also ``[help]``, ``[groups]`` and ``[compat]``, whose English is the
  schema's own ``Option.help``, ``Group`` title/description and ``Option.compat_note``.
* ``gui_extra_en.toml`` / ``gui_extra_zh_CN.toml`` (optional): more ``[text]`` keys, written by the GUI.
* ``sections.toml``: which section of the form each option belongs to, and which are shown on top.

Error paragraphs raised from ``library/`` (``ConfigError`` and friends) stay English: they are what users
paste into issues, and one language keeps them searchable.

Nothing here imports gradio or torch; the files are read with the stdlib ``tomllib`` (the ``toml`` package on
Python 3.10) once and cached.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the toml package the project requires anyway
    tomllib = None

LANGUAGES = ("en", "zh-CN")
#: the language of a page built without --lang and of a setting we cannot read
DEFAULT_LANG = "en"

_DIR = Path(__file__).resolve().parent
#: language code -> file-name suffix (a hyphen is awkward in file names).
_FILE_SUFFIX = {"en": "en", "zh-CN": "zh_CN"}
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


# --- languages -----------------------------------------------------------------------------------------


def normalize_lang(value: str | None) -> str:
    """The catalogue language for a user's language setting: ``"zh"``, ``"zh_CN"``, ``"zh-Hans"``,
    ``"ZH-cn"``, ``"zh_CN.UTF-8"`` (a POSIX locale) or an Accept-Language header such as
    ``"zh-CN,zh;q=0.9,en;q=0.8"`` give ``"zh-CN"``; anything else (or None) gives ``"en"``.

    For a header the entry with the highest ``q`` that we have wins (ties: the first listed).
    """
    if not value:
        return "en"
    best, best_q = "en", -1.0
    for entry in str(value).split(","):
        tag, _, params = entry.strip().partition(";")
        quality = _quality(params)
        lang = _lang_of_tag(tag)
        if lang is not None and quality > best_q:
            best, best_q = lang, quality
    return best


def _quality(params: str) -> float:
    """The ``q`` weight of an Accept-Language entry (1 when absent, 0 when it is not a number)."""
    match = re.search(r"q\s*=\s*([^;\s]*)", params)
    if not match:
        return 1.0
    try:
        return float(match.group(1))
    except ValueError:
        return 0.0


def _lang_of_tag(tag: str) -> str | None:
    """One language tag (``zh-Hans-CN``, ``en_US.UTF-8``) -> a catalogue language, or None if unknown.

    Traditional Chinese (``zh-TW``, ``zh-HK``, ``zh-Hant``) maps to zh-CN too: a Simplified text reads
    better for those users than English."""
    base = tag.strip().split(".")[0].split("@")[0].replace("_", "-").lower()
    primary = base.split("-")[0]
    if primary == "zh":
        return "zh-CN"
    if primary == "en":
        return "en"
    return None


# --- data ----------------------------------------------------------------------------------------------


def read_data(name: str) -> dict[str, Any]:
    """The tables of one catalogue file (``en.toml``, ``sections.toml`` …); {} when it does not exist."""
    path = _DIR / name
    if not path.is_file():
        return {}
    content = path.read_text(encoding="utf-8")
    if tomllib is None:
        import toml

        return toml.loads(content)
    return tomllib.loads(content)


@cache
def catalogue(lang: str) -> dict[str, dict[str, str]]:
    """The merged tables of one language: ``{"labels": ..., "help": ..., "text": ...}``.

    ``gui_extra_<lang>.toml`` adds ``[text]`` keys; a key both files hold keeps the main file's value (the
    test suite fails when the two disagree)."""
    suffix = _FILE_SUFFIX[lang]
    main = read_data(f"{suffix}.toml")
    extra = read_data(f"gui_extra_{suffix}.toml")
    tables = {key: dict(main.get(key, {})) for key in ("labels", "help", "groups", "compat", "text")}
    tables["text"] = {**extra.get("text", {}), **tables["text"]}
    return tables


@cache
def _sections_data() -> dict[str, Any]:
    return read_data("sections.toml")


def _lang(lang: str | None) -> str:
    return lang if lang in _FILE_SUFFIX else normalize_lang(lang)


# --- labels, help, text --------------------------------------------------------------------------------


def label(option_name: str, lang: str = "en") -> str:
    """The short label of an option ("Base model", "基础模型"); zh-CN falls back to English, English to
    the option name in words."""
    lang = _lang(lang)
    found = catalogue(lang)["labels"].get(option_name)
    if found:
        return found
    if lang != "en":
        return label(option_name, "en")
    return option_name.replace("_", " ").capitalize()


def help_text(option_name: str, lang: str = "en") -> str:
    """The help of an option: English is the schema's ``Option.help``; zh-CN its translation (English when
    none is written yet). Raises ``KeyError`` for a name the schema does not hold."""
    from library.config.options import SCHEMA

    english = SCHEMA[option_name].help
    if _lang(lang) == "en":
        return english
    return catalogue(_lang(lang))["help"].get(option_name) or english


def compat_note(option_name: str, lang: str = "en") -> str | None:
    """Why an option accepted for sd-scripts configs does nothing here (the schema's ``Option.compat_note``,
    translated in zh-CN); None for an option without one."""
    from library.config.options import SCHEMA

    english = SCHEMA[option_name].compat_note
    if english is None or _lang(lang) == "en":
        return english
    return catalogue(_lang(lang))["compat"].get(option_name) or english


def text(key: str, lang: str = "en", **fields: Any) -> str:
    """A UI string (``"button.start"``, ``"section.model"``, ``"msg.started"``), formatted with
    ``str.format(**fields)``. A key missing in zh-CN falls back to English; missing in English raises
    ``KeyError``."""
    lang = _lang(lang)
    template = catalogue(lang)["text"].get(key)
    if template is None:
        template = catalogue("en")["text"].get(key)
    if template is None:
        raise KeyError(f"UI text {key!r} is not in library/config/i18n/en.toml [text]")
    return template.format(**fields) if fields else template


@cache
def _keys_by_english() -> dict[str, str]:
    """English UI text -> its first ``[text]`` key (the reverse of the English catalogue)."""
    found: dict[str, str] = {}
    for key, english in catalogue("en")["text"].items():
        found.setdefault(english, key)
    return found


def translate(english: str, lang: str = "en") -> str:
    """gettext's rule with the English text as the message id: the ``lang`` text of the catalogue key whose
    English is ``english`` (for code that writes its words in English, e.g. the tool forms' argument labels);
    ``english`` itself when the catalogue has no such text or no translation of it."""
    lang = _lang(lang)
    if lang == "en":
        return english
    key = _keys_by_english().get(english)
    return catalogue(lang)["text"].get(key, english) if key else english


def group_title(group_key: str, lang: str = "en") -> str:
    """The title of a schema group ("Noise and loss", "噪声与损失"): English is the schema's ``Group.title``."""
    return _group_text(group_key, "title", lang)


def group_description(group_key: str, lang: str = "en") -> str:
    """The one-line description of a schema group (English: the schema's ``Group.description``)."""
    return _group_text(group_key, "description", lang)


def _group_text(group_key: str, field: str, lang: str) -> str:
    from library.config.options import SCHEMA

    group = next((g for g in SCHEMA.groups if g.key == group_key), None)
    if group is None:
        raise KeyError(f"no schema group {group_key!r}")
    english = getattr(group, field)
    if _lang(lang) == "en":
        return english
    key = group_key if field == "title" else f"{group_key}.{field}"
    return catalogue(_lang(lang)).get("groups", {}).get(key) or english


def has_cjk(value: str) -> bool:
    """True when ``value`` holds a Chinese character (used by the tests and the help builder)."""
    return bool(_CJK.search(value))


# --- sections ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """One section of the training form: its key (title: ``text("section." + key)``) and the options shown
    on top of it, most used first; the section's other options follow in schema order."""

    key: str
    primary: tuple[str, ...]


SECTION_KEYS = ("model", "folders", "network", "optimizer", "noise_loss", "samples", "saving", "performance")


def _build_sections() -> tuple[Section, ...]:
    primary = _sections_data().get("primary", {})
    keys = list(SECTION_KEYS)
    if _other_is_used():
        keys.append("other")
    return tuple(Section(k, tuple(primary.get(k, ()))) for k in keys)


def _other_is_used() -> bool:
    data = _sections_data()
    return "other" in data.get("groups", {}).values() or "other" in data.get("options", {}).values()


SECTIONS: tuple[Section, ...] = _build_sections()


def section_of(option_name: str) -> str:
    """The key of the section that shows ``option_name``: a per-option entry of sections.toml, else the
    section of the option's schema group, else "other". Raises ``KeyError`` for an unknown option."""
    data = _sections_data()
    override = data.get("options", {}).get(option_name)
    if override:
        return override
    from library.config.options import SCHEMA

    return data.get("groups", {}).get(SCHEMA[option_name].group, "other")


@cache
def _primary_names() -> frozenset[str]:
    return frozenset(name for s in SECTIONS for name in s.primary)


def is_primary(option_name: str) -> bool:
    """True when the option is shown on top of its section (the ones users change most)."""
    return option_name in _primary_names()
