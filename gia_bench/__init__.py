"""gia-bench under one import name: ``import gia_bench as gb``.

The code lives in the top-level packages ``methods`` (attacks, never importing
``bench``) and ``bench`` (the federated setting, scoring, runner and report), as
the project layout asks; their short names can collide with other packages in a
user's environment, so this thin package re-exports the public API under a name
that cannot.
"""

from bench.config import SCHEMA
from bench.data import list_datasets, load_dataset, register_dataset
from bench.errors import UserError
from bench.models import list_models, register_model
from bench.trial import TrialResult, draw_round, run_trial, settings_for, trial
from methods.base import (
    Attack,
    Observation,
    Reconstruction,
    build_method,
    get_method,
    list_methods,
    register_method,
)
from methods.labels import infer_labels, list_label_strategies, register_label_strategy
from methods.options import option
from methods.registry import Registry, UnknownNameError


def write_report(out_dir: str) -> str:
    """Tables, figures and report.md for a results folder (``python -m bench.report DIR``)."""
    from pathlib import Path

    from bench.report import write_report as write

    return write(Path(out_dir))


__all__ = [
    "SCHEMA",
    "Attack",
    "Observation",
    "Reconstruction",
    "Registry",
    "TrialResult",
    "UnknownNameError",
    "UserError",
    "build_method",
    "draw_round",
    "get_method",
    "infer_labels",
    "list_datasets",
    "list_label_strategies",
    "list_methods",
    "list_models",
    "load_dataset",
    "option",
    "register_dataset",
    "register_label_strategy",
    "register_method",
    "register_model",
    "run_trial",
    "settings_for",
    "trial",
    "write_report",
]
