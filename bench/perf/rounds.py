"""What a perf cell attacks: the default dataset, one FedSGD round, and each registered method as configured.

The round is built with the functions a real trial uses (``bench.sampler``, ``bench.models``,
``bench.client``); methods come from the registry (``methods.list_methods()``) with their quick-profile
config, so a newly registered method is timed without any entry here.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import methods
from bench.perf.measure import Clock, RunResult
from bench.trial import dataset_for, group_node, resolve_dup_ratio
from methods.base import get_method_class
from methods.optimise import synchronise, trace_clock
from methods.options import resolve_options

REPO_ROOT = Path(__file__).resolve().parents[2]
CONF = REPO_ROOT / "conf"
SEED = 0


@functools.cache
def default_dataset() -> Any:
    """The default dataset (conf/dataset/crops.yaml), loaded once per process (forked children inherit it)."""
    return dataset_for(group_node("dataset", "crops"))


def model_options(name: str) -> dict[str, Any]:
    """The model's options from conf/model/<name>.yaml (none when the file does not exist)."""
    if not (CONF / "model" / f"{name}.yaml").is_file():
        return {}
    return {k: v for k, v in group_node("model", name).items() if k not in ("name", "state")}


@dataclasses.dataclass
class Round:
    observation: Any
    truth: Tensor
    true_labels: Tensor
    dup_ratio: float
    seconds: dict[str, float]


def least_dup_ratio(dataset: Any, batch_size: int) -> float:
    return float(resolve_dup_ratio("least", dataset, batch_size))


def draw_round(dataset: Any, model_name: str, batch_size: int, device: torch.device, seed: int = SEED) -> Round:
    """data -> model -> client update, as a trial does (dup_ratio=least, untrained model, labels known)."""
    from bench.client import client_update
    from bench.sampler import sample_batch
    from bench.training import prepare_model

    seconds: dict[str, float] = {}
    start = time.perf_counter()
    dup_ratio = least_dup_ratio(dataset, batch_size)
    indices = sample_batch(dataset.labels, dataset.num_classes, batch_size, dup_ratio, seed)
    truth, true_labels = dataset.batch(indices)
    truth, true_labels = truth.to(device), true_labels.to(device)
    synchronise(device)
    seconds["sampling"] = time.perf_counter() - start
    start = time.perf_counter()
    model = prepare_model(
        model_name,
        state="untrained",
        num_classes=dataset.num_classes,
        image_shape=dataset.image_shape,
        seed=seed,
        mean=dataset.mean,
        std=dataset.std,
        **model_options(model_name),
    ).to(device)
    synchronise(device)
    seconds["model"] = time.perf_counter() - start
    start = time.perf_counter()
    observation = client_update(
        model,
        truth,
        true_labels,
        mean=dataset.mean,
        std=dataset.std,
        num_classes=dataset.num_classes,
        mode="train",
        labels_known=True,
    )
    synchronise(device)
    seconds["client_update"] = time.perf_counter() - start
    return Round(observation, truth, true_labels, dup_ratio, seconds)


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def registered_methods() -> list[str]:
    """Every registered attack (``methods.list_methods()``): each gets a cell, with or without a floor.

    Reference floors (``methods.is_reference``: ``mean``, ``noise``) run no iterations, so there is nothing to time.
    """
    return [name for name in methods.list_methods() if not methods.is_reference(get_method_class(name))]


def method_config(name: str) -> tuple[dict[str, Any], int | None]:
    """The method's quick-profile keyword config (declared with the method) and that profile's iterations."""
    params = resolve_options(get_method_class(name), "quick")
    return params, params.pop("iterations", None)


def perf_overrides(cls: type, *, model_has_bn: bool, lbfgs_max_iter: int) -> dict[str, Any]:
    """The settings every cell times with, for the options this method has (docs/performance.md, settings)."""
    known = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    overrides: dict[str, Any] = {"lbfgs_max_iter": lbfgs_max_iter, "restarts": 1}
    if not model_has_bn:
        overrides["bn_weight"] = 0.0  # a BatchNorm-statistics prior needs BatchNorm layers (LeNet has none)
    return {k: v for k, v in overrides.items() if k in known}


def build_attack(name: str, *, iterations: int, model_has_bn: bool, lbfgs_max_iter: int, **overrides: Any) -> Any:
    """The attack with its quick-profile config, ``iterations``, the perf settings and ``overrides``."""
    cls = get_method_class(name)
    params, _ = method_config(name)
    params["iterations"] = iterations
    params.update(perf_overrides(cls, model_has_bn=model_has_bn, lbfgs_max_iter=lbfgs_max_iter))
    params.update(overrides)
    if dataclasses.is_dataclass(cls):
        known = {f.name for f in dataclasses.fields(cls)}
        params = {k: v for k, v in params.items() if k in known}
    return cls(**params)


def profile_iterations(name: str) -> int | None:
    """Iterations of the method's quick profile (or its dataclass default)."""
    _, iterations = method_config(name)
    if iterations is not None:
        return int(iterations)
    cls = get_method_class(name)
    if dataclasses.is_dataclass(cls):
        fields = {f.name: f.default for f in dataclasses.fields(cls)}
        if isinstance(fields.get("iterations"), int):
            return fields["iterations"]
    return None


def run_ours(attack: Any, observation: Any, clock: Clock, seed: int = SEED) -> RunResult:
    """The method's own ``reconstruct``; seconds per iteration from its trace, read with ``clock``."""
    device = observation.device
    generator = torch.Generator().manual_seed(seed)
    synchronise(device)
    start = clock()
    with trace_clock(clock.read):
        result = attack.reconstruct(observation, generator=generator)
    synchronise(device)
    call = clock() - start
    trace = result.trace
    per_iteration = trace[-1].seconds / trace[-1].iteration if trace else math.nan
    return RunResult(per_iteration, [p.objective for p in trace], call_seconds=call)


def label_strategy(attack: Any, batch_size: int) -> str | None:
    """The label strategy a real trial of this attack would run (the cells time with known labels)."""
    if getattr(attack, "lrb", False):  # AFGI's Label Recovery Block
        return "lrb"
    single = getattr(attack, "label_strategy", None)
    many = getattr(attack, "batch_label_strategy", None)
    if batch_size > 1 and many is not None:
        return many
    return single
