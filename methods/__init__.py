"""Gradient inversion attacks. Importing this package registers every built-in method."""

from methods import afgi, dlg, gradinversion, idlg, ig, lrb, mean, noise  # noqa: F401  (imported for their registration)
from methods.base import (
    Attack,
    Observation,
    Reconstruction,
    TracePoint,
    get_method,
    get_method_class,
    is_reference,
    list_methods,
    register_method,
)

__all__ = [
    "Attack",
    "Observation",
    "Reconstruction",
    "TracePoint",
    "get_method",
    "get_method_class",
    "is_reference",
    "list_methods",
    "register_method",
]
