"""Memory at paper scale: ResNet-50 at 224 px, measured on the CPU, predicted for each paper-profile cell.

``python -m bench.perf --experiments paper_memory`` (not in the default set: it takes minutes on one core).
It fits ``methods.memory``'s model (base + G * per_group + G * B * per_image) to probe steps of each
schedule on ResNet-50 at 224 px, checks the fit against a few real iterations of GradInversion in forked
children (peak RSS), and predicts the peak of every paper-profile cell at B = 48, with the schedule that
the memory budget picks when the budget is 80% of an 80 GiB device (docs/performance.md, "Memory at paper scale").
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import dataclasses
from typing import Any

import torch

from bench.data import load_dataset
from bench.perf.isolate import call_isolated
from bench.perf.measure import PeakMemory
from bench.perf.rounds import draw_round
from methods.base import Observation, build_method, get_method_class
from methods.losses import build_gradient_loss
from methods.memory import CUDA_SHARE, GIB, MemoryModel, fit, matching_probe, optimiser_state_bytes

OPTIONAL_EXPERIMENTS = ("paper_memory",)  # run only when named: minutes on one core
MODEL, BATCH = "resnet50", 48
DEVICE_GIB = 80.0
LBFGS_HISTORY = 100  # torch.optim.LBFGS's default history_size, which methods.optimise keeps

# schedule -> (gradient distance, vmapped, BN-statistics prior)
SCHEDULES: dict[str, tuple[str, bool, bool]] = {
    "vmapped + BN prior": ("euclidean", True, True),
    "plain + BN prior": ("euclidean", False, True),
    "vmapped": ("cosine", True, False),
    "plain": ("cosine", False, False),
}


def _observation(batch_size: int) -> Observation:
    return draw_round(load_dataset("imagenet_sample"), MODEL, batch_size, torch.device("cpu")).observation


def fit_schedules(observation: Observation) -> dict[str, MemoryModel]:
    fitted = {}
    for name, (distance, vmapped, bn_prior) in SCHEDULES.items():
        step = matching_probe(
            observation.model,
            observation.image_shape,
            observation.num_classes,
            build_gradient_loss(distance, observation.gradients),
            batched=vmapped,
            bn_prior=bn_prior,
        )
        fitted[name] = fit(step, observation.device, groups_at_once=vmapped)
    return fitted


M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def _run_gradinversion(batch_size: int, groups: int, budget_gb: float, iterations: int) -> dict[str, Any]:
    """Peak RSS of ``iterations`` GradInversion iterations, after a first run that made the budget's probe.

    Every allocation above 64 KiB is its own mapping, returned when freed, so the peak RSS increase is the peak
    of the live allocations rather than of what the heap kept from the first run.
    """
    ctypes.CDLL(ctypes.util.find_library("c")).mallopt(M_MMAP_THRESHOLD, 64 * 1024)
    observation = _observation(batch_size)
    options = {"iterations": iterations, "group_size": groups, "memory_budget_gb": budget_gb}
    attack = build_method("gradinversion", "paper", options)
    attack.reconstruct(observation, generator=torch.Generator().manual_seed(0))  # probes once per process
    with PeakMemory(observation.device) as peak:
        result = attack.reconstruct(observation, generator=torch.Generator().manual_seed(0))
    return {**peak.result, "batched": result.extras["batched_candidates"]}


def _optimiser_bytes(method: str, images: int, image_shape: tuple[int, int, int]) -> float:
    if method in ("dlg", "idlg"):  # L-BFGS: two history vectors per step kept, and a few working copies
        return (2 * LBFGS_HISTORY + 4) / 4 * optimiser_state_bytes(images, image_shape, 4)
    return optimiser_state_bytes(images, image_shape, 4)


def paper_cells(fitted: dict[str, MemoryModel], image_shape: tuple[int, int, int]) -> list[dict[str, Any]]:
    """Each paper-profile cell at B = 48 (IG also at its largest batched B), the schedule the budget picks."""
    budget = CUDA_SHARE * DEVICE_GIB * GIB  # the default budget, taking the whole device as free
    ig = get_method_class("ig").profiles["paper"]
    groups_gi = get_method_class("gradinversion").profiles["paper"]["group_size"]
    up_to = next(f.default for f in dataclasses.fields(get_method_class("ig")) if f.name == "batch_restarts_up_to")
    rows = []

    def row(
        method: str, batch: int, groups: int, batched_schedule: str | None, plain_schedule: str, eligible: bool = True
    ) -> None:
        state = _optimiser_bytes(method, groups * batch, image_shape)
        batched = fitted[batched_schedule].bytes(groups, batch) + state if batched_schedule else None
        plain = fitted[plain_schedule].bytes(groups, batch) + state
        takes_batched = eligible and batched is not None and batched <= budget
        chosen = batched if takes_batched else plain
        schedule = batched_schedule if takes_batched else plain_schedule
        rows.append(
            {
                "method": method,
                "B": batch,
                "groups": groups,
                "batched_gb": None if batched is None else batched / GIB,
                "plain_gb": plain / GIB,
                "schedule": schedule if eligible else f"{schedule} (B > batch_restarts_up_to)",
                "predicted_gb": chosen / GIB,
                "budget_gb": budget / GIB,
                "fits": chosen <= budget,
            }
        )

    restarts = ig["restarts"]
    row("ig", up_to, restarts, "vmapped", "plain")
    row("ig", BATCH, restarts, "vmapped", "plain", eligible=BATCH <= up_to)
    row("gradinversion", BATCH, groups_gi, "vmapped + BN prior", "plain + BN prior")
    for method in ("afgi", "dlg", "idlg"):
        row(method, BATCH, 1, None, "plain")
    return rows


def exp_paper_memory(args: argparse.Namespace, iterations: int = 2) -> dict[str, Any]:
    runs = []
    # a few real iterations: GradInversion with two candidates of two images, both schedules, each in a fresh child
    for budget_gb, schedule in ((0.0, "vmapped + BN prior"), (1e-9, "plain + BN prior")):
        status, payload = call_isolated(_run_gradinversion, (2, 2, budget_gb, iterations), args, malloc="default")
        runs.append({"schedule": schedule, "status": status, "run": payload})
    observation = _observation(2)
    fitted = fit_schedules(observation)
    for run in runs:
        predicted = fitted[run["schedule"]].bytes(2, 2) + optimiser_state_bytes(4, observation.image_shape, 4)
        run["predicted_mb"] = predicted / 2**20
    return {
        "model": MODEL,
        "image_shape": list(observation.image_shape),
        "fits": {name: dataclasses.asdict(model) for name, model in fitted.items()},
        "per_image_gb": {name: model.per_image / GIB for name, model in fitted.items()},
        "runs": runs,
        "cells": paper_cells(fitted, observation.image_shape),
    }


def paper_memory_text(result: dict[str, Any]) -> str:
    lines = [f"\nMemory at paper scale: {result['model']} at {result['image_shape']}"]
    for name, gb in result["per_image_gb"].items():
        fitted = result["fits"][name]
        lines.append(
            f"  {name:20s} per image {gb:.3f} GiB, per group {fitted['per_group'] / GIB:.3f} GiB, "
            f"base {fitted['base'] / GIB:.3f} GiB"
        )
    for run in result["runs"]:
        measured = run["run"].get("increase_mb") if isinstance(run["run"], dict) else run["run"]
        lines.append(f"  G=2 B=2 {run['schedule']:20s} predicted {run['predicted_mb']:.0f} MiB, measured {measured}")
    lines.append("  | method | B | G/R | batched GiB | plain GiB | schedule | predicted GiB | fits |")
    for cell in result["cells"]:
        batched = "" if cell["batched_gb"] is None else f"{cell['batched_gb']:.1f}"
        lines.append(
            f"  | {cell['method']} | {cell['B']} | {cell['groups']} | {batched} | {cell['plain_gb']:.1f} | "
            f"{cell['schedule']} | {cell['predicted_gb']:.1f} | {'yes' if cell['fits'] else 'NO'} |"
        )
    return "\n".join(lines)
