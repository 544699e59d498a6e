"""The message catalogue (library/config/i18n): every option has an English and a Chinese label, help and a
section; no entry names something that does not exist; UI strings match between languages."""

from __future__ import annotations

import re
import string
from pathlib import Path

import pytest

from library.config import i18n
from library.config.options import SCHEMA

NAMES = set(SCHEMA.names())
GROUP_KEYS = {g.key for g in SCHEMA.groups}


def _tables(file: str) -> dict:
    return i18n.read_data(file)


def _fields(template: str) -> set[tuple]:
    """The placeholders of a str.format template: (name, conversion, format spec)."""
    return {
        (name, conv, spec) for _, name, spec, conv in string.Formatter().parse(template) if name is not None
    }


# --- labels and help -----------------------------------------------------------------------------------


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_every_option_has_a_label(lang):
    labels = i18n.catalogue(lang)["labels"]
    missing = sorted(NAMES - set(labels))
    assert not missing, f"{lang}: options without a label in the catalogue: {missing}"


def test_zh_labels_and_help_are_chinese():
    catalogue = i18n.catalogue("zh-CN")
    no_cjk = [n for n in sorted(NAMES) if not i18n.has_cjk(catalogue["labels"][n])]
    assert not no_cjk, f"zh-CN labels without Chinese characters: {no_cjk}"
    untranslated = [n for n in sorted(NAMES) if not i18n.has_cjk(catalogue["help"].get(n, ""))]
    assert not untranslated, f"options without a Chinese help: {untranslated}"


def test_labels_are_short_and_distinct_within_a_trainer():
    for lang, limit in (("en", 40), ("zh-CN", 24)):
        long = {n: i18n.label(n, lang) for n in NAMES if len(i18n.label(n, lang)) > limit}
        assert not long, f"{lang}: labels over {limit} characters: {long}"
    for trainer in ("network", "db", "ti"):
        for lang in i18n.LANGUAGES:
            seen: dict[str, str] = {}
            for opt in SCHEMA.for_trainer(trainer):
                text = i18n.label(opt.name, lang)
                if text in seen and opt.name not in _SAME_LABEL_OK:
                    pytest.fail(f"{trainer}/{lang}: {opt.name} and {seen[text]} share the label {text!r}")
                seen[text] = opt.name


#: DreamBooth's learning_rate_te and LoRA's text_encoder_lr never share a form
_SAME_LABEL_OK = {"learning_rate_te", "text_encoder_lr"}


@pytest.mark.parametrize("file", ["en.toml", "zh_CN.toml"])
def test_no_stale_option_entries(file):
    tables = _tables(file)
    for table in ("labels", "help"):
        stale = sorted(set(tables.get(table, {})) - NAMES)
        assert not stale, f"{file} [{table}] names options that do not exist: {stale}"
    stale_groups = sorted(k for k in tables.get("groups", {}) if k.split(".")[0] not in GROUP_KEYS)
    assert not stale_groups, f"{file} [groups] names groups that do not exist: {stale_groups}"


def test_english_help_is_the_schema_help_and_zh_is_the_translation():
    assert i18n.help_text("network_dim") == SCHEMA["network_dim"].help
    assert i18n.help_text("network_dim", "zh") == i18n.catalogue("zh-CN")["help"]["network_dim"]
    assert "维度" in i18n.help_text("network_dim", "zh-CN")
    with pytest.raises(KeyError):
        i18n.help_text("no_such_option")


def test_label_examples_and_fallbacks():
    assert i18n.label("pretrained_model_name_or_path") == "Base model"
    assert i18n.label("pretrained_model_name_or_path", "zh-CN") == "底模"
    assert i18n.label("network_dim", "en") == "Network dim (rank)"
    assert i18n.label("network_dim", "zh_CN") == "网络维度 (rank)"
    assert i18n.label("max_train_epochs", "zh-Hans") == "最大训练轮数 (epoch)"
    # a name the catalogue does not know (a new option before its label is written): its words
    assert i18n.label("brand_new_option") == "Brand new option"
    assert i18n.label("brand_new_option", "zh-CN") == "Brand new option"


