"""The typed schema of a run's settings: every top-level key with its type, default, range and help, once.

The Hydra runner, the Python API (``bench.trial``) and the tests all read this
table: Hydra's top-level defaults are generated from it (``bench.run`` stores
them as the ``settings`` config), ``validate`` checks a whole config before any
trial runs, and ``TRIAL_KEYS``/``RUN_ONLY_KEYS`` say which keys change a
trial's numbers and which only change how a run is carried out. Method options
are declared with their method (``methods.options``); dataset and model options
by their builders' signatures.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bench.client import build_client
from bench.defences import defence_from_config
from bench.errors import UserError
from bench.stage import stage_epochs
from methods.base import get_method_class
from methods.budget import Budget, iterations_within
from methods.labels import list_label_strategies
from methods.options import OptionError, check_options, resolve_options
from methods.registry import UnknownNameError

DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@dataclass(frozen=True)
class Key:
    """One top-level setting. ``trial``: part of a trial's identity (its record key); ``run_only``: may differ
    between runs into one results folder without mixing experiments."""

    name: str
    kind: type
    default: Any
    help: str
    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None  # exclusive lower bound
    nullable: bool = False
    also: tuple[str, ...] = ()  # literal words accepted besides the type, e.g. dup_ratio=least
    trial: bool = False
    run_only: bool = False
    example: str = ""

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` for this key (None when it is valid)."""
        if value is None:
            return None if self.nullable else f"give a value, e.g. {self.name}={self.show_example()}"
        if isinstance(value, str) and value in self.also:
            return None
        if self.choices:
            return None if value in self.choices else f"use one of {', '.join(map(_word, self.choices))}"
        if not _is_kind(value, self.kind):
            words = {
                int: "an integer",
                float: "a number",
                bool: "true or false",
                str: "a string",
                list: "a list",
                dict: "a mapping",
            }
            extra = f" or {' or '.join(self.also)}" if self.also else ""
            return f"give {words[self.kind]}{extra}, e.g. {self.name}={self.show_example()}"
        if self.minimum is not None and value < self.minimum:
            return f"give a value >= {self.minimum:g}, e.g. {self.name}={self.show_example()}"
        if self.above is not None and value <= self.above:
            return f"give a value > {self.above:g}, e.g. {self.name}={self.show_example()}"
        if self.maximum is not None and value > self.maximum:
            return f"give a value <= {self.maximum:g}"
        if self.name == "device" and not DEVICE_PATTERN.match(value):
            return "use auto, cpu, cuda, cuda:N or mps"
        return None

    def show_example(self) -> str:
        return self.example or _word(self.default)


