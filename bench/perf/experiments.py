"""Experiments: one design choice at a time, measured A/B interleaved (``bench.perf.measure.interleaved``).

glibc malloc tuning (fresh processes), the loop machinery on a trivial objective, the gradient
distance's form, BatchNorm-statistics reuse, GradInversion's vmapped candidates vs separate runs, IG's
restarts one after another vs side by side, channels-last, and ``torch.compile``. They name the methods
whose design choice they measure; the grid itself (``bench.perf.cells``) needs no such names.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from bench.perf.floors import FLOORS, floor_ig, step_factor
from bench.perf.floors_batched import floor_gradinversion, floor_ig_batched
from bench.perf.isolate import call_isolated
from bench.perf.measure import Clock, PeakMemory, RunResult, interleaved, median, minor_faults, relative
from bench.perf.rounds import build_attack, default_dataset, draw_round, has_batch_norm, registered_methods, run_ours
from methods.base import get_method_class
from methods.optimise import synchronise

EXPERIMENTS = (
    "backward_inputs",
    "malloc",
    "loop_machinery",
    "loss_form",
    "bn_stats",
    "candidates",
    "restarts",
    "channels_last",
    "compile",
)


def _setup(method: str, model: str, batch_size: int, args: argparse.Namespace, **overrides: Any) -> tuple[Any, Any]:
    device = torch.device(args.device)
    observation = draw_round(default_dataset(), model, batch_size, device).observation
    attack = build_attack(
        method,
        iterations=1,
        model_has_bn=has_batch_norm(observation.model),
        lbfgs_max_iter=args.lbfgs_max_iter,
        **overrides,
    )
    return observation, attack


def _iterations_for(fn: Callable[[int], RunResult], args: argparse.Namespace) -> int:
    if args.iterations is not None:
        return args.iterations
    estimate = fn(1).seconds_per_iteration
    return int(min(max(math.ceil(args.target_seconds / max(estimate, 1e-6)), 2), args.max_iterations))


def exp_loss_form(args: argparse.Namespace, model: str, batch_size: int, method: str) -> dict[str, Any]:
    """One flat torch.cat of all gradients vs a per-layer distance with no copy (methods/losses.py: per layer for
    the euclidean distances, one cat for the cosine one)."""
    clock = Clock(args.clock)
    observation, attack = _setup(method, model, batch_size, args)
    floor = FLOORS[method].run
    n = _iterations_for(lambda k: floor(observation, attack, k, form="cat", clock=clock), args)
    ab = interleaved(
        lambda: floor(observation, attack, n, form="cat", clock=clock),
        lambda: floor(observation, attack, n, form="layers", clock=clock),
        args.repeats,
    )
    results = ab.pop("results")
    return {
        "method": method,
        "model": model,
        "batch_size": batch_size,
        "iterations": n,
        "cat_s_per_iter": ab["a_s_per_iter"],
        "layers_s_per_iter": ab["b_s_per_iter"],
        "speedup_pct": 100 * (1 / ab["b_over_a"] - 1),
        "first_objective_rel_diff": relative(results["a"].objectives[0], results["b"].objectives[0]),
        "pairs": ab["pairs"],
    }


def exp_backward_inputs(args: argparse.Namespace, model: str, batch_size: int, method: str) -> dict[str, Any]:
    """The floor with a plain ``backward()`` (also into every model parameter, whose gradients accumulate) vs
    ``backward(inputs=[images])``, the optimised variables only, as every loop does now."""
    clock = Clock(args.clock)
    observation, attack = _setup(method, model, batch_size, args)
    floor = FLOORS[method].run
    n = _iterations_for(lambda k: floor(observation, attack, k, backward_into="all", clock=clock), args)
    ab = interleaved(
        lambda: floor(observation, attack, n, backward_into="all", clock=clock),
        lambda: floor(observation, attack, n, backward_into="variables", clock=clock),
        args.repeats,
    )
    results = ab.pop("results")
    for parameter in observation.model.parameters():
        parameter.grad = None
    return {
        "method": method,
        "model": model,
        "batch_size": batch_size,
        "iterations": n,
        "all_s_per_iter": ab["a_s_per_iter"],
        "variables_s_per_iter": ab["b_s_per_iter"],
        "saving_pct": 100 * (1 - ab["b_over_a"]),
        "objectives_identical": results["a"].objectives == results["b"].objectives,
        "pairs": ab["pairs"],
    }


def exp_bn_stats(args: argparse.Namespace, model: str, batch_size: int) -> dict[str, Any]:
    """GradInversion's BN prior: recompute mean/var from a reshaped copy (a forward hook) vs reuse BN's own."""
    clock = Clock(args.clock)
    observation, attack = _setup("gradinversion", model, batch_size, args)
    n = _iterations_for(lambda k: floor_gradinversion(observation, attack, k, bn_stats="recompute", clock=clock), args)
    ab = interleaved(
        lambda: floor_gradinversion(observation, attack, n, bn_stats="recompute", clock=clock),
        lambda: floor_gradinversion(observation, attack, n, bn_stats="reuse", clock=clock),
        args.repeats,
    )
    ab.pop("results")
    return {
        "model": model,
        "batch_size": batch_size,
        "group_size": attack.group_size,
        "iterations": n,
        "recompute_s_per_iter": ab["a_s_per_iter"],
        "reuse_s_per_iter": ab["b_s_per_iter"],
        "speedup_pct": 100 * (1 / ab["b_over_a"] - 1),
        "pairs": ab["pairs"],
    }


def exp_candidates(args: argparse.Namespace, model: str, batch_size: int, groups: int = 4) -> dict[str, Any]:
    """GradInversion: G candidates in one vmapped tensor vs G separate runs (ours), and a per-candidate loop."""
    clock = Clock(args.clock)
    observation, attack = _setup("gradinversion", model, batch_size, args, group_size=groups)
    _, single = _setup("gradinversion", model, batch_size, args, group_size=1)

    def ours(group_size: int, iterations: int) -> RunResult:
        base = attack if group_size == groups else single
        return run_ours(dataclasses.replace(base, iterations=iterations), observation, clock)

    n = _iterations_for(lambda k: ours(groups, k), args)
    together = interleaved(lambda: ours(1, n), lambda: ours(groups, n), args.repeats)
    together.pop("results")
    loop = interleaved(
        lambda: floor_gradinversion(observation, attack, n, candidates="vmap", clock=clock),
        lambda: floor_gradinversion(observation, attack, n, candidates="loop", clock=clock),
        args.repeats,
    )
    loop.pop("results")
    one, many = together["a_s_per_iter"], together["b_s_per_iter"]
    return {
        "model": model,
        "batch_size": batch_size,
        "group_size": groups,
        "iterations": n,
        "ours_g1_s_per_iter": one,
        "ours_gN_s_per_iter": many,
        "gN_over_N_runs": together["b_over_a"] / groups,
        "floor_vmap_s_per_iter": loop["a_s_per_iter"],
        "floor_loop_s_per_iter": loop["b_s_per_iter"],
        "loop_over_vmap": loop["b_over_a"],
        "pairs": together["pairs"],
    }


def exp_restarts(args: argparse.Namespace, model: str, batch_size: int, restarts: int = 4) -> dict[str, Any]:
    """IG restarts through our code: one after another (``batch_restarts_up_to=0``) vs side by side as one
    (R*B, C, H, W) tensor (the default), and the batched version against its hand-written floor."""
    clock = Clock(args.clock)
    observation, attack = _setup("ig", model, batch_size, args, restarts=restarts)

    def ours(iterations: int, batched: bool) -> RunResult:
        up_to = batch_size if batched else 0  # whatever the method's own rule would pick at this batch size
        result = run_ours(
            dataclasses.replace(attack, iterations=iterations, batch_restarts_up_to=up_to), observation, clock
        )
        if batched:
            return result
        # per iteration of the whole R-restart optimisation, so both sides count the same work
        return dataclasses.replace(result, seconds_per_iteration=result.seconds_per_iteration * restarts)

    # first thing in this process, so that no heap kept from earlier runs hides the batched run's growth
    with PeakMemory(observation.device) as memory:
        ours(1, True)
    n = _iterations_for(lambda k: ours(k, False), args)
    ab = interleaved(lambda: ours(n, False), lambda: ours(n, True), args.repeats)
    results = ab.pop("results")
    floor = interleaved(
        lambda: floor_ig_batched(observation, attack, n, restarts, clock=clock), lambda: ours(n, True), args.repeats
    )
    floor_results = floor.pop("results")
    sequential, batched = results["a"].objectives, results["b"].objectives
    finals = [sequential[r * n + n - 1] for r in range(restarts)]
    kept = min(range(restarts), key=finals.__getitem__)
    per_restart = floor_results["a"].extra["per_restart"]
    return {
        "model": model,
        "batch_size": batch_size,
        "restarts": restarts,
        "iterations": n,
        "sequential_s_per_iter": ab["a_s_per_iter"],
        "batched_s_per_iter": ab["b_s_per_iter"],
        "batched_over_sequential": ab["b_over_a"],
        "floor_batched_s_per_iter": floor["a_s_per_iter"],
        "batched_overhead_pct": 100 * (floor["b_over_a"] - 1),
        # float32: the first iteration agrees to rounding; signed Adam then lets the runs drift apart slowly
        "first_objective_rel_diff": relative(batched[0], sequential[kept * n]),
        "last_objective_rel_diff": relative(batched[-1], finals[kept]),
        "floor_first_objective_min_rel_diff": min(relative(batched[0], row[0]) for row in per_restart),
        "batched_memory": memory.result,
        "default_mode": "batched" if batch_size <= get_method_class("ig").batch_restarts_up_to else "sequential",
        "pairs": ab["pairs"],
    }


def exp_channels_last(args: argparse.Namespace, model: str, batch_size: int) -> dict[str, Any]:
    clock = Clock(args.clock)
    observation, attack = _setup("ig", model, batch_size, args)
    n = _iterations_for(lambda k: floor_ig(observation, attack, k, clock=clock), args)
    ab = interleaved(
        lambda: floor_ig(observation, attack, n, clock=clock),
        lambda: floor_ig(observation, attack, n, channels_last=True, clock=clock),
        args.repeats,
    )
    ab.pop("results")
    return {
        "model": model,
        "batch_size": batch_size,
        "iterations": n,
        "contiguous_s_per_iter": ab["a_s_per_iter"],
        "channels_last_s_per_iter": ab["b_s_per_iter"],
        "speedup_pct": 100 * (1 / ab["b_over_a"] - 1),
        "pairs": ab["pairs"],
    }


def exp_compile(args: argparse.Namespace, model: str, batch_size: int, try_model: bool = False) -> dict[str, Any]:
    """torch.compile of the model (double backward) and of the loss terms only, on IG's floor, and IG's
    ``compile_loss`` option through our code."""
    clock = Clock(args.clock)
    observation, attack = _setup("ig", model, batch_size, args)
    out: dict[str, Any] = {"model": model, "batch_size": batch_size}
    if try_model:
        try:
            floor_ig(observation, attack, 1, compile_model=True, clock=clock)
            out["compile_model"] = "ran"
        except Exception as error:  # the expected outcome: aot_autograd has no double backward
            out["compile_model"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        torch._dynamo.reset()
    try:
        start = time.perf_counter()
        floor_ig(observation, attack, 2, compile_loss=True, clock=clock)
        out["compile_loss_first_call_s"] = time.perf_counter() - start
        n = _iterations_for(lambda k: floor_ig(observation, attack, k, clock=clock), args)
        ab = interleaved(
            lambda: floor_ig(observation, attack, n, clock=clock),
            lambda: floor_ig(observation, attack, n, compile_loss=True, clock=clock),
            args.repeats,
        )
        ab.pop("results")
        out.update(
            iterations=n,
            eager_s_per_iter=ab["a_s_per_iter"],
            compiled_loss_s_per_iter=ab["b_s_per_iter"],
            speedup_pct=100 * (1 / ab["b_over_a"] - 1),
            pairs=ab["pairs"],
        )
    except Exception as error:
        out["compile_loss"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    try:  # the same option through our code: IG's compile_loss (compiled once per process and shape)
        start = time.perf_counter()
        run_ours(dataclasses.replace(attack, iterations=2, compile_loss=True), observation, clock)
        out["ours_compile_first_call_s"] = time.perf_counter() - start
        n = out.get("iterations") or _iterations_for(lambda k: floor_ig(observation, attack, k, clock=clock), args)
        ours = interleaved(
            lambda: run_ours(dataclasses.replace(attack, iterations=n), observation, clock),
            lambda: run_ours(dataclasses.replace(attack, iterations=n, compile_loss=True), observation, clock),
            args.repeats,
        )
        ours.pop("results")
        out.update(
            ours_eager_s_per_iter=ours["a_s_per_iter"],
            ours_compiled_s_per_iter=ours["b_s_per_iter"],
            ours_speedup_pct=100 * (1 / ours["b_over_a"] - 1),
        )
    except Exception as error:
        out["ours_compile_loss"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    return out


MALLOC_CELLS = (
    ("ig", "lenet", 1, 20),
    ("idlg", "convnet", 1, 10),
    ("ig", "convnet", 8, 10),
    ("gradinversion", "convnet", 8, 3),
    ("ig", "resnet18", 1, 3),
)


def malloc_probe(args: argparse.Namespace, method: str, model: str, batch_size: int, iterations: int) -> dict:
    """Ours in this process as it is (the caller picks the malloc setting): s/iteration, minor faults, peak RSS."""
    clock = Clock(args.clock)
    observation, attack = _setup(method, model, batch_size, args)
    run_ours(dataclasses.replace(attack, iterations=1), observation, clock)
    faults = minor_faults()
    with PeakMemory(observation.device) as memory:
        result = run_ours(dataclasses.replace(attack, iterations=iterations), observation, clock)
    return {
        "s_per_iter": result.seconds_per_iteration,
        "minor_faults_per_iter": (minor_faults() - faults) / iterations,
        "peak_mb": memory.result.get("peak_mb"),
    }


def exp_malloc(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Ours with glibc's default malloc vs tune_malloc(), alternating fresh child processes (CPU only)."""
    out = []
    for method, model, batch_size, iterations in MALLOC_CELLS:
        if method not in args.methods or method not in registered_methods():
            continue
        n = args.iterations or iterations
        runs: dict[str, list[dict]] = {"default": [], "tuned": []}
        pairs = min(args.repeats, 3)
        for r in range(pairs):
            for mode in ("default", "tuned") if r % 2 == 0 else ("tuned", "default"):
                status, payload = call_isolated(malloc_probe, (args, method, model, batch_size, n), args, malloc=mode)
                if status == "ok":
                    runs[mode].append(payload)
        if not runs["default"] or not runs["tuned"]:
            out.append({"method": method, "model": model, "batch_size": batch_size, "status": "failed"})
            continue
        entry = {"method": method, "model": model, "batch_size": batch_size, "iterations": n, "pairs": pairs}
        for mode, results in runs.items():
            entry[f"{mode}_s_per_iter"] = median([x["s_per_iter"] for x in results])
            entry[f"{mode}_minor_faults_per_iter"] = median([x["minor_faults_per_iter"] for x in results])
            entry[f"{mode}_peak_mb"] = median([x["peak_mb"] for x in results])
        entry["speedup_pct"] = 100 * (entry["default_s_per_iter"] / entry["tuned_s_per_iter"] - 1)
        out.append(entry)
    return out


