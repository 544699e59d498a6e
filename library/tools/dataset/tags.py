"""Pure tag-list functions: parsing option strings and the caption edits (add, replace, remove, fold, dedupe).

A caption is a list of tags separated by ``,``; every function takes and returns ``list[str]`` and
never mutates its input.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def split_caption(text: str, separator: str = ",") -> list[str]:
    """``"a, b,,c "`` -> ``["a", "b", "c"]`` (stripped, empty tags dropped)."""
    return [t.strip() for t in text.split(separator.strip() or ",") if t.strip()]


def join_caption(tags: Iterable[str], separator: str = ", ") -> str:
    """Join tags with ``separator`` (sd-scripts' default ``", "``)."""
    return separator.join(tags)


def parse_tag_list(text: str | None, separator: str = ",") -> list[str]:
    """An option value such as ``"1girl, solo"`` -> ``["1girl", "solo"]``; None/empty -> ``[]``."""
    return split_caption(text, separator) if text else []


def _escaped_fields(text: str) -> list[list[str]]:
    """Split ``text`` into items on ``;`` and each item into fields on ``,``; ``\\x`` is a literal ``x``."""
    items: list[list[str]] = [[""]]
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            items[-1][-1] += text[i + 1]
            i += 2
            continue
        if char == ";":
            items.append([""])
        elif char == ",":
            items[-1].append("")
        else:
            items[-1][-1] += char
        i += 1
    return [fields for fields in items if any(f.strip() for f in fields)]


def parse_tag_replacement(text: str | None) -> list[tuple[str, str]]:
    """sd-scripts' ``--tag_replacement "a,b;c,d"`` -> ``[("a", "b"), ("c", "d")]``.

    ``\\,`` and ``\\;`` escape the separators inside a tag. Raises ``ValueError`` for an item that is
    not ``source,target``.
    """
    pairs = []
    for fields in _escaped_fields(text or ""):
        if len(fields) != 2 or not fields[0].strip():
            raise ValueError(f"tag_replacement item {','.join(fields)!r} is not 'source,target'")
        pairs.append((fields[0].strip(), fields[1].strip()))
    return pairs


def dedupe(tags: Sequence[str]) -> list[str]:
    """Drop repeated tags, keeping the first occurrence."""
    return list(dict.fromkeys(tags))


def add_tags(tags: Sequence[str], prefix: Sequence[str] = (), suffix: Sequence[str] = ()) -> list[str]:
    """Put ``prefix`` tags first and ``suffix`` tags last, without duplicates.

    A prefix tag already in the caption moves to the front; a suffix tag already present stays where it is.
    """
    rest = [t for t in tags if t not in prefix]
    out = dedupe([*prefix, *rest])
    out.extend(t for t in dedupe(suffix) if t not in out)
    return out


def replace_tag(tags: Sequence[str], old: str, new: str) -> list[str]:
    """Replace the whole tag ``old`` by ``new`` (in place; an empty ``new`` removes it), no duplicates."""
    return dedupe([new if t == old else t for t in tags if not (t == old and not new)])


def remove_tags(tags: Sequence[str], unwanted: Iterable[str]) -> list[str]:
    """Drop every tag in ``unwanted``."""
    drop = set(unwanted)
    return [t for t in tags if t not in drop]


def fold_tags(tags: Sequence[str], trigger: str, features: Iterable[str]) -> list[str]:
    """Replace a character's feature tags by its trigger word, which goes first.

    ``fold_tags(["1boy", "facial hair", "beard", "smith_group", "apron"], "Smith",
    ["1boy", "facial hair", "beard"])`` -> ``["Smith", "smith_group", "apron"]``.
    """
    drop = set(features) | {trigger}
    return [trigger, *dedupe(t for t in tags if t not in drop)]