def _word(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _is_kind(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, int | float)
    if kind is list:
        return isinstance(value, list | tuple)
    return isinstance(value, kind)


SCHEMA: tuple[Key, ...] = (
    Key(
        "task",
        str,
        "attack",
        "attack (reconstruct images) or labels (label recovery only: sweep=labels)",
        choices=("attack", "labels"),
        trial=True,
    ),
    Key("label_strategy", str, "count", "the strategy a task=labels trial evaluates (methods.labels)"),
    Key(
        "profile",
        str,
        "quick",
        "quick (CPU budgets) or paper (the papers' budgets, for a GPU)",
        choices=("quick", "paper"),
        trial=True,
    ),
    Key("batch_size", int, 1, "images in the client's batch", minimum=1, trial=True),
    Key(
        "dup_ratio",
        float,
        0.0,
        "0: all labels distinct, 1: all the same, least: the least the dataset allows",
        minimum=0,
        maximum=1,
        also=("least",),
        trial=True,
        example="0.5",
    ),
    Key(
        "composition",
        str,
        "even",
        "how a batch spreads over its classes: even (as evenly as possible) or "
        "dirichlet (skewed counts, as on real clients)",
        choices=("even", "dirichlet"),
    ),
    Key("alpha", float, 0.5, "Dirichlet concentration of composition=dirichlet (smaller: more skewed)", above=0),
    Key(
        "seed",
        int,
        0,
        "seeds the batch, the model initialisation and the attack's initialisation",
        minimum=0,
        trial=True,
    ),
    Key("seeds", int, 1, "how many seeds a sweep runs (0..seeds-1)", minimum=1, run_only=True),
    Key(
        "iterations",
        int,
        None,
        "overrides the profile's iteration budget when set",
        minimum=1,
        nullable=True,
        example="100",
    ),
    Key(
        "budget",
        str,
        None,
        "the same budget for every method, overriding the profiles: evaluations:N (gradient evaluations) or "
        "seconds:T (the attack's own seconds); docs/budgets.md; part of the trial key when set",
        nullable=True,
        example="evaluations:500",
    ),
    Key("labels_known", bool, False, "threat model: does the attacker receive the labels?", trial=True),
    Key(
        "client_mode",
        str,
        "train",
        "the mode the client computes its gradient in (BatchNorm!)",
        choices=("train", "eval"),
        trial=True,
    ),
    Key(
        "threads",
        int,
        1,
        "torch CPU threads per trial: 1 is robust on small shared machines and reproducible",
        minimum=1,
        nullable=True,
        run_only=True,
    ),
    Key(
        "device",
        str,
        "auto",
        "auto picks CUDA when present; cpu, cuda, cuda:N, mps (its type is part of a trial's key)",
        run_only=True,
    ),
    Key(
        "allow_tf32", bool, False, "TF32 matmuls and convolutions on CUDA (faster, about 1e-3 off float32)", trial=True
    ),
    Key(
        "score_every",
        int,
        25,
        "score the running reconstruction every k iterations (0: never)",
        minimum=0,
        run_only=True,
    ),
    Key(
        "checkpoint_every",
        int,
        0,
        "checkpoint inside a trial every k attack iterations (0: off); a killed trial continues from its checkpoint",
        minimum=0,
        run_only=True,
        example="500",
    ),
    Key(
        "checkpoint_minutes",
        float,
        10.0,
        "checkpoint inside a trial every this many minutes (0: off)",
        minimum=0,
        run_only=True,
    ),
    Key("quiet", bool, False, "true turns progress bars off", run_only=True),
    Key(
        "figures",
        bool,
        True,
        "false: the end-of-run report writes its tables and report.md but no figures (quicker); "
        "`python -m bench.report DIR` draws them later",
        run_only=True,
    ),
    Key("debug", bool, False, "true shows tracebacks for errors", run_only=True),
    Key("results_root", str, "results", "where results/<sweep>/<timestamp>/ folders go", run_only=True),
    Key(
        "plugins",
        list,
        [],
        "modules or .py files to import first: they may register methods (docs/adding_a_method.md)",
        run_only=True,
        example="[my_attack.py]",
    ),
    Key("cache_dir", str, ".cache/gia-bench", "trained models and other caches", run_only=True),
    Key("grid_images", int, 8, "images per row in a trial's PNG grid (first k of the batch)", minimum=1, run_only=True),
    Key(
        "success_psnr",
        float,
        20.0,
        "an image counts as reconstructed at this PSNR (dB) or above: the reports' success rate",
        run_only=True,
    ),
    Key(
        "defence_training",
        dict,
        {"steps": 0, "batch": 16, "lr": 0.05},
        "training cost of the defence: held-out "
        "accuracy after `steps` local SGD steps with the defence on every step; steps=0: off (docs/defences.md); "
        "part of the trial key when on",
    ),
    Key("sweep_name", str, "single", "the results subfolder; set by each sweep file", run_only=True),
)
# Keys of config groups that have no builder signature to read them from: ``group.field``, set as
# ``client=fedavg client.local_steps=5``. The group's YAML files give the values; these give type, range and help.
GROUP_SCHEMA: tuple[Key, ...] = (
    Key(
        "client.name",
        str,
        "fedsgd",
        "the config group `client`: fedsgd (one gradient of the batch) or fedavg (local SGD steps, sends the "
        "weight difference; docs/fedavg.md); part of the trial key unless fedsgd",
        choices=("fedsgd", "fedavg"),
    ),
    Key("client.local_steps", int, 1, "fedavg: local SGD steps (mini-batches)", minimum=1, example="2"),
    Key(
        "client.local_epochs",
        int,
        None,
        "fedavg: when set, local_epochs x ceil(batch_size / local_batch_size) steps instead of local_steps",
        minimum=1,
        nullable=True,
        example="1",
    ),
    Key("client.local_lr", float, 0.1, "fedavg: the local SGD learning rate", above=0),
    Key(
        "client.local_batch_size",
        int,
        None,
        "fedavg: images per local step, from a fresh shuffle of the batch every epoch (<= batch_size; null: the "
        "whole batch)",
        minimum=1,
        nullable=True,
        example="4",
    ),
)
SETTINGS = {key.name: key for key in SCHEMA}
GROUP_SETTINGS = {key.name: key for key in GROUP_SCHEMA}
TRIAL_KEYS = tuple(key.name for key in SCHEMA if key.trial and key.name != "task") + ("dataset", "model")
RUN_ONLY_KEYS = frozenset(key.name for key in SCHEMA if key.run_only) | {"hydra"}
GROUPS = ("dataset", "model", "method")
MODEL_STATES = ("untrained", "trained")  # and trained@E, E epochs of one seeded run (bench.stage.stage_epochs)


def defaults() -> dict[str, Any]:
    """Every top-level key's default: Hydra's ``settings`` config and the Python API's starting point."""
    return {
        key.name: (type(key.default)(key.default) if isinstance(key.default, list | dict) else key.default)
        for key in SCHEMA
    }


def check_value(name: str, value: Any) -> None:
    """One top-level value; raises ``UserError`` naming the key and what to give instead."""
    key = SETTINGS.get(name)
    if key is None:
        raise UserError(f"unknown setting {name!r}; settings are {', '.join(SETTINGS)}")
    problem = key.problem(value)
    if problem:
        raise UserError(f"{name}={value!r} is not valid; {problem}")


def validate(config: Mapping[str, Any]) -> None:
    """Check a whole composed config (plain containers) and raise ``UserError`` on the first bad value."""
    for name in SETTINGS:
        if name in config:
            check_value(name, config[name])
    if config.get("task") == "labels":
        if config.get("label_strategy") not in list_label_strategies():
            raise UserError(
                f"label_strategy={config.get('label_strategy')!r} is not valid: unknown label strategy; available: "
                f"{', '.join(list_label_strategies())}"
            )
    if config.get("defence") is not None:
        defence_from_config(config["defence"])  # a bad strength is a UserError naming the defence
    if config.get("client") is not None:
        check_group("client", config["client"])
        if isinstance(config.get("batch_size"), int):
            build_client(config["client"], config["batch_size"])  # e.g. local_batch_size > batch_size
    model = config.get("model") or {}
    stage_epochs(model.get("state", "untrained"))  # untrained, trained or trained@E; else a UserError saying so
    budget = parse_budget(config.get("budget"))
    method = config.get("method")
    if config.get("task", "attack") == "attack" and method is not None:
        method_options(method, config.get("profile", "quick"), config.get("iterations"), budget)


def check_group(group: str, node: Mapping[str, Any]) -> None:
    """Each value of a config group node against ``GROUP_SCHEMA``; raises ``UserError`` naming ``group.field``."""
    if not isinstance(node, Mapping):
        example = GROUP_SETTINGS[f"{group}.name"].default
        raise UserError(f"{group}={node!r} is not valid; give a {group} name, e.g. {group}={example}")
    for field, value in node.items():
        key = GROUP_SETTINGS.get(f"{group}.{field}")
        if key is None:
            known = ", ".join(k for k in GROUP_SETTINGS if k.startswith(group + "."))
            raise UserError(f"unknown setting {group}.{field}; {group} settings are {known}")
        problem = key.problem(value)
        if problem:
            raise UserError(f"{key.name}={value!r} is not valid; {problem}")


def parse_budget(text: str | None) -> Budget | None:
    """The ``budget`` setting as a ``Budget`` (None when unset); a bad value is a ``UserError``."""
    if text is None:
        return None
    try:
        return Budget.parse(text)
    except ValueError as error:
        reason = str(error)
        if reason.startswith("budget="):
            raise UserError(reason) from None
        raise UserError(f"budget={text!r} is not valid; give evaluations:N or seconds:T ({reason})") from None


def method_options(
    method: Mapping[str, Any], profile: str, iterations: int | None = None, budget: Budget | None = None
) -> dict[str, Any]:
    """The resolved, checked keyword config of ``method`` (a ``{name, params}`` node) at ``profile``.

    An evaluation ``budget`` sets the iterations (over the profile's and ``iterations``) so that the method spends
    at most that many gradient evaluations (``methods.budget.iterations_within``).
    """
    name = method.get("name")
    try:
        cls = get_method_class(name)
    except UnknownNameError as error:
        hint = " (a plugin's method: plugins=[my_attack.py] method=NAME)"
        raise UserError(f"{error}{hint}") from None
    overrides = dict(method.get("params") or {})
    if iterations is not None:
        overrides["iterations"] = iterations
    try:
        options = resolve_options(cls, profile, overrides)
        check_options(cls, options)
        if budget is not None and budget.kind == "evaluations" and "iterations" in options:
            options["iterations"] = iterations_within(cls(**options), int(budget.amount))
            check_options(cls, options)
    except OptionError as error:
        top_level = error.option == "iterations" and iterations is not None
        key = "iterations" if top_level else f"method.params.{error.option}"
        raise UserError(f"{key}={error.value!r} is not valid for method {name!r}: {error.problem}") from None
    except ValueError as error:
        raise UserError(str(error)) from None
    return options


def settings_table() -> str:
    """The Markdown table of every setting (README.md embeds it; a test keeps it in sync with this schema)."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key in SCHEMA + GROUP_SCHEMA:
        kind = " / ".join(map(_word, key.choices)) if key.choices else key.kind.__name__
        if key.also:
            kind += " or " + " / ".join(key.also)
        default = (
            "null"
            if key.default is None
            else _word(key.default)
            if not isinstance(key.default, dict)
            else ("{" + ", ".join(f"{k}: {v}" for k, v in key.default.items()) + "}")
        )
        limits = [f">= {key.minimum:g}"] if key.minimum is not None else []
        limits += [f"> {key.above:g}"] if key.above is not None else []
        limits += [f"<= {key.maximum:g}"] if key.maximum is not None else []
        notes = ", ".join(
            limits + (["in the trial's key"] if key.trial else []) + (["run only"] if key.run_only else [])
        )
        meaning = key.help.replace("|", "\\|") + (f" ({notes})" if notes else "")
        rows.append(f"| `{key.name}` | {kind} | {default} | {meaning} |")
    return "\n".join(rows)
