"""``python -m bench.perf``: it runs, writes the report, times any registered method, checks its targets, and its
floors follow our whole trace.

No timing is asserted: the numbers depend on the machine (``--check`` on a full run checks them). What must
hold everywhere is that each hand-written floor optimises the same objective as the shared code, iteration
after iteration, from the same random draws.
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bench.perf.cells import compare_traces
from bench.perf.floors import FLOORS
from bench.perf.measure import relative
from bench.perf.targets import check_targets, missed, scoring_builds_no_graph

REPO = Path(__file__).resolve().parents[1]
CELL_KEYS = {
    "method",
    "model",
    "batch_size",
    "dup_ratio",
    "status",
    "iterations",
    "repeats",
    "ours_s_per_iter",
    "floor_s_per_iter",
    "overhead_pct",
    "memory",
    "first_objective_ours",
    "first_objective_floor",
    "first_objective_rel_diff",
}
TRACE_ITERATIONS = 4  # covers IG's LR steps, AFGI's second stage (from iteration 1) and GradInversion's noise
NOT_BITWISE_RTOL = 1e-3


def test_quick_perf_writes_report_and_floor_matches(tmp_path):
    out = tmp_path / "perf.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.perf", "--quick", "--aa", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert {"machine", "settings", "cells", "harness", "trial_shares", "experiments", "targets"} <= set(report)
    assert report["machine"]["torch"] and report["settings"]["quick"] is True

    cells = report["cells"]
    assert {c["method"] for c in cells} == {"idlg", "ig"}
    for cell in cells:
        assert cell["status"] == "ok", cell.get("reason")
        assert CELL_KEYS <= set(cell), CELL_KEYS - set(cell)
        assert cell["ours_s_per_iter"] > 0 and cell["floor_s_per_iter"] > 0
        assert cell["memory"]["peak_mb"] > 0
        assert math.isclose(cell["first_objective_ours"], cell["first_objective_floor"], rel_tol=NOT_BITWISE_RTOL)
        # --aa: the floor timed once more in the same rounds, against itself
        assert len(cell["floor_s_per_iter_samples"]) == cell["repeats"] and math.isfinite(cell["aa_pct"])

    harness = report["harness"][0]
    assert {"sampling", "model", "client_update", "progress_call", "metrics", "records", "images"} <= set(
        harness["seconds"]
    )
    assert "overhead_le_3pct" in report["targets"]
    assert report["targets"]["metrics_inference_mode"]["met"] is True
    assert "ours ms/it" in done.stdout and "A/A " in done.stderr  # the per-cell progress lines


@pytest.mark.parametrize("method", sorted(FLOORS))
def test_floor_follows_our_whole_trace(method):
    # the floors are hand-written copies of each method's math; a change to the shared code that alters the
    # objective (not just its speed) at any iteration must show up here, not as a silent "overhead"
    traces = compare_traces(method, "convnet", 2, iterations=TRACE_ITERATIONS)
    ours, floor, mirror = traces["ours"], traces["floor"], traces["mirror"]
    assert len(ours) == len(floor) == len(mirror) == TRACE_ITERATIONS
    assert all(math.isfinite(v) for v in ours)
    assert len(set(ours)) > 1, "the objective never moved: the trace compares nothing"
    if FLOORS[method].bitwise:
        assert floor == ours, (method, ours, floor)
    else:
        # the floor sums the cosine per layer, ours over one concatenation: float summation order only
        assert max(relative(a, b) for a, b in zip(ours, floor, strict=True)) <= NOT_BITWISE_RTOL, (ours, floor)
    # with the shared code's implementation choices the floor is our computation bit for bit
    assert mirror == ours, (method, ours, mirror)


def test_scoring_check_fails_when_scoring_builds_a_graph(monkeypatch):
    assert scoring_builds_no_graph()["met"] is True
    # scoring without inference mode: LPIPS's network (weights require grad) now saves tensors for backward
    monkeypatch.setattr(torch, "inference_mode", contextlib.nullcontext)
    broken = scoring_builds_no_graph()
    assert broken["met"] is False and broken["tensors_saved_for_backward"] > 0


def test_check_targets_flags_a_cell_over_the_floor():
    cell = {"method": "ig", "model": "lenet", "batch_size": 1, "status": "ok", "memory": {}}
    report = {"cells": [cell | {"overhead_pct": 1.0}], "trial_shares": [], "experiments": {}}
    args = type("Args", (), {"score_every": 25})()
    assert missed(check_targets(report, args)) == []
    report["cells"].append(cell | {"model": "convnet", "overhead_pct": 3.4})
    targets = check_targets(report, args)
    assert missed(targets) == ["overhead_le_3pct"]
    assert targets["overhead_le_3pct"]["above"] == ["ig/convnet/B=1: +3.4%"]
    # an A/A band (--aa) is reported beside the target and does not change whether it is met
    report["cells"] = [cell | {"overhead_pct": 1.0, "aa_pct": -0.5}, cell | {"overhead_pct": 3.4, "aa_pct": 4.0}]
    targets = check_targets(report, args)
    assert missed(targets) == ["overhead_le_3pct"]
    assert targets["overhead_le_3pct"]["aa"] == {"cells": 2, "median_abs_pct": 2.25, "above": ["ig/lenet/B=1: +4.0%"]}


def test_a_newly_registered_method_is_timed_without_an_entry_and_check_exits_nonzero(tmp_path):
    # a plug-in method registered in its own file gets a cell through the shared code, with no floor; alone in the
    # run it leaves the overhead target with nothing measured, which --check reports as missed (exit 1)
    plugin = tmp_path / "my_attack.py"
    plugin.write_text(
        textwrap.dedent(
            """
            from dataclasses import dataclass
            from typing import ClassVar

            from methods import register_method
            from methods.ig import InvertingGradients


            @register_method()
            @dataclass
            class MyAttack(InvertingGradients):
                name: ClassVar[str] = "my_attack"
            """
        )
    )
    out = tmp_path / "perf.json"
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); import my_attack; from bench.perf.cli import main; "
        "main(sys.argv[2:])"
    )
    arguments = ["--methods", "my_attack", "--models", "lenet", "--batch-sizes", "1", "--iterations", "2"]
    arguments += ["--repeats", "1", "--experiments", "none", "--no-harness", "--check", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), *arguments],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert "check: 1 target(s) missed: overhead_le_3pct" in done.stderr
    (cell,) = json.loads(out.read_text())["cells"]
    assert cell["status"] == "ok" and cell["ours_s_per_iter"] > 0
    assert cell["floor_s_per_iter"] is None or not math.isfinite(cell["floor_s_per_iter"])
    assert "no floor" in cell["note"]
    assert json.loads(out.read_text())["targets"]["overhead_le_3pct"]["cells_without_floor"] == ["my_attack/lenet/B=1"]


def test_reference_floors_get_no_cell_and_naming_one_is_a_one_line_error(capsys, tmp_path):
    # mean and noise run no iterations: a default grid leaves them out, and --methods mean says why (exit 2)
    from bench.perf.cli import main
    from bench.perf.rounds import registered_methods

    assert {"dlg", "idlg", "ig", "gradinversion", "afgi"} <= set(registered_methods())
    assert not {"mean", "noise"} & set(registered_methods())
    with pytest.raises(SystemExit) as exited:
        # a grid that ends in seconds if the refusal is ever lost (DID NOT RAISE, not a run of many minutes)
        small = ["--models", "lenet", "--batch-sizes", "1", "--iterations", "2", "--repeats", "1", "--no-harness"]
        main(["--methods", "mean", "ig", "--experiments", "none", "--out", str(tmp_path / "p.json"), *small])
    assert exited.value.code == 2
    assert "mean: a reference floor runs no iterations, nothing to time" in capsys.readouterr().err