def test_every_schema_group_has_a_chinese_title():
    for group in SCHEMA.groups:
        assert i18n.group_title(group.key) == group.title
        assert i18n.group_description(group.key) == group.description
        assert i18n.has_cjk(i18n.group_title(group.key, "zh-CN")), group.key
        assert i18n.has_cjk(i18n.group_description(group.key, "zh-CN")), group.key
    with pytest.raises(KeyError):
        i18n.group_title("no_such_group")


# --- UI text -------------------------------------------------------------------------------------------


def test_text_keys_match_between_languages():
    en, zh = i18n.catalogue("en")["text"], i18n.catalogue("zh-CN")["text"]
    assert not sorted(set(en) - set(zh)), "UI text keys missing in zh-CN"
    assert not sorted(set(zh) - set(en)), "zh-CN UI text keys that English does not have (stale)"


def test_placeholders_match_between_languages():
    en, zh = i18n.catalogue("en")["text"], i18n.catalogue("zh-CN")["text"]
    differ = {k: (en[k], zh[k]) for k in en if k in zh and _fields(en[k]) != _fields(zh[k])}
    assert not differ, f"placeholders differ: {differ}"


def test_text_formats_and_falls_back(monkeypatch):
    assert i18n.text("button.start") == "Start"
    assert i18n.text("button.start", "zh-CN") == "开始训练"
    assert i18n.text("msg.started", "zh", command="python x.py") == "已开始: python x.py"
    assert i18n.text("msg.no_preset", "en", name="sd15") == "❌ there is no preset 'sd15' for this trainer"
    assert i18n.text("run.speed", "en", it_s=1.234) == "1.23 it/s"
    with pytest.raises(KeyError, match="en.toml"):
        i18n.text("button.no_such_button", "zh-CN")
    real = i18n.catalogue

    def without_zh_start(lang):
        tables = real(lang)
        if lang == "zh-CN":
            return {**tables, "text": {k: v for k, v in tables["text"].items() if k != "button.start"}}
        return tables

    monkeypatch.setattr(i18n, "catalogue", without_zh_start)
    assert i18n.text("button.start", "zh-CN") == "Start"


def test_every_section_has_a_title():
    for section in i18n.SECTIONS:
        assert i18n.text(f"section.{section.key}") != ""
        assert i18n.has_cjk(i18n.text(f"section.{section.key}", "zh-CN"))
    assert i18n.text("section.folders") == "Folders & dataset"


def test_gui_extra_files_do_not_contradict_the_main_ones():
    for suffix in ("en", "zh_CN"):
        main = _tables(f"{suffix}.toml").get("text", {})
        extra_tables = _tables(f"gui_extra_{suffix}.toml")
        assert set(extra_tables) <= {"text"}, f"gui_extra_{suffix}.toml holds tables other than [text]"
        clash = {
            k: (main[k], v) for k, v in extra_tables.get("text", {}).items() if k in main and main[k] != v
        }
        assert not clash, f"gui_extra_{suffix}.toml gives other values for keys of {suffix}.toml: {clash}"


def test_gui_extra_text_is_merged(tmp_path, monkeypatch):
    (tmp_path / "en.toml").write_text('[text]\n"a" = "A {x}"\n', encoding="utf-8")
    (tmp_path / "gui_extra_en.toml").write_text('[text]\n"b" = "B"\n"a" = "A {x}"\n', encoding="utf-8")
    (tmp_path / "zh_CN.toml").write_text('[text]\n"a" = "甲 {x}"\n', encoding="utf-8")
    monkeypatch.setattr(i18n, "_DIR", tmp_path)
    i18n.catalogue.cache_clear()
    try:
        assert i18n.text("a", "en", x=1) == "A 1"
        assert i18n.text("b", "en") == "B"
        assert i18n.text("b", "zh-CN") == "B"  # no gui_extra_zh_CN.toml: English
        assert i18n.text("a", "zh-CN", x=2) == "甲 2"
    finally:
        i18n.catalogue.cache_clear()


