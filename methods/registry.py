"""One registry type for every pluggable component: methods, label strategies, datasets, models, defences.

Each kind of component gets its own ``Registry``; all of them register with the
same decorator, list their names the same way and fail a lookup with the same
``UnknownNameError``, whose message names the valid choices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A registry lookup failed; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    """Named components of one kind (``kind`` names them in messages, e.g. "method")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that adds ``component`` under ``name``; a second, different component of that name is refused."""

        def wrap(component: T) -> T:
            self.add(name, component)
            return component

        return wrap

    def add(self, name: str, component: T) -> None:
        existing = self._entries.get(name)
        if existing is not None and existing is not component:
            raise ValueError(
                f"a {self.kind} named {name!r} is already registered ({getattr(existing, '__qualname__', existing)})"
            )
        self._entries[name] = component

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