def exp_loop_machinery(args: argparse.Namespace, iterations: int = 2000) -> list[dict[str, Any]]:
    """Fixed cost per iteration of methods.optimise (schedule, trace, checks, projection) on a 1-element problem.

    The objective is trivial, so what is left is the loop's own work: the microseconds it adds to every
    iteration whatever the model, against a hand-written loop doing the same optimiser steps.
    """
    from methods.optimise import OptimiserConfig, optimise

    clock = Clock(args.clock)
    device = torch.device(args.device)
    low, high = torch.full((1,), -0.5, device=device), torch.full((1,), 0.5, device=device)
    configs = {
        "adam_signed_step_clamp": OptimiserConfig(
            optimiser="adam", lr=0.1, iterations=iterations, signed=True, schedule="step"
        ),
        "lbfgs_2": OptimiserConfig(optimiser="lbfgs", lr=1.0, iterations=iterations, lbfgs_max_iter=2),
    }
    out = []
    for name, config in configs.items():

        def ours(config: OptimiserConfig = config) -> RunResult:
            x = torch.zeros(1, device=device, requires_grad=True)
            clamp = (lambda: x.clamp_(low, high)) if config.optimiser == "adam" else None
            start = clock()
            optimise(lambda: (x - 1).pow(2).sum(), [x], config, project=clamp)
            synchronise(device)
            return RunResult((clock() - start) / iterations, [])

        def floor(config: OptimiserConfig = config) -> RunResult:
            x = torch.zeros(1, device=device, requires_grad=True)
            values = []
            if config.optimiser == "adam":
                optimiser: torch.optim.Optimizer = torch.optim.Adam([x], lr=config.lr)
            else:
                optimiser = torch.optim.LBFGS([x], lr=config.lr, max_iter=config.lbfgs_max_iter)

            def closure() -> Tensor:
                optimiser.zero_grad(set_to_none=True)
                value = (x - 1).pow(2).sum()
                value.backward(inputs=[x])
                if config.signed:
                    x.grad.sign_()
                return value

            start = clock()
            for iteration in range(iterations):
                if config.optimiser == "adam":
                    optimiser.param_groups[0]["lr"] = config.lr * step_factor(iteration, iterations)
                values.append(optimiser.step(closure).detach())
                if config.optimiser == "adam":
                    with torch.no_grad():
                        x.clamp_(low, high)
            torch.stack(values)
            synchronise(device)
            return RunResult((clock() - start) / iterations, [])

        ab = interleaved(floor, ours, args.repeats)
        ab.pop("results")
        out.append(
            {
                "loop": name,
                "iterations": iterations,
                "floor_us_per_iter": 1e6 * ab["a_s_per_iter"],
                "ours_us_per_iter": 1e6 * ab["b_s_per_iter"],
                "machinery_us_per_iter": 1e6 * (ab["b_s_per_iter"] - ab["a_s_per_iter"]),
                "pairs": ab["pairs"],
            }
        )
    return out


