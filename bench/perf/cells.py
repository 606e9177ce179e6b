"""One cell of the grid: a registered method on one model and batch size, ours against its floor.

Ours, the floor and the mirror run interleaved (rotating order) in one process from the same seed,
after a warm-up of each; a method without a floor is timed alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
from typing import Any

import torch

import bench.perf.floors_batched  # noqa: F401  (registers the floors that need a vmapped pass)
from bench.perf.floors import FLOORS, Floor
from bench.perf.measure import Clock, PeakMemory, RunResult, median, minor_faults, paired, relative, timed
from bench.perf.rounds import build_attack, default_dataset, draw_round, has_batch_norm, label_strategy, run_ours

# options of a floor that the command line can switch on (the experiments measure them on their own)
FLOOR_FLAGS = ("channels_last", "compile_loss")


def compare_traces(
    method: str, model: str, batch_size: int, *, iterations: int = 4, device: str = "cpu", lbfgs_max_iter: int = 2
) -> dict[str, list[float]]:
    """Ours, the floor and the mirror from the same seed and round: their objective at every iteration."""
    device_ = torch.device(device)
    observation = draw_round(default_dataset(), model, batch_size, device_).observation
    attack = build_attack(
        method, iterations=iterations, model_has_bn=has_batch_norm(observation.model), lbfgs_max_iter=lbfgs_max_iter
    )
    clock = Clock("wall")
    floor = FLOORS[method]
    return {
        "ours": run_ours(attack, observation, clock).objectives,
        "floor": floor.run(observation, attack, iterations, clock=clock).objectives,
        "mirror": floor.run(observation, attack, iterations, clock=clock, **floor.mirror).objectives,
    }


def floor_options(floor: Floor, args: argparse.Namespace) -> dict[str, Any]:
    accepted = inspect.signature(floor.run).parameters
    return {flag: True for flag in FLOOR_FLAGS if flag in accepted and getattr(args, flag, False)}


def run_cell(method: str, model: str, batch_size: int, args: argparse.Namespace) -> dict[str, Any]:
    """Time ``method`` on ``model`` at ``batch_size``: ours against its floor (and mirror), memory, setup, labels."""
    device = torch.device(args.device)
    clock = Clock(args.clock)
    cell: dict[str, Any] = {"method": method, "model": model, "batch_size": batch_size}
    rnd = draw_round(default_dataset(), model, batch_size, device)
    observation = rnd.observation
    has_bn = has_batch_norm(observation.model)
    cell["dup_ratio"] = rnd.dup_ratio
    cell["round_seconds"] = rnd.seconds

    def attack_with(iterations: int) -> Any:
        return build_attack(method, iterations=iterations, model_has_bn=has_bn, lbfgs_max_iter=args.lbfgs_max_iter)

    probe = attack_with(1)
    cell["config"] = {k: v for k, v in dataclasses.asdict(probe).items()} if dataclasses.is_dataclass(probe) else {}
    if not has_bn and cell["config"].get("bn_weight") == 0:
        cell["note"] = "bn_weight=0: the model has no BatchNorm layers"
    floor = FLOORS.get(method)
    options = floor_options(floor, args) if floor is not None else {}
    if options:
        cell["floor_options"] = options

    # warm-up of ours (1 iteration), which also gives the peak memory and the cost estimate
    with PeakMemory(device) as memory:
        warm = run_ours(probe, observation, clock)
    cell["memory"] = memory.result
    estimate = warm.seconds_per_iteration
    cell["first_objective_ours"] = warm.objectives[0]
    if not warm.objectives:
        return cell | {"status": "no trace", "reason": "the method records no iterations, so there is nothing to time"}
    if floor is not None:
        floor_warm = floor.run(observation, probe, 1, clock=clock, **options)
        cell["first_objective_floor"] = floor_warm.objectives[0]
        cell["first_objective_rel_diff"] = relative(warm.objectives[0], floor_warm.objectives[0])
        cell["evaluations_per_iteration"] = floor_warm.evaluations
        estimate = max(estimate, floor_warm.seconds_per_iteration)

    heavy = args.iterations is None and estimate > args.heavy_seconds
    if args.iterations is not None:
        iterations = args.iterations
    elif heavy:
        iterations = 1
    else:
        iterations = int(min(max(math.ceil(args.target_seconds / max(estimate, 1e-6)), 2), args.max_iterations))
    # heavy cells (ResNet-18 at B=48 ...): after the warm-up pair, three 1-iteration pairs and no mirror; more
    # would take minutes (one pair alone once read +15% for a cell that 3 pairs of 2 iterations put at -0.9%)
    repeats = min(3, args.repeats) if heavy else args.repeats
    cell.update(iterations=iterations, heavy=heavy)

    times: dict[str, list[float]] = {"ours": [], "floor": [], "mirror": [], "floor_again": []}
    setups: list[float] = []
    ours_faults: list[float] = []
    last: dict[str, RunResult] = {}
    attack = attack_with(iterations)
    runners = ["ours"]
    if floor is not None:
        runners.append("floor")
        if args.mirror and not heavy:
            runners.append("mirror")
            floor.run(observation, probe, 1, clock=clock, **floor.mirror)  # its warm-up, as ours and the floor had
        if getattr(args, "aa", False):
            runners.append("floor_again")  # the same floor once more: ours vs floor cannot be told apart below this
    for r in range(repeats):
        order = runners[r % len(runners) :] + runners[: r % len(runners)]
        if r % 2:
            order.reverse()
        for who in order:
            if who == "ours":
                faults = minor_faults()
                result = run_ours(attack, observation, clock)
                ours_faults.append((minor_faults() - faults) / iterations)
                setups.append(result.call_seconds - result.seconds_per_iteration * iterations)
            elif who in ("floor", "floor_again"):
                result = floor.run(observation, attack, iterations, clock=clock, **options)
            else:
                result = floor.run(observation, attack, iterations, clock=clock, **floor.mirror)
            times[who].append(result.seconds_per_iteration)
            last[who] = result
    cell["repeats"] = repeats
    cell["ours_setup_s"] = median(setups)
    cell["ours_minor_faults_per_iter"] = median(ours_faults)
    if floor is not None:
        cell.update(paired(times["ours"], times["floor"]))
        if times["mirror"]:
            mirrored = paired(times["ours"], times["mirror"])
            form = paired(times["mirror"], times["floor"])
            cell["mirror"] = floor.mirror
            cell["mirror_s_per_iter"] = mirrored["floor_s_per_iter"]
            cell["loop_overhead_pct"] = mirrored["overhead_pct"]
            cell["implementation_cost_pct"] = form["overhead_pct"]
        if times["floor_again"]:
            again = paired(times["floor_again"], times["floor"])
            cell.update(aa_pct=again["overhead_pct"], aa_min_pct=again["overhead_min_pct"])
            cell["aa_max_pct"] = again["overhead_max_pct"]
        if "ours" in last and "floor" in last:
            pairs = zip(last["ours"].objectives, last["floor"].objectives, strict=False)
            cell["trajectory_max_rel_diff"] = max(relative(a, b) for a, b in pairs)
    else:
        cell.update(ours_s_per_iter=median(times["ours"]), floor_s_per_iter=math.nan, overhead_pct=math.nan)
        cell["note"] = (cell.get("note", "") + "; " if cell.get("note") else "") + "no floor written for this method"
    ours_times, floor_times = times["ours"], times["floor"]
    cell["mirror_s_per_iter_samples"] = times["mirror"]
    cell["ours_s_per_iter_samples"] = ours_times
    cell["floor_s_per_iter_samples"] = floor_times

    # one-off label inference of a real trial (the timing above used known labels)
    strategy = label_strategy(probe, batch_size)
    if strategy is not None:
        from methods.base import NotApplicableError
        from methods.labels import infer_labels

        hidden = dataclasses.replace(observation, labels=None)
        try:
            seconds, _ = timed(lambda: infer_labels(strategy, hidden), device, 3)
            cell["label_inference"] = {"strategy": strategy, "seconds": seconds}
        except NotApplicableError as error:
            cell["label_inference"] = {"strategy": strategy, "seconds": 0.0, "not_applicable": str(error)}
    cell["status"] = "ok"
    return cell
