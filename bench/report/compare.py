"""Two results folders compared: trials paired by (setting, seed, image), B − A per metric with CI and p-value."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from bench.report.columns import ALWAYS, AXES, AXIS_LABELS, GROUP, METRIC_INFO, METRICS, PER_IMAGE
from bench.report.order import sort_key
from bench.report.stats import CONFIDENCE, paired_difference, trial_units
from bench.report.tables import trials_table
from bench.report.values import format_cell, format_delta, format_p, format_value, md_escape, normalised

PAIR = (*GROUP, "seed")
STATS = ("a", "b", "delta", "ci_low", "ci_high", "p", "n")


def pair_units(trial_a: pd.Series, trial_b: pd.Series, metric: str) -> tuple[list[float], list[float]]:
    """The paired units of one metric: image i of A with image i of B where both hold per-image values."""
    a, b = trial_units(trial_a, metric), trial_units(trial_b, metric)
    if len(a) != len(b):  # one side per image, the other per trial: pair the trial means
        a, b = [float(trial_a[metric])], [float(trial_b[metric])]
    return a, b


def same_batch(trial_a: pd.Series, trial_b: pd.Series) -> bool:
    """Whether both trials saw the same batch (checked on the true labels where both records hold them)."""
    labels_a, labels_b = trial_a.get("true_labels"), trial_b.get("true_labels")
    return not (isinstance(labels_a, list) and isinstance(labels_b, list)) or labels_a == labels_b


def compare(a: Path | str, b: Path | str) -> pd.DataFrame:
    """Per setting, B − A for every metric over the paired units, with its 95% CI and Wilcoxon p-value.

    Trials pair on method, every grouping column (not only the swept ones, so a setting of A never meets
    a different dataset or model in B) and seed; images pair by their index in the batch. Columns
    ``<metric>_a``/``_b`` (means over the pairs), ``_delta``, ``_ci_low``/``_ci_high``, ``_p`` and ``_n``
    (pairs), then ``n_ok_a``, ``n_ok_b``, ``n_paired`` (trials). Reads only; writes nothing.
    """
    sides = []
    for folder in (a, b):
        trials = trials_table(folder)
        ok = trials[trials.status == "ok"]
        sides.append((trials, {tuple(normalised(v) for v in row[list(PAIR)]): row for _, row in ok.iterrows()}))
    settings = [{tuple(normalised(v) for v in row[list(GROUP)]) for _, row in t.iterrows()} for t, _ in sides]
    common = sorted(
        settings[0] & settings[1], key=lambda key: tuple(sort_key(c, v) for c, v in zip(GROUP, key, strict=True))
    )
    rows, mismatched = [], 0
    for setting in common:
        pairs = []
        for key, trial_a in sides[0][1].items():
            trial_b = sides[1][1].get(key)
            if key[:-1] != setting or trial_b is None:
                continue
            if not same_batch(trial_a, trial_b):
                mismatched += 1
                continue
            pairs.append((trial_a, trial_b))
        row: dict[str, Any] = dict(zip(GROUP, setting, strict=True))
        for metric in METRICS:
            units_a: list[float] = []
            units_b: list[float] = []
            for trial_a, trial_b in pairs:
                left, right = pair_units(trial_a, trial_b, metric)
                units_a += left
                units_b += right
            found = paired_difference(units_a, units_b)
            values = (found.mean_a, found.mean_b, found.delta, found.low, found.high, found.p, found.n)
            row.update({f"{metric}_{name}": value for name, value in zip(STATS, values, strict=True)})
        row["n_ok_a"], row["n_ok_b"] = (sum(k[:-1] == setting for k in side) for _, side in sides)
        row["n_paired"] = len(pairs)
        rows.append(row)
    columns = [*GROUP, *(f"{m}_{s}" for m in METRICS for s in STATS), "n_ok_a", "n_ok_b", "n_paired"]
    frame = pd.DataFrame(rows, columns=columns)
    frame.attrs["only_a"] = len(settings[0] - settings[1])
    frame.attrs["only_b"] = len(settings[1] - settings[0])
    frame.attrs["mismatched"] = mismatched
    return frame


def interval_text(low: float, high: float, metric: str) -> str:
    if math.isnan(low) or math.isnan(high):
        return "n/a"
    return f"[{format_delta(low, metric)}, {format_delta(high, metric)}]"


def metric_table(comparison: pd.DataFrame, metric: str, keys: Sequence[str]) -> str:
    per_image = f", images paired by index ({PER_IMAGE[metric]})" if metric in PER_IMAGE else ""
    header = [AXIS_LABELS[k][0] for k in keys]
    header += ["pairs", "A", "B", "Δ B − A", f"{CONFIDENCE:.0%} CI", "p (Wilcoxon)"]
    lines = [f"### {METRIC_INFO[metric][0]}\n", f"Pairs: trials by seed{per_image}.\n"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in comparison.iterrows():
        cells = [md_escape(format_value(row[k])) for k in keys]
        cells += [str(int(row[f"{metric}_n"]))]
        cells += [format_cell(row[f"{metric}_{side}"], math.nan, math.nan, metric) for side in ("a", "b")]
        cells += [format_delta(row[f"{metric}_delta"], metric)]
        cells += [
            interval_text(row[f"{metric}_ci_low"], row[f"{metric}_ci_high"], metric),
            format_p(row[f"{metric}_p"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown_comparison(comparison: pd.DataFrame, a: Path | str = "A", b: Path | str = "B") -> str:
    """B − A as one Markdown table per metric (grouping columns that vary, plus method, B and dup. ratio)."""
    only = f"{comparison.attrs.get('only_a', 0)} only in A, {comparison.attrs.get('only_b', 0)} only in B"
    head = f"B − A, A = {a}, B = {b}: {len(comparison)} settings in both ({only}).\n"
    if comparison.attrs.get("mismatched"):
        head += (
            f"\n{comparison.attrs['mismatched']} trial pairs left out: A and B drew different batches for the same "
            "setting and seed (their true labels differ), so their images cannot be paired.\n"
        )
    if comparison.empty:
        return head + "\nNo setting in common: nothing to compare.\n"
    head += (
        f"\nΔ is the mean paired difference, with its {CONFIDENCE:.0%} bootstrap CI (scipy, BCa) and the two-sided "
        "Wilcoxon signed-rank p-value (n/a where every difference is zero).\n"
    )
    keys = ["method", *(c for c in AXES if c in ALWAYS or len({normalised(v) for v in comparison[c]}) > 1)]
    shown = [m for m in METRICS if (comparison[f"{m}_n"] > 0).any()]
    return head + "".join("\n" + metric_table(comparison, m, keys) for m in shown)
