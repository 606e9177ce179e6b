"""Time to a reference's quality: when each method's scored progress first reaches a reference's final PSNR.

``python -m bench.report DIR --time-to ig``: for every method and every (setting, seed) that the reference
method also ran, the attack time at which the method's scored progress (``progress`` rows of
[iteration, seconds, psnr]) first reaches the reference's final PSNR, divided by the reference's attack
time; medians over seeds. Progress is scored only every ``score_every`` iterations, so a time is the
first scored point at or above the target: rounded up by at most one scoring interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from bench.errors import UserError
from bench.report.columns import ALWAYS, AXES, AXIS_LABELS
from bench.report.order import is_reference
from bench.report.tables import groups
from bench.report.values import format_value, normalised, progress_points

PAIR_AXES = tuple(c for c in AXES if c != "variant")  # the reference's variant need not match the method's
PER_TRIAL = (
    "reference_psnr",
    "reference_seconds",
    "reached_iteration",
    "reached_seconds",
    "ratio",
    "psnr",
    "score_every",
    "scored_seconds",
)


def first_reach(points: Sequence[tuple[float, float, float]], target: float) -> tuple[float, float]:
    """(iteration, seconds) of the first scored point with PSNR >= ``target``; (inf, inf) if none reaches it."""
    for iteration, seconds, value in points:
        if value >= target:
            return iteration, seconds
    return math.inf, math.inf


def scoring_interval(points: Sequence[tuple[float, float, float]]) -> tuple[float, float]:
    """Iterations and median attack seconds between scored points (the first point counts from zero)."""
    iterations = np.diff([0.0, *(p[0] for p in points)])
    seconds = np.diff([0.0, *(p[1] for p in points)])
    positive = iterations[iterations > 0]
    return (float(positive.min()) if len(positive) else math.nan), (
        float(np.median(seconds)) if len(seconds) else math.nan
    )


def time_to_trials(trials: pd.DataFrame, reference: str) -> pd.DataFrame:
    """One row per (method trial, reference trial) pair on the same setting and seed."""
    ok = trials[trials.status == "ok"]
    references = ok[ok.method == reference]
    if references.empty:
        methods = ", ".join(sorted({str(m) for m in ok.method})) or "none"
        raise UserError(f"no ok trial of method {reference!r} to time against; methods here: {methods}")
    by_key: dict[tuple, pd.Series] = {}
    for _, row in references.iterrows():
        key = tuple(normalised(row[c]) for c in (*PAIR_AXES, "seed"))
        if key in by_key:
            raise UserError(
                f"{reference!r} ran twice on one setting and seed (variants: {row.variant!r}, "
                f"{by_key[key].variant!r}); time against a folder with one {reference!r} per setting"
            )
        by_key[key] = row
    rows = []
    for _, trial in ok.iterrows():
        reference_trial = by_key.get(tuple(normalised(trial[c]) for c in (*PAIR_AXES, "seed")))
        if trial.method == reference or is_reference(trial.method) or reference_trial is None:
            continue
        points = progress_points(trial.progress)
        target, budget = reference_trial.psnr, reference_trial.attack_seconds
        iteration, seconds = first_reach(points, target) if points else (math.nan, math.nan)
        every, scored_seconds = scoring_interval(points)
        values = (target, budget, iteration, seconds, seconds / budget, trial.psnr, every, scored_seconds)
        rows.append({c: trial[c] for c in ("method", *AXES, "seed")} | dict(zip(PER_TRIAL, values, strict=True)))
    return pd.DataFrame(rows, columns=["method", *AXES, "seed", *PER_TRIAL])


def time_to_table(trials: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Per method and setting: medians over seeds of the reference's PSNR and time, the time to reach it, the ratio.

    A seed whose progress never reaches the target counts as an infinite time (so the median is infinite
    when most seeds never reach it); a trial without scored progress is left out of the time and ratio.
    """
    paired = time_to_trials(trials, reference)
    axes = [c for c in AXES if c in ALWAYS or len({normalised(v) for v in trials[c]}) > 1]
    keys = ["method", *axes]
    rows = []
    for values, labels in groups(paired, keys).items():
        group = paired.loc[labels]
        scored = group[group.reached_seconds.notna()]
        every = sorted({v for v in group.score_every if math.isfinite(v)})
        row: dict[str, Any] = dict(zip(keys, values, strict=True))
        row |= {
            "seeds": len(group),
            "reference_psnr": group.reference_psnr.median(),
            "reference_seconds": group.reference_seconds.median(),
            "reached_seconds": float(np.median(scored.reached_seconds)) if len(scored) else math.nan,
            "ratio": float(np.median(scored.ratio)) if len(scored) else math.nan,
            "reached": int(np.isfinite(scored.reached_seconds).sum()),
            "psnr": group.psnr.median(),
            "final_at_least_reference": int((group.psnr >= group.reference_psnr).sum()),
            "score_every": every[0] if len(every) == 1 else math.nan,
            "scored_seconds": float(np.median(group.scored_seconds.dropna()))
            if group.scored_seconds.notna().any()
            else math.nan,
        }
        rows.append(row)
    table = pd.DataFrame(rows)
    table.attrs["reference"] = reference
    table.attrs["score_every"] = sorted({v for v in paired.score_every if math.isfinite(v)})
    return table


def seconds_text(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return "never" if math.isinf(value) else f"{value:.3g}"


def markdown_time_to(table: pd.DataFrame) -> str:
    reference = table.attrs.get("reference", "the reference")
    every = table.attrs.get("score_every", [])
    resolution = ", ".join(f"{v:g}" for v in every) or "unknown (no scored progress)"
    head = (
        f"Time for each method's scored progress to first reach `{reference}`'s final PSNR on the same setting and "
        f"seed, divided by `{reference}`'s attack time; medians over seeds. Scoring resolution: progress scored every "
        f"{resolution} iterations (`score_every`; median seconds between scored points in the table), so each time "
        'is rounded up to the next scored point. "never": not reached within the method\'s own budget.\n'
    )
    if table.empty:
        return head + f"\nNo method shares a setting and seed with `{reference}`.\n"
    keys = [c for c in table.columns if c == "method" or c in AXES]
    header = [AXIS_LABELS[k][0] for k in keys] + [
        "seeds",
        f"{reference} final PSNR",
        f"{reference} time (s)",
        "reaches it at (s)",
        f"time / {reference}'s",
        "reached",
        "final PSNR",
        f"final ≥ {reference}",
        "scored every (it, s)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        cells = [format_value(row[k]) for k in keys] + [
            str(row.seeds),
            f"{row.reference_psnr:.2f}",
            seconds_text(row.reference_seconds),
            seconds_text(row.reached_seconds),
            "never" if math.isinf(row.ratio) else ("n/a" if math.isnan(row.ratio) else f"{row.ratio:.2f}"),
            f"{row.reached}/{row.seeds}",
            f"{row.psnr:.2f}",
            f"{row.final_at_least_reference}/{row.seeds}",
            f"{format_value(row.score_every)}, {seconds_text(row.scored_seconds)}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n" + "\n".join(lines) + "\n"
