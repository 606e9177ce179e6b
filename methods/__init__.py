"""Gradient inversion attacks. Importing this package registers every built-in method.

Every module of the package is imported here, so a new method's file registers itself: adding a
built-in baseline touches its file and its docs page only (docs/adding_a_method.md).
"""

import importlib
import pkgutil

from methods.base import (
    Attack,
    Observation,
    Reconstruction,
    TracePoint,
    build_method,
    get_method,
    get_method_class,
    is_reference,
    list_methods,
    register_method,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "Attack",
    "Observation",
    "Reconstruction",
    "TracePoint",
    "build_method",
    "get_method",
    "get_method_class",
    "is_reference",
    "list_methods",
    "register_method",
]
