"""Which methods are reference floors, and the order methods appear in: both read from the method registry.

Registered methods come in the order they were published (the last year in their ``paper``), then by
name; methods the registry does not know (a plugin not imported here) follow by name; reference
methods, which use no gradient, come last. A new method needs no entry anywhere in the report.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Any

REFERENCE_NAMES = ("noise", "mean")  # the reference methods' names, for records of an unregistered reference
YEAR = re.compile(r"\b(?:19|20)\d{2}\b")


@dataclass(frozen=True)
class RegisteredMethod:
    name: str
    year: float  # inf when the paper names no year
    reference: bool


def registered_methods() -> tuple[RegisteredMethod, ...]:
    """Every registered method in display order (imports ``methods`` on first use: the tables need no torch)."""
    import methods

    return describe_registry(tuple(methods.list_methods()))


@functools.lru_cache(maxsize=8)
def describe_registry(names: tuple[str, ...]) -> tuple[RegisteredMethod, ...]:
    import methods

    found = []
    for name in names:
        cls = methods.get_method_class(name)
        years = YEAR.findall(str(getattr(cls, "paper", "")))
        reference = bool(getattr(cls, "reference", name in REFERENCE_NAMES))
        found.append(RegisteredMethod(name, float(years[-1]) if years else math.inf, reference))
    return tuple(sorted(found, key=lambda m: (m.reference, m.year, m.name)))


def is_reference(name: Any) -> bool:
    """A reference method (uses no gradient): the registry's ``reference`` attribute, else the name."""
    for method in registered_methods():
        if method.name == name:
            return method.reference
    return name in REFERENCE_NAMES


def method_sort_key(name: Any) -> tuple[int, float, str]:
    """Registered methods by publication, then unknown ones by name, then the reference methods."""
    for position, method in enumerate(registered_methods()):
        if method.name == name:
            return (2 if method.reference else 0, float(position), "")
    return (3 if name in REFERENCE_NAMES else 1, 0.0, str(name))


def method_order(names: Any) -> list[Any]:
    return sorted(set(names), key=lambda n: sort_key("method", n))


def sort_key(column: str, value: Any) -> tuple[int, float, str]:
    """Sort key that tolerates mixed types and missing values (last)."""
    if value is None:
        return (4, 0.0, "")
    if column == "method":
        return method_sort_key(value)
    if isinstance(value, (bool, int, float)):
        return (0, float(value), "")
    return (1, 0.0, str(value))