def experiment_plan(args: argparse.Namespace) -> list[tuple[str, Callable[..., dict], tuple]]:
    chosen = set(args.experiments)
    plan: list[tuple[str, Callable[..., dict], tuple]] = []
    if "loss_form" in chosen:
        for method, model, batch_size in (
            ("dlg", "lenet", 1),
            ("idlg", "lenet", 1),
            ("idlg", "convnet", 1),
            ("idlg", "resnet18", 1),
            ("ig", "lenet", 1),
            ("ig", "resnet18", 1),
            ("gradinversion", "convnet", 8),
        ):
            if method in args.methods and method in FLOORS:
                plan.append(("loss_form", exp_loss_form, (model, batch_size, method)))
    if "backward_inputs" in chosen:
        for method, model, batch_size in (
            ("idlg", "lenet", 1),
            ("idlg", "convnet", 1),
            ("ig", "lenet", 1),
            ("ig", "convnet", 8),
            ("ig", "resnet18", 1),
        ):
            if method in args.methods and method in FLOORS:
                plan.append(("backward_inputs", exp_backward_inputs, (model, batch_size, method)))
    if "bn_stats" in chosen:
        plan.append(("bn_stats", exp_bn_stats, ("convnet", 8)))
        plan.append(("bn_stats", exp_bn_stats, ("resnet18", 1)))
    if "candidates" in chosen:
        for model, batch_size in (("convnet", 1), ("convnet", 8), ("lenet", 8)):
            plan.append(("candidates", exp_candidates, (model, batch_size)))
    if "restarts" in chosen:
        # the last: IG's paper profile (8 restarts) at the largest batch, for its memory
        for model, batch_size, restarts in (("lenet", 8, 4), ("convnet", 8, 4), ("convnet", 48, 8)):
            plan.append(("restarts", exp_restarts, (model, batch_size, restarts)))
    if "channels_last" in chosen:
        for model, batch_size in (("convnet", 8), ("convnet", 48), ("resnet18", 1)):
            plan.append(("channels_last", exp_channels_last, (model, batch_size)))
    if "compile" in chosen:
        for model, batch_size in (("lenet", 1), ("convnet", 8), ("resnet18", 1)):
            plan.append(("compile", exp_compile, (model, batch_size, model == "lenet")))
    return plan
