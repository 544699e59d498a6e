"""Prompt templates (what to ask the model) and the clean-up of what it answers. Pure functions."""

from __future__ import annotations

import re

PROMPT_STYLES = ("caption", "tags", "both")
CAPTION_LENGTHS = ("short", "medium", "long")

_CAPTION = {
    "short": "Write a short one-sentence caption for this image.",
    "medium": "Write a descriptive caption for this image in a few sentences.",
    "long": "Write a long, detailed descriptive caption for this image: subject, clothing, pose, setting, "
    "lighting, colours and style.",
}
_TAGS = {
    "short": "List up to 10 comma-separated tags (booru style) that describe this image.",
    "medium": "List about 20 comma-separated tags (booru style) that describe this image.",
    "long": "List 30 to 40 comma-separated tags (booru style) that describe this image in detail.",
}
_ONLY = " Answer with the caption only, no introduction."


def build_prompt(style: str = "caption", length: str = "medium", custom: str | None = None) -> str:
    """The instruction sent with each picture: ``custom`` when given, else the template of ``style``
    (``caption``, ``tags`` or ``both``: tags, then a caption) and ``length``."""
    if custom and custom.strip():
        return custom.strip()
    if style == "caption":
        return _CAPTION[length] + _ONLY
    if style == "tags":
        return _TAGS[length] + " Answer with the tags only."
    if style == "both":
        return (
            _TAGS[length]
            + " Then, on the same line after the tags, "
            + _CAPTION[length][0].lower()
            + _CAPTION[length][1:]
            + _ONLY
        )
    raise ValueError(f"unknown prompt style {style!r}")


_LEAD_INS = tuple(
    re.compile(p, re.IGNORECASE)
    for p in (
        r"^(?:sure|certainly|of course)[,!.]\s*",
        r"^(?:here is|here's)[^:]{0,60}:\s*",
        r"^(?:caption|tags|description)\s*:\s*",
    )
)


def clean_caption(text: str) -> str:
    """One line of caption text: lead-ins such as "Here is a caption:" dropped, wrapping quotes removed,
    every run of whitespace (newlines included) made one space."""
    text = " ".join(text.split())
    for pattern in _LEAD_INS:
        text = pattern.sub("", text, count=1).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def with_trigger(text: str, trigger: str | None) -> str:
    """``text`` with ``trigger`` first (``"sks, a photo of ..."``); a trigger the model already wrote first is
    not doubled."""
    trigger = (trigger or "").strip()
    if not trigger:
        return text
    rest = text
    after = rest[len(trigger) : len(trigger) + 1]
    if rest.lower().startswith(trigger.lower()) and not (after.isalnum() or after == "_"):
        rest = rest[len(trigger) :].lstrip(" ,")
    return f"{trigger}, {rest}" if rest else trigger
