"""The command line of ``python -m bench.perf``: the grid, the harness, the experiments, the report, the check."""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import methods
from bench.perf.cells import run_cell
from bench.perf.experiments import EXPERIMENTS, exp_loop_machinery, exp_malloc, experiment_plan
from bench.perf.harness import run_harness, trial_share
from bench.perf.isolate import call_isolated
from bench.perf.paper_memory import OPTIONAL_EXPERIMENTS, exp_paper_memory, paper_memory_text
from bench.perf.rounds import default_dataset, registered_methods
from bench.perf.tables import cell_table, experiments_text, machine_info, share_table
from bench.perf.targets import check_targets, missed, scoring_builds_no_graph
from bench.plugins import load_plugins
from bench.system import tune_malloc

MODELS = ("lenet", "convnet", "resnet18")
BATCH_SIZES = (1, 8, 48)
SCHEMA_VERSION = 2
DESCRIPTION = "Time every registered attack against a hand-written floor (docs/performance.md)."


def _names(values: Sequence[str] | None, default: Sequence[str]) -> list[str]:
    if not values:
        return list(default)
    return [v for value in values for v in value.split(",") if v]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.perf", description=DESCRIPTION)
    parser.add_argument("--methods", nargs="+", help="default: every registered attack (not the reference floors)")
    parser.add_argument("--models", nargs="+", help=f"default: {' '.join(MODELS)}")
    parser.add_argument("--batch-sizes", nargs="+", help="default: 1 8 48")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved ours/floor pairs per cell (default 5)")
    parser.add_argument("--iterations", type=int, help="iterations per timed run (default: sized by --target-seconds)")
    parser.add_argument("--target-seconds", type=float, default=0.4, help="aim for timed runs of about this long")
    parser.add_argument("--max-iterations", type=int, default=20)
    parser.add_argument(
        "--heavy-seconds",
        type=float,
        default=2.0,
        help="cells whose iteration takes longer are timed with three 1-iteration pairs (ResNet-18, B=48 ...)",
    )
    parser.add_argument(
        "--lbfgs-max-iter", type=int, default=2, help="L-BFGS evaluations per iteration for DLG/iDLG (default 2)"
    )
    parser.add_argument(
        "--no-mirror",
        dest="mirror",
        action="store_false",
        help="skip the mirror floor (the floor with the shared code's implementation choices)",
    )
    parser.add_argument(
        "--aa",
        action="store_true",
        help="also time the floor against itself in the same interleaving (A/A): each cell's noise band",
    )
    parser.add_argument(
        "--channels-last", action="store_true", help="IG floor: model and images in channels-last memory format"
    )
    parser.add_argument("--compile-loss", action="store_true", help="IG floor: torch.compile the distance + TV")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument(
        "--malloc",
        choices=("tuned", "default"),
        default="tuned",
        help="glibc malloc in the measuring processes: tuned (no mmap/trim churn, see tune_malloc) or default",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        help="attack timing: process CPU time (default on CPU with one thread) or wall time (default otherwise)",
    )
    parser.add_argument(
        "--experiments",
        nargs="*",
        help=f"default: all of {' '.join(EXPERIMENTS)}; none: none; "
        f"only when named: {' '.join(OPTIONAL_EXPERIMENTS)} (minutes)",
    )
    parser.add_argument("--no-harness", action="store_true", help="skip the per-trial harness breakdown")
    parser.add_argument("--no-fork", action="store_true", help="run cells in this process (peak memory less exact)")
    parser.add_argument("--score-every", type=int, default=None, help="default: the runner's (bench/config.py)")
    parser.add_argument("--quick", action="store_true", help="a seconds-long subset (used by the tests)")
    parser.add_argument("--out", default="results/perf.json", help="where to write the JSON report")
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when a target of docs/performance.md measured in this run is missed",
    )
    parser.add_argument("--plugins", nargs="+", default=[], help="modules or .py files that register methods first")
    args = parser.parse_args(argv)
    load_plugins(args.plugins)
    if args.quick:
        args.methods = args.methods or ["idlg", "ig"]
        args.models = args.models or ["lenet"]
        args.batch_sizes = args.batch_sizes or ["1"]
        args.iterations = args.iterations or 2
        args.repeats = 1
        if args.experiments is None:
            args.experiments = []
    args.methods = _names(args.methods, registered_methods())
    references = sorted(set(args.methods) & set(methods.list_methods()) - set(registered_methods()))
    if references:
        names = ", ".join(references)
        parser.error(f"{names}: a reference floor runs no iterations, nothing to time; leave it out of --methods")
    unknown_methods = set(args.methods) - set(registered_methods())
    if unknown_methods:
        parser.error(
            f"unknown method(s) {', '.join(sorted(unknown_methods))}; registered: {', '.join(registered_methods())}"
        )
    args.models = _names(args.models, MODELS)
    args.batch_sizes = [int(b) for b in _names(args.batch_sizes, [str(b) for b in BATCH_SIZES])]
    experiments = EXPERIMENTS if args.experiments is None else _names(args.experiments, [])
    args.experiments = [] if experiments == ["none"] else experiments
    unknown = set(args.experiments) - set(EXPERIMENTS) - set(OPTIONAL_EXPERIMENTS)
    if unknown:
        choices = ", ".join((*EXPERIMENTS, *OPTIONAL_EXPERIMENTS))
        parser.error(f"unknown experiment(s) {', '.join(sorted(unknown))}; choose from {choices}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda was asked for but CUDA is not available")
    if args.clock is None:
        args.clock = "cpu" if args.device == "cpu" and args.threads == 1 else "wall"
    if args.clock == "cpu" and not args.device.startswith("cpu"):
        parser.error("--clock cpu cannot time GPU work; use --clock wall with --device cuda")
    # fork gives each cell its own peak RSS; CUDA cannot be forked, and its allocator reports peaks itself
    args.fork = not args.no_fork and not args.device.startswith("cuda") and sys.platform.startswith("linux")
    if args.score_every is None:
        from bench.config import SETTINGS

        args.score_every = int(SETTINGS["score_every"].default)
    return args


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the grid, the harness and the experiments; print the tables; write the JSON report. With ``--check``,
    exit 1 when a measured target is missed."""
    args = parse_args(argv)
    # The parent stays single-threaded so forked children start without an OpenMP pool; they set --threads.
    torch.set_num_threads(1 if args.fork else args.threads)
    if not args.fork and args.malloc == "tuned":
        tune_malloc()
    started = time.perf_counter()
    report: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "machine": machine_info(args)}
    report["settings"] = {
        k: getattr(args, k)
        for k in (
            "methods",
            "models",
            "batch_sizes",
            "repeats",
            "iterations",
            "target_seconds",
            "max_iterations",
            "heavy_seconds",
            "lbfgs_max_iter",
            "threads",
            "malloc",
            "clock",
            "mirror",
            "aa",
            "channels_last",
            "compile_loss",
            "device",
            "experiments",
            "score_every",
            "quick",
            "fork",
            "check",
        )
    }
    start = time.perf_counter()
    default_dataset()  # loaded once here; forked children inherit it
    report["one_off"] = {"dataset_load_s": time.perf_counter() - start}
    # The floors step torch.optim.Adam, whose first step imports torch._dynamo (about 2 s of CPU). Paid in a cell's
    # 1-iteration warm-up, that import became its cost estimate, and the cell was timed with 1-2 iterations a run
    # instead of about --target-seconds. Imported once here, every forked cell inherits it.
    start = time.perf_counter()
    importlib.import_module("torch._dynamo")
    report["one_off"]["dynamo_import_s"] = time.perf_counter() - start

    cells = []
    for model in args.models:
        for batch_size in args.batch_sizes:
            for method in args.methods:
                status, payload = call_isolated(run_cell, (method, model, batch_size, args), args)
                cell = (
                    payload
                    if status == "ok"
                    else {
                        "method": method,
                        "model": model,
                        "batch_size": batch_size,
                        "status": "failed",
                        "reason": payload,
                    }
                )
                cells.append(cell)
                _log(
                    f"[perf] {method:>13} {model:>8} B={batch_size:<3} "
                    + (
                        f"ours {1000 * cell['ours_s_per_iter']:.4g} ms/it, floor "
                        f"{1000 * cell.get('floor_s_per_iter', math.nan):.4g} ms/it, "
                        f"overhead {cell.get('overhead_pct', math.nan):+.1f}%, "
                        + (f"A/A {cell['aa_pct']:+.1f}%, " if "aa_pct" in cell else "")
                        + f"peak {cell['memory'].get('peak_mb', 0):.0f} MB"
                        if cell.get("status") == "ok"
                        else f"{cell['status']}: {cell.get('reason', '').splitlines()[0]}"
                    )
                    + f"  [{time.perf_counter() - started:.0f} s]"
                )
    report["cells"] = cells

    harness = []
    if not args.no_harness:
        for model in args.models:
            for batch_size in args.batch_sizes:
                status, payload = call_isolated(run_harness, (model, batch_size, args), args)
                if status == "ok":
                    harness.append(payload)
                else:
                    harness.append({"model": model, "batch_size": batch_size, "status": "failed", "reason": payload})
        _log(f"[perf] harness pieces timed  [{time.perf_counter() - started:.0f} s]")
    report["harness"] = harness
    by_round = {(h["model"], h["batch_size"]): h for h in harness if "seconds" in h}
    shares = []
    for cell in cells:
        h = by_round.get((cell["model"], cell["batch_size"]))
        share = trial_share(cell, h, args.score_every) if h else None
        if share is not None:
            shares.append(share)
    report["trial_shares"] = shares

    experiments: dict[str, list[dict[str, Any]]] = {}
    if "malloc" in args.experiments and args.fork:
        experiments["malloc"] = exp_malloc(args)
        _log(f"[perf] experiment malloc  [{time.perf_counter() - started:.0f} s]")
    if "loop_machinery" in args.experiments:
        status, payload = call_isolated(exp_loop_machinery, (args,), args)
        experiments["loop_machinery"] = payload if status == "ok" else [{"status": "failed", "reason": payload}]
        _log(f"[perf] experiment loop_machinery  [{time.perf_counter() - started:.0f} s]")
    for name, fn, arguments in experiment_plan(args):
        status, payload = call_isolated(fn, (args, *arguments), args)
        entry = payload if status == "ok" else {"arguments": list(arguments), "status": "failed", "reason": payload}
        experiments.setdefault(name, []).append(entry)
        _log(f"[perf] experiment {name} {arguments}  [{time.perf_counter() - started:.0f} s]")
    if "paper_memory" in args.experiments:  # in this process: it forks its own measuring children
        experiments["paper_memory"] = [exp_paper_memory(args)]
        _log(f"[perf] experiment paper_memory  [{time.perf_counter() - started:.0f} s]")
    report["experiments"] = experiments
    report["scoring_check"] = scoring_builds_no_graph()
    report["targets"] = check_targets(report, args)
    try:
        report["machine"]["load_average_end"] = list(os.getloadavg())
    except OSError:
        pass
    report["total_seconds"] = time.perf_counter() - started

    print("\nPer-iteration time, ours vs the hand-written floor (medians; overhead = median of paired ratios)\n")
    print(cell_table(cells))
    if shares:
        print(f"\nHarness work per quick-profile trial, % of the trial (score_every={args.score_every})\n")
        print(share_table(shares))
    if experiments:
        print("\nExperiments" + experiments_text({k: v for k, v in experiments.items() if k != "paper_memory"}))
    if "paper_memory" in experiments:
        print(paper_memory_text(experiments["paper_memory"][0]))
    print("\nTargets")
    for name, target in report["targets"].items():
        print(f"  {name}: {'met' if target.get('met') else 'NOT met'}  {json.dumps(target, default=str)}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from bench import records

    out.write_text(json.dumps(json.loads(records.canonical_json(report)), indent=1) + "\n")
    print(f"\nwrote {out} in {report['total_seconds']:.0f} s")
    if args.check:
        failing = missed(report["targets"])
        if failing:
            print(f"check: {len(failing)} target(s) missed: {', '.join(failing)}", file=sys.stderr)
            sys.exit(1)
        print(f"check: all {len(report['targets'])} measured targets met", file=sys.stderr)
    return report
