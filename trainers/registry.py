"""One tiny registry for every extension point: data sets, models, bound methods, training
methods and search spaces (the shape of timm's ``register_model`` / ``list_models``).

    MODELS = Registry("model")

    @MODELS.register("mlp_tiny")
    def mlp_tiny(...): ...

    MODELS.get("mlp_tiny")  # an unknown name raises UnknownNameError listing the known ones
    MODELS.names()          # sorted names, for --help texts and contract tests

Registration happens at import time of the module that defines the thing, so a registry is
complete once its package is imported; ``import_plugins`` imports extra modules (the sweep's
``--plugins``) that register their own entries.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(ValueError):
    """A name that is not registered; the message lists the known names."""


class Registry(Generic[T]):
    """Named entries of one kind; each name is registered once."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T | None = None) -> Callable[[T], T] | T:
        """``register(name, entry)`` or, as a decorator, ``@register(name)``."""
        if entry is not None:
            return self._add(name, entry)
        return lambda fn: self._add(name, fn)

    def _add(self, name: str, entry: T) -> T:
        if not name or name != name.strip():
            raise ValueError(f"invalid {self.kind} name {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove an entry (tests that register a toy entry clean up with this)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self.names()) or '(none)'}"
            ) from None

    __getitem__ = get

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._entries))

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(sorted(self._entries.items()))

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self.names())})"


def import_plugins(modules: Iterable[str]) -> None:
    """Import modules that register extra entries (``--plugins my_pkg.my_method``)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ValueError(f"invalid plugin {name!r}: {e}") from None
