"""The webui's attention syntax: ``(tag)``, ``((tag))``, ``(tag:1.3)``, ``[tag]``, ``\\(`` escapes and ``BREAK``.

A port of AUTOMATIC1111's ``modules/prompt_parser.py`` ``parse_prompt_attention`` (the same rules sd-scripts
copies for ``weighted_captions``): ``(x)`` multiplies the weight of x by 1.1, ``(x:w)`` by w, ``[x]`` divides
it by 1.1; nested brackets multiply; brackets left open at the end act as if closed there; a closing bracket
without its opening one is dropped; ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are the literal characters;
``BREAK`` (a word of its own) ends the current 75-token chunk. Adjacent pieces of equal weight are merged.
One difference: a weight that is no number (``(x:1.2.3)``, ``(x:.)``) is read as text here, where the webui
stops with a ValueError.
"""

from __future__ import annotations

import re

#: the weight the webui gives a ``BREAK`` piece (a marker, never a token weight)
BREAK_WEIGHT = -1.0
ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1

_ATTENTION = re.compile(
    r"""
\\\(|
\\\)|
\\\[|
\\]|
\\\\|
\\|
\(|
\[|
:\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)|
\)|
]|
[^\\()\[\]:]+|
:
""",
    re.X,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """``text`` in the webui's attention syntax -> [(piece, weight), …] in order.

    ``BREAK`` comes out as ``("BREAK", -1.0)``. An empty prompt gives ``[("", 1.0)]``. Examples (the webui's
    own): ``"an (important) word"`` -> ``[("an ", 1.0), ("important", 1.1), (" word", 1.0)]``;
    ``"(unbalanced"`` -> ``[("unbalanced", 1.1)]``; ``"\\(literal\\]"`` -> ``[("(literal]", 1.0)]``.
    """
    pieces: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply_from(start: int, multiplier: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= multiplier

    for match in _ATTENTION.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            pieces.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(pieces))
        elif token == "[":
            square_open.append(len(pieces))
        elif weight is not None and round_open:
            multiply_from(round_open.pop(), float(weight))
        elif token == ")" and round_open:
            multiply_from(round_open.pop(), ROUND_MULTIPLIER)
        elif token == "]" and square_open:
            multiply_from(square_open.pop(), SQUARE_MULTIPLIER)
        else:
            for i, part in enumerate(_BREAK.split(token)):
                if i > 0:
                    pieces.append(["BREAK", BREAK_WEIGHT])
                pieces.append([part, 1.0])
    for start in round_open:
        multiply_from(start, ROUND_MULTIPLIER)
    for start in square_open:
        multiply_from(start, SQUARE_MULTIPLIER)
    if not pieces:
        pieces = [["", 1.0]]
    merged = [pieces[0]]
    for piece in pieces[1:]:
        if piece[1] == merged[-1][1]:
            merged[-1][0] += piece[0]
        else:
            merged.append(piece)
    return [(piece, weight) for piece, weight in merged]


def is_break(piece: tuple[str, float]) -> bool:
    """Whether a parsed piece is the ``BREAK`` marker."""
    return piece[1] == BREAK_WEIGHT and piece[0] == "BREAK"


def plain_text(text: str) -> str:
    """``text`` without its attention markup: the pieces joined (``BREAK`` kept as a word), what the tokens
    of a weighted prompt spell. ``"a (cat:1.3) on [grass]"`` -> ``"a cat on grass"``."""
    return "".join(" BREAK " if is_break(p) else p[0] for p in parse_prompt_attention(text))