# --- languages -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, "en"),
        ("", "en"),
        ("en", "en"),
        ("en-US", "en"),
        ("zh", "zh-CN"),
        ("zh_CN", "zh-CN"),
        ("zh-CN", "zh-CN"),
        ("ZH-cn", "zh-CN"),
        ("zh-Hans", "zh-CN"),
        ("zh-Hans-CN", "zh-CN"),
        ("zh_CN.UTF-8", "zh-CN"),
        ("zh-TW", "zh-CN"),
        ("zh-CN,zh;q=0.9,en;q=0.8", "zh-CN"),
        ("en-US,en;q=0.9,zh-CN;q=0.8", "en"),
        ("fr-FR,zh;q=0.5", "zh-CN"),
        ("de-DE", "en"),
        ("fr", "en"),
        ("*", "en"),
        ("zh;q=abc,en;q=0.1", "en"),
    ],
)
def test_normalize_lang(value, expected):
    assert i18n.normalize_lang(value) == expected


# --- sections ------------------------------------------------------------------------------------------


def test_sections_in_the_required_order():
    keys = [s.key for s in i18n.SECTIONS]
    required = ["model", "folders", "network", "optimizer", "noise_loss", "samples", "saving", "performance"]
    assert keys[: len(required)] == required
    assert keys[len(required) :] in ([], ["other"])


def test_every_option_is_in_one_known_section():
    keys = {s.key for s in i18n.SECTIONS}
    for name in NAMES:
        assert i18n.section_of(name) in keys, name
    assert i18n.section_of("mixed_precision") == "performance"
    assert i18n.section_of("network_dim") == "network"
    assert i18n.section_of("caption_extension") == "folders"
    with pytest.raises(KeyError):
        i18n.section_of("no_such_option")


def test_primary_options_exist_and_sit_in_their_own_section():
    listed = [name for s in i18n.SECTIONS for name in s.primary]
    assert len(listed) == len(set(listed)), "an option is primary in two sections"
    for section in i18n.SECTIONS:
        assert section.primary, f"section {section.key} has no primary options"
        for name in section.primary:
            assert name in NAMES, f"sections.toml: primary {name} is not an option"
            assert i18n.section_of(name) == section.key, f"{name} is primary in {section.key}"
    for name in ("pretrained_model_name_or_path", "network_dim", "optimizer_type", "save_every_n_epochs"):
        assert i18n.is_primary(name)
    assert not i18n.is_primary("huber_c")


def test_sections_file_has_no_stale_entries():
    data = _tables("sections.toml")
    keys = {s.key for s in i18n.SECTIONS} | {"other"}
    assert set(data["groups"]) == GROUP_KEYS, "every schema group maps to a section, and only those"
    assert set(data["groups"].values()) <= keys
    stale = sorted(set(data.get("options", {})) - NAMES)
    assert not stale, f"sections.toml [options] names options that do not exist: {stale}"
    assert set(data.get("options", {}).values()) <= keys
    assert set(data.get("primary", {})) <= keys


@pytest.mark.parametrize("file", ["en.toml", "zh_CN.toml", "sections.toml"])
def test_files_read_the_same_without_tomllib(file, monkeypatch):
    """Python 3.10 has no tomllib: the toml package reads the catalogue files to the same tables."""
    expected = i18n.read_data(file)
    monkeypatch.setattr(i18n, "tomllib", None)
    assert i18n.read_data(file) == expected


def test_compat_notes_are_translated():
    compat = i18n.catalogue("zh-CN")["compat"]
    with_note = {o.name for o in SCHEMA.options if o.compat_note}
    assert set(compat) == with_note, "zh-CN [compat] must match the options that carry a compat_note"
    assert all(i18n.has_cjk(v) for v in compat.values())
    assert i18n.compat_note("xformers") == SCHEMA["xformers"].compat_note
    assert "scaled_dot_product_attention" in i18n.compat_note("xformers", "zh-CN")
    assert i18n.compat_note("network_dim", "zh-CN") is None


def test_gui_code_uses_only_keys_that_exist():
    """Every literal key the GUI passes to text()/ui() is in the English catalogue (a missing one raises
    KeyError when the page is built)."""
    gui = Path(i18n.__file__).parents[2] / "gui"
    call = re.compile(r"\b(?:text|ui)\(\s*\"([A-Za-z0-9_.]+)\"")
    used = {key for path in gui.glob("*.py") for key in call.findall(path.read_text(encoding="utf-8"))}
    assert used, "the scan found no text() or ui() call in library/gui/"
    missing = sorted(used - set(i18n.catalogue("en")["text"]))
    assert not missing, f"keys used in library/gui/ but missing in en.toml / gui_extra_en.toml: {missing}"
