"""Registry: name -> builder, with aliases, duplicate checks and closest-match errors."""
from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any

from .errors import UsageError


def closest(name: str, choices) -> str | None:
    """The closest of `choices` to `name`, or None when nothing is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return match[0] if match else None


def unknown_name_error(kind: str, name: str, choices) -> UsageError:
    """The one-line error for an unknown name: the valid names and the closest match."""
    choices = sorted(choices)
    hint = closest(name, choices)
    msg = f"unknown {kind} '{name}'"
    if hint:
        msg += f" (did you mean '{hint}'?)"
    shown = ", ".join(choices[:40]) + (", ..." if len(choices) > 40 else "")
    return UsageError(f"{msg}; valid: {shown}")


class Registry:
    """Maps canonical names (and aliases) to builders plus free-form metadata.

    With `package`, the registry imports every module of that package (names not starting with
    "_") the first time it is read, so one-family-per-file packages register themselves lazily.
    """

    def __init__(self, kind: str, package: str | None = None):
        self.kind = kind
        self._entries: dict[str, tuple[Callable, dict[str, Any]]] = {}
        self._aliases: dict[str, str] = {}
        self._package = package

    def _load(self) -> None:
        if self._package is None:
            return
        package, self._package = self._package, None
        import importlib
        import pkgutil

        for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{package}.{info.name}")

    def register(self, name: str, *, aliases: tuple[str, ...] = (), **meta) -> Callable:
        """Decorator registering `fn` under `name`; duplicate names or aliases raise."""

        def deco(fn: Callable) -> Callable:
            self.add(name, fn, aliases=aliases, **meta)
            return fn

        return deco

    def add(self, name: str, fn: Callable, *, aliases: tuple[str, ...] = (), **meta) -> None:
        for key in (name, *aliases):
            if key in self._entries or key in self._aliases:
                raise ValueError(f"{self.kind} '{key}' is registered twice")
        self._entries[name] = (fn, dict(meta, aliases=tuple(aliases)))
        for alias in aliases:
            self._aliases[alias] = name

    def canonical(self, name: str) -> str:
        """The canonical name for a name or alias; UsageError naming the closest otherwise."""
        self._load()
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        raise unknown_name_error(self.kind, name, [*self._entries, *self._aliases])

    def get(self, name: str) -> Callable:
        return self._entries[self.canonical(name)][0]

    def meta(self, name: str) -> dict[str, Any]:
        return self._entries[self.canonical(name)][1]

    def build(self, name: str, *args, **kwargs):
        return self.get(name)(*args, **kwargs)

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        self._load()
        return len(self._entries)
