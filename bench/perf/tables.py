"""What a perf run prints: the machine, the grid table, the harness shares and the experiments."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
from collections.abc import Sequence
from typing import Any

import torch


def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": args.threads,
        "device": args.device,
        "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
    }
    try:
        info["load_average_start"] = list(os.getloadavg())
    except OSError:
        pass
    return info


def fmt(value: Any, spec: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def cell_table(cells: Sequence[dict[str, Any]]) -> str:
    headers = [
        "method",
        "model",
        "B",
        "r",
        "iters x pairs",
        "ours ms/it",
        "floor ms/it",
        "overhead %",
        "paired range %",
        "best vs best %",
        "mirror ms/it",
        "loop %",
        "impl %",
        "peak / attack MB",
        "note",
    ]
    rows = []
    for c in cells:
        if c.get("status") != "ok":
            reason = c.get("reason", c.get("status", "")).splitlines()[0][:80]
            rows.append([c["method"], c["model"], str(c["batch_size"])] + ["-"] * (len(headers) - 4) + [reason])
            continue
        memory = c.get("memory", {})
        spread = "-"
        if math.isfinite(c.get("overhead_min_pct", math.nan)) and c.get("repeats", 0) > 1:
            spread = f"{c['overhead_min_pct']:+.1f}..{c['overhead_max_pct']:+.1f}"
        rows.append(
            [
                c["method"],
                c["model"],
                str(c["batch_size"]),
                fmt(c.get("dup_ratio"), ".2f"),
                f"{c['iterations']}x{c['repeats']}",
                fmt(1000 * c.get("ours_s_per_iter", math.nan), ".4g"),
                fmt(1000 * c.get("floor_s_per_iter", math.nan), ".4g"),
                fmt(c.get("overhead_pct"), "+.1f"),
                spread,
                fmt(c.get("overhead_best_pct"), "+.1f"),
                fmt(1000 * c.get("mirror_s_per_iter", math.nan), ".4g"),
                fmt(c.get("loop_overhead_pct"), "+.1f"),
                fmt(c.get("implementation_cost_pct"), "+.1f"),
                fmt(memory.get("peak_mb"), ".0f") + " / " + fmt(memory.get("increase_mb"), ".0f"),
                c.get("note", ""),
            ]
        )
    return markdown_table(headers, rows)


def share_table(shares: Sequence[dict[str, Any]]) -> str:
    keys = ("sampling", "model", "client_update", "progress_scoring", "metrics", "lpips", "records", "images")
    rows = [
        [s["method"], s["model"], str(s["batch_size"]), str(s["profile_iterations"]), fmt(s["trial_s"], ".3g")]
        + [fmt(s["pct"][k], ".2f") for k in keys]
        + [fmt(s["harness_pct"], ".2f")]
        for s in shares
    ]
    headers = ["method", "model", "B", "iters", "trial s", *[f"{k} %" for k in keys], "harness %"]
    return markdown_table(headers, rows)


def experiments_text(experiments: dict[str, list[dict[str, Any]]]) -> str:
    out = []
    for name, entries in experiments.items():
        out.append(f"\n{name}:")
        for e in entries:
            shown = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in e.items()}
            out.append("  " + json.dumps(shown, default=str))
    return "\n".join(out)
