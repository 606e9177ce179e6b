"""Smoke test of ``python -m bench.perf``: it runs, writes the report, and its floor computes our objective.

No timing is asserted: the numbers depend on the machine. What must hold everywhere is that the
hand-written floor optimises the same objective as the shared code, from the same random draws.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

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


def test_quick_perf_writes_report_and_floor_matches(tmp_path):
    out = tmp_path / "perf.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.perf", "--quick", "--out", str(out)],
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
        # the floor is the same math: same objective at the first iteration, from the same seed
        assert math.isclose(cell["first_objective_ours"], cell["first_objective_floor"], rel_tol=1e-4), cell

    harness = report["harness"][0]
    assert {"sampling", "model", "client_update", "progress_call", "metrics", "records", "images"} <= set(
        harness["seconds"]
    )
    for share in report["trial_shares"]:
        assert math.isclose(sum(share["pct"].values()), 100, rel_tol=1e-6)
    assert "overhead_le_3pct" in report["targets"] and "metrics_inference_mode" in report["targets"]
    assert "ours ms/it" in done.stdout


def test_every_floor_computes_our_objective():
    # the floors are hand-written copies of each method's math; a change to the shared code that alters the
    # objective (not just its speed) must show up here, not as a silent "overhead" in the timing table
    from bench import perf

    for method in perf.METHODS:
        values = perf.first_objectives(method, "convnet", 2, iterations=2)
        ours, floor = values["ours"], values["floor"]
        assert len(ours) == len(floor) == 2
        assert all(math.isfinite(v) for v in ours + floor)
        assert math.isclose(ours[0], floor[0], rel_tol=2e-3), (method, ours, floor)
