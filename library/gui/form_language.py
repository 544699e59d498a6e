"""The words of the training form in the page's language: option labels (with the sd-scripts option name
kept visible as a hint, so guides and configs still match), section titles, buttons and messages from
:mod:`library.config.i18n`, and the re-labelling of a page built in one language for a browser that asks
for another.

Why re-label on load rather than ``gr.I18n``: Gradio's I18n translates only static strings in the browser,
by the browser's locale; it cannot follow ``--lang``, cannot translate what the handlers return (messages)
and leaves the search (which must know every label) to guess the shown text. Building the page in the
``--lang`` language and, without ``--lang``, sending the label updates of the ``Accept-Language`` language
on page load keeps one source of words (the catalogue) for the page, the handlers and the tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from library.config import i18n
from library.config.options import SCHEMA
from library.gui.form_layout import has_no_effect, no_effect_note


def ui(key: str, lang: str, **fields: Any) -> str:
    """A UI string of the catalogue (``gui.*`` keys live in ``gui_extra_*.toml``)."""
    return i18n.text(key, lang, **fields)


def section_title(key: str, lang: str) -> str:
    """The title of a form section (``section.<key>``; the key in words while the catalogue lacks it)."""
    try:
        return i18n.text(f"section.{key}", lang)
    except KeyError:
        return key.replace("_", " ").capitalize()


def option_label(name: str, lang: str) -> str:
    """A field's label: the catalogue's short label."""
    return i18n.label(name, lang)


def option_info(name: str, lang: str) -> str:
    """A field's info line: the sd-scripts option name, then its help (or, for an option that does nothing
    here, why)."""
    opt = SCHEMA[name]
    if has_no_effect(opt):
        note = opt.compat_note if opt.compat_note else i18n.help_text(name, lang)
        return f"{name} · {ui('gui.no_effect_prefix', lang)} {note or no_effect_note(opt)}"
    return f"{name} · {i18n.help_text(name, lang)}"


@dataclass
class Labels:
    """Every component of a tab whose words depend on the language, with how to word it: built in
    ``lang``; :meth:`updates` re-words them all for another language."""

    lang: str
    items: list[tuple[Any, Callable[[str], dict[str, Any]]]] = field(default_factory=list)

    def add(self, component, words: Callable[[str], dict[str, Any]]):
        self.items.append((component, words))
        return component

    def option(self, component, name: str):
        return self.add(
            component, lambda lang: {"label": option_label(name, lang), "info": option_info(name, lang)}
        )

    def label(self, component, key: str, **fields: Any):
        return self.add(component, lambda lang: {"label": ui(key, lang, **fields)})

    def section(self, component, key: str):
        return self.add(component, lambda lang: {"label": section_title(key, lang)})

    def value(self, component, key: str, **fields: Any):
        """A button or Markdown whose shown text is its value."""
        return self.add(component, lambda lang: {"value": ui(key, lang, **fields)})

    def components(self) -> list:
        return [c for c, _ in self.items]

    def kwargs(self, words: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
        """The constructor arguments for the built language."""
        return words(self.lang)

    def updates(self, lang: str) -> list:
        """One update per component (``gr.skip()`` for all when ``lang`` is the built language)."""
        if lang == self.lang:
            return [gr.skip() for _ in self.items]
        return [gr.update(**words(lang)) for _, words in self.items]


def request_lang(request: gr.Request | None) -> str:
    """The language the page request asks for (its ``Accept-Language`` header; English without one)."""
    headers = getattr(request, "headers", None) or {}
    return i18n.normalize_lang(headers.get("accept-language"))


def message_lang(fixed: str | None) -> str:
    """The language of a handler's message: ``fixed`` (the GUI's ``--lang``) when given, else the one the
    browser of the event being handled asks for (gradio keeps the event's request in its ``LocalContext``
    while the handler runs; English outside an event, e.g. a handler called from a test)."""
    if fixed:
        return fixed
    try:
        from gradio.context import LocalContext

        request = LocalContext.request.get(None)
    except (ImportError, AttributeError, LookupError):
        request = None
    return request_lang(request)


def search_script(index: list[dict], folds: list[str]) -> str:
    """The search box's browser code: the rule of :func:`library.gui.form_layout.matches` over ``index``
    (:func:`~library.gui.form_layout.search_index`); fields that do not match are hidden, the accordions
    holding a match are opened and those holding none hidden (``folds``: every accordion id). An empty
    query shows everything again."""
    import json

    return (
        "(query) => {"
        f"const index = {json.dumps(index, ensure_ascii=False)}; const folds = {json.dumps(folds)};"
        "const words = String(query || '').toLowerCase().split(/\\s+/).filter(Boolean);"
        "const open = new Set(); const hits = new Set();"
        "for (const e of index) {"
        "  const hay = [e.name, ...e.labels].join(' ').toLowerCase();"
        "  if (words.length && words.every((w) => hay.includes(w))) { hits.add(e.id); e.in.forEach((f) => open.add(f)); }"
        "}"
        "const show = (id, on) => { const el = document.getElementById(id); if (el) el.style.display = on ? '' : 'none'; };"
        "const apply = () => {"
        "  for (const e of index) show(e.id, !words.length || hits.has(e.id));"
        "  for (const f of folds) show(f, !words.length || open.has(f));"
        "};"
        "for (const f of folds) {"
        "  if (!open.has(f)) continue;"
        "  const button = document.querySelector('#' + f + ' button.label-wrap');"
        "  if (button && !button.classList.contains('open')) button.click();"
        "}"
        "apply(); setTimeout(apply, 200); setTimeout(apply, 800);"
        "return query; }"
    )
