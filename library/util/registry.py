"""A small name -> factory registry with case-insensitive lookup, used for optimizers, schedulers, etc."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Entry:
    name: str
    factory: Callable[..., Any]
    #: the pip package that provides it (for the "pip install X" error), or None for built-ins.
    package: str | None = None
    description: str = ""


class Registry:
    """Named factories; names are matched case-insensitively."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, package: str | None = None, description: str = ""):
        def decorate(factory: Callable[..., Any]) -> Callable[..., Any]:
            key = name.lower()
            if key in self._entries:
                raise ValueError(f"{self.kind} {name} registered twice")
            self._entries[key] = Entry(name, factory, package, description)
            return factory

        return decorate

    def names(self) -> list[str]:
        return [e.name for e in self._entries.values()]

    def find(self, name: str) -> Entry | None:
        return self._entries.get(name.lower())

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name.lower(), list(self._entries), n=1, cutoff=0.6)
        hint = f" Did you mean {self._entries[close[0]].name!r}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Valid names: {', '.join(self.names())}."
