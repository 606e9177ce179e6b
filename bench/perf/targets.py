"""The targets of docs/performance.md, checked against a run's report (``python -m bench.perf --check``).

Each target is ``met`` (True/False) when this run measured what it needs; a target whose measurement
was not part of the run (e.g. experiments skipped) is left out. ``--check`` exits non-zero when any
checked target is missed.
"""

from __future__ import annotations

import argparse
import math
import statistics
import warnings
from typing import Any
from unittest import mock

import torch

OVERHEAD_LIMIT_PCT = 3.0
PROGRESS_LIMIT_PCT = 2.0
CONVNET_B48_PEAK_LIMIT_MB = 2048


def scoring_builds_no_graph() -> dict[str, Any]:
    """Run ``bench.metrics.score`` on a reconstruction attached to an autograd graph, with an LPIPS network whose
    weights require grad: under inference mode no tensor is saved for backward, and the matching runs once."""
    from bench import metrics

    try:
        import lpips as lpips_package

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            network = lpips_package.LPIPS(net="alex", pnet_rand=True, verbose=False).eval()
    except Exception as error:  # lpips missing or broken: the check cannot run
        return {"checked": False, "reason": f"{type(error).__name__}: {error}"}
    generator = torch.Generator().manual_seed(0)
    variable = torch.rand((4, 3, 32, 32), generator=generator, requires_grad=True)
    reconstruction = variable * 1.0  # attached to a graph, as a method's output would be if not detached
    truth = torch.rand((4, 3, 32, 32), generator=generator)
    labels = torch.arange(4)
    saved = [0]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved[0] += 1
        return tensor

    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor),
        mock.patch.object(metrics, "match", wraps=metrics.match) as matched,
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")  # only a broken scoring would convert a graph-attached tensor
        scores = metrics.score(reconstruction, truth, labels, labels, metrics.LPIPSScorer(network))
    return {
        "checked": True,
        "tensors_saved_for_backward": saved[0],
        "match_calls": matched.call_count,
        "lpips_finite": math.isfinite(scores.lpips),
        "met": saved[0] == 0 and matched.call_count == 1 and math.isfinite(scores.lpips),
    }


def check_targets(report: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    targets: dict[str, Any] = {}
    measured = [
        c for c in report["cells"] if c.get("status") == "ok" and math.isfinite(c.get("overhead_pct", math.nan))
    ]
    failed = [f"{c['method']}/{c['model']}/B={c['batch_size']}" for c in report["cells"] if c.get("status") != "ok"]
    no_floor = [
        f"{c['method']}/{c['model']}/B={c['batch_size']}"
        for c in report["cells"]
        if c.get("status") == "ok" and not math.isfinite(c.get("overhead_pct", math.nan))
    ]
    over = [
        f"{c['method']}/{c['model']}/B={c['batch_size']}: {c['overhead_pct']:+.1f}%"
        for c in measured
        if c["overhead_pct"] > OVERHEAD_LIMIT_PCT
    ]
    if report["cells"]:
        targets["overhead_le_3pct"] = {
            "met": bool(measured) and not over and not failed,
            "cells": len(measured),
            "above": over,
            "failed_cells": failed,
            "cells_without_floor": no_floor,
        }
        noise = [c for c in measured if not math.isnan(c.get("aa_pct", math.nan))]
        if noise:  # --aa: the floor against itself; the target is not met or missed by this, only read with it
            band = [abs(c["aa_pct"]) for c in noise]
            targets["overhead_le_3pct"]["aa"] = {
                "cells": len(noise),
                "median_abs_pct": statistics.median(band),
                "above": [
                    f"{c['method']}/{c['model']}/B={c['batch_size']}: {c['aa_pct']:+.1f}%"
                    for c in noise
                    if abs(c["aa_pct"]) > OVERHEAD_LIMIT_PCT
                ],
            }
    progress = [s["pct"]["progress_scoring"] for s in report["trial_shares"]]
    if progress:
        targets["progress_scoring_le_2pct"] = {
            "met": max(progress) <= PROGRESS_LIMIT_PCT,
            "max_pct": max(progress),
            "score_every": args.score_every,
        }
    candidates = [e for e in report["experiments"].get("candidates", []) if "gN_over_N_runs" in e]
    if candidates:
        targets["gradinversion_candidates_cheaper_than_separate_runs"] = {
            "met": all(e["gN_over_N_runs"] < 1 for e in candidates),
            "gN_over_N_runs": {f"{e['model']}/B={e['batch_size']}": e["gN_over_N_runs"] for e in candidates},
        }
    restarts = [e for e in report["experiments"].get("restarts", []) if "batched_over_sequential" in e]
    if restarts:
        targets["ig_restarts_batched"] = {
            "met": all(e["batched_over_sequential"] < 1 for e in restarts if e["default_mode"] == "batched"),
            "note": "IG's R restarts as one tensor vs one after another, both through matching.invert; IG batches "
            "them up to batch_restarts_up_to images per client batch, and the target is checked there",
            "batched_over_sequential": {
                f"{e['model']}/B={e['batch_size']}": e["batched_over_sequential"] for e in restarts
            },
        }
    paper = report["experiments"].get("paper_memory", [])
    if paper:
        cells = paper[0]["cells"]
        targets["paper_profile_b48_predicted_within_budget"] = {
            "met": all(c["fits"] for c in cells),
            "budget_gb": cells[0]["budget_gb"],
            "predicted_gb": {f"{c['method']}/B={c['B']}": c["predicted_gb"] for c in cells},
            "schedule": {f"{c['method']}/B={c['B']}": c["schedule"] for c in cells},
        }
    scoring = report.get("scoring_check") or {}
    if scoring.get("checked"):
        targets["metrics_inference_mode"] = scoring
    b48 = [c for c in report["cells"] if c.get("status") == "ok" and c["model"] == "convnet" and c["batch_size"] == 48]
    if b48:
        peaks = {c["method"]: c["memory"].get("peak_mb") for c in b48}
        targets["convnet_b48_peak_le_2gb"] = {
            "met": all(p is not None and p <= CONVNET_B48_PEAK_LIMIT_MB for p in peaks.values()),
            "peak_mb": peaks,
            "measure": b48[0]["memory"].get("measure"),
        }
    return targets


def missed(targets: dict[str, Any]) -> list[str]:
    """Names of the checked targets that were not met."""
    return [name for name, target in targets.items() if not target.get("met")]
