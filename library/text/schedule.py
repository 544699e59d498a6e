"""The webui's prompt editing ``[a:b:when]`` and alternation ``[a|b]``: which text conditions which step.

The semantics of AUTOMATIC1111's ``get_learned_conditioning_prompt_schedules`` (``modules/prompt_parser.py``,
webui 1.8+ without hires steps), whose lark grammar this module parses by hand (no parser package)::

    start:     (prompt | stray "[" "]" "(" ")" ":")*
    prompt:    (emphasized | scheduled | alternate | plain)*
    emphasized: "(" prompt ")" | "(" prompt ":" prompt ")" | "[" prompt "]"     (kept as written)
    scheduled: "[" [prompt ":"] prompt ":" NUMBER "]"      (spaces allowed around NUMBER)
    alternate: "[" prompt ("|" [prompt])+ "]"
    plain:     characters other than \\ [ ] ( ) : |, or \\ and any character

``[a:b:when]``: ``a`` up to step ``when``, then ``b``; ``[b:when]`` adds b after step ``when``, ``[a::when]``
removes a then; a ``when`` with a decimal point is a fraction of the steps (``0.5``, ``1.0``), one without a
step count (``3``), as the webui reads it since 1.8. ``[a|b|c]``: a, b, c, a, … one step each. A
prompt the grammar does not take (``a | b``, a trailing ``\\``) is used as written for every step.
Where stray brackets make the grammar ambiguous (``:][a:2]``), lark's Earley parser may pick another
reading than this greedy one; prompts with balanced brackets read the same. Attention brackets are not
resolved here: each scheduled text is then read by
:func:`library.text.attention.parse_prompt_attention`.
"""

from __future__ import annotations

import re

_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+")
#: lark's SIGNED_NUMBER after an optional whitespace, then the closing "]"
_NUMBER_CLOSE = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*\]")
_STRAY = "[]():"


class _NoParse(Exception):
    pass


def _prompt(text: str, i: int) -> tuple[list, int]:
    """The longest ``prompt`` from ``i``: a list of nodes (str, ("emph", parts), ("sched", …), ("alt", …))."""
    nodes: list = []
    while i < len(text):
        match = _PLAIN.match(text, i)
        if match:
            nodes.append(match.group())
            i = match.end()
            continue
        if text[i] not in "([":
            break
        try:
            node, i = _bracketed(text, i)
        except _NoParse:
            break
        nodes.append(node)
    return nodes, i


def _at(text: str, i: int, char: str) -> bool:
    return i < len(text) and text[i] == char


def _bracketed(text: str, i: int) -> tuple[tuple, int]:
    opening = text[i]
    first, j = _prompt(text, i + 1)
    if opening == "(":
        if _at(text, j, ")"):
            return ("emph", ["(", first, ")"]), j + 1
        if _at(text, j, ":"):
            second, k = _prompt(text, j + 1)
            if _at(text, k, ")"):
                return ("emph", ["(", first, ":", second, ")"]), k + 1
        raise _NoParse
    if _at(text, j, "]"):
        return ("emph", ["[", first, "]"]), j + 1
    if _at(text, j, "|"):
        options = [first]
        while _at(text, j, "|"):
            option, j = _prompt(text, j + 1)
            options.append(option)
        if _at(text, j, "]"):
            return ("alt", options), j + 1
        raise _NoParse
    if _at(text, j, ":"):
        number = _NUMBER_CLOSE.match(text, j + 1)
        if number:
            return ("sched", None, first, number.group(1)), number.end()
        second, k = _prompt(text, j + 1)
        number = _NUMBER_CLOSE.match(text, k + 1) if _at(text, k, ":") else None
        if number:
            return ("sched", first, second, number.group(1)), number.end()
    raise _NoParse


def _parse(text: str) -> list:
    nodes: list = []
    i = 0
    while i < len(text):
        prompt, i = _prompt(text, i)
        nodes.extend(prompt)
        if i < len(text):
            if text[i] not in _STRAY:
                raise _NoParse  # "|" outside brackets, a trailing "\"
            nodes.append(text[i])
            i += 1
    return nodes


def _when_step(when: str, steps: int) -> int:
    """The step a scheduled switch happens after: a number with a point is a fraction of the steps
    (``0.25``, ``.5``, ``1.0``), one without is a step count (the webui's scheduling since 1.8)."""
    value = float(when)
    return min(steps, int(value * steps if "." in when else value))


def _walk(nodes: list):
    for node in nodes:
        if isinstance(node, str):
            continue
        yield node
        if node[0] == "emph":
            for part in node[1]:
                if isinstance(part, list):
                    yield from _walk(part)
        elif node[0] == "sched":
            yield from _walk(node[1] or [])
            yield from _walk(node[2])
        else:
            for option in node[1]:
                yield from _walk(option)


def _text(nodes: list, step: int, steps: int) -> str:
    out = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif node[0] == "emph":
            out.extend(part if isinstance(part, str) else _text(part, step, steps) for part in node[1])
        elif node[0] == "sched":
            _, before, after, when = node
            out.append(_text(before or [], step, steps) if step <= _when_step(when, steps) else _text(after, step, steps))
        else:
            options = node[1]
            out.append(_text(options[(step - 1) % len(options)], step, steps))
    return "".join(out)


def prompt_schedule(prompt: str, steps: int) -> list[tuple[int, str]]:
    """[(end_at_step, text), …] for a prompt rendered in ``steps`` steps, in step order (the webui's
    ``get_learned_conditioning_prompt_schedules`` for one prompt). ``"a [b:3]"`` with 10 steps ->
    ``[(3, "a "), (10, "a b")]``; ``"[a|b]"`` with 2 -> ``[(1, "a"), (2, "b")]``."""
    try:
        nodes = _parse(prompt)
    except _NoParse:
        return [(steps, prompt)]
    ends = {steps}
    for node in _walk(nodes):
        if node[0] == "sched" and _when_step(node[3], steps) >= 1:
            ends.add(_when_step(node[3], steps))
        elif node[0] == "alt":
            ends.update(range(1, steps + 1))
    return [(end, _text(nodes, end, steps)) for end in sorted(ends)]


def schedule_index(schedule: list[tuple[int, str]], step: int) -> int:
    """The entry of ``schedule`` that conditions sampling step ``step`` (0-based, as the webui's denoiser
    counts): the first whose end_at_step is at least ``step``."""
    for index, (end, _) in enumerate(schedule):
        if step <= end:
            return index
    return 0

