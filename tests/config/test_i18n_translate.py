"""The GUI's English words passed through ``translate`` (the tool forms, the Queue, Captioning, Dataset and Tools
tabs) all have a Chinese text in the catalogue; unknown words come back unchanged."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from library.config.i18n import has_cjk, translate

GUI = Path(__file__).resolve().parents[2] / "library" / "gui"


def english_words() -> set[str]:
    """Every string given to translate() in library/gui, and every tool form's title and argument label."""
    from library.gui.tools_tabs import CAPTION_TOOLS, DATASET_TOOLS, MODEL_TOOLS

    words = {w for spec in (*CAPTION_TOOLS, *DATASET_TOOLS, *MODEL_TOOLS) for w in (spec.title, *(a.label for a in spec.args))}
    for path in GUI.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "translate" and node.args:
                if isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                    words.add(node.args[0].value)
    return words


@pytest.mark.slow  # imports gradio (the tool forms' specs)
def test_every_translated_gui_word_has_chinese():
    words = english_words()
    assert len(words) > 60
    missing = sorted(w for w in words if not has_cjk(translate(w, "zh-CN")) and translate(w, "zh-CN") == w)
    assert not missing, f"add these to library/config/i18n (en and zh_CN [text]): {missing}"


def test_translate_keeps_english_and_unknown_words():
    assert translate("Run", "en") == "Run"
    assert translate("Run", "zh-CN") == "运行"
    assert translate("words nobody wrote down", "zh-CN") == "words nobody wrote down"
