"""Tables from trial records: one row per trial, and per method and setting a summary with 95% CIs."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.records import load_records
from bench.report.columns import (
    ALWAYS,
    AXES,
    AXIS_LABELS,
    DEFAULT_SUCCESS_PSNR,
    DETAIL_COLUMNS,
    METRIC_INFO,
    METRICS,
    ORACLE,
    PER_IMAGE,
    STATISTICS,
    STATUSES,
    SUCCESS,
    TRIAL_COLUMNS,
    mean_column,
)
from bench.report.order import sort_key
from bench.report.stats import statistic_interval, success_rate, trial_units, units
from bench.report.values import as_number, as_numbers, format_cell, format_value, latex_escape, md_escape, normalised

NUMERIC = (*METRICS, SUCCESS, ORACLE, "trial_seconds", "success_psnr")


def record_config(record: Mapping[str, Any]) -> Mapping[str, Any]:
    config = record.get("config")
    return config if isinstance(config, Mapping) else {}


def success_threshold(record: Mapping[str, Any], override: float | None = None) -> float:
    """The success threshold in dB: ``override``, else the record's (its config's) ``success_psnr``, else 20."""
    if override is not None:
        return float(override)
    for source in (record_config(record), record):
        value = as_number(source.get("success_psnr"))
        if math.isfinite(value):
            return value
    return DEFAULT_SUCCESS_PSNR


def trial_row(record: Mapping[str, Any], variant: str, success_psnr: float | None = None) -> dict[str, Any]:
    row = {column: record.get(column) for column in (*TRIAL_COLUMNS, *DETAIL_COLUMNS)}
    row["variant"] = variant
    if row["client_mode"] is None:  # the record keeps it only inside its config
        row["client_mode"] = record_config(record).get("client_mode")
    oracle = record.get(ORACLE)
    if isinstance(oracle, (list, tuple)):  # per image rather than per batch
        row[PER_IMAGE[ORACLE]] = row[PER_IMAGE[ORACLE]] or oracle
        oracle = float(np.mean(as_numbers(oracle))) if oracle else math.nan
    row[ORACLE] = oracle
    for column in PER_IMAGE.values():
        row[column] = as_numbers(row[column])
    row["success_psnr"] = success_threshold(record, success_psnr)
    for column in (*METRICS, ORACLE, "trial_seconds"):
        row[column] = as_number(row[column])
    row[SUCCESS] = success_rate(trial_units(row, "psnr"), row["success_psnr"]) if row["status"] == "ok" else math.nan
    return row


def method_options(record: Mapping[str, Any]) -> dict[str, Any]:
    options = record_config(record).get("method")
    options = options if isinstance(options, Mapping) else {}
    return {k: v for k, v in options.items() if k not in ("name", "iterations")}


def variants(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Per record, the method options that differ between records of the same method (e.g. an ablation)."""
    by_method: dict[Any, list[dict[str, Any]]] = {}
    options = [method_options(r) for r in records]
    for record, option in zip(records, options, strict=True):
        by_method.setdefault(record.get("method"), []).append(option)
    varying = {
        method: sorted(k for k in {k for o in found for k in o} if len({repr(o.get(k)) for o in found}) > 1)
        for method, found in by_method.items()
    }
    return [
        ", ".join(f"{k}={option.get(k)}" for k in varying[record.get("method")])
        for record, option in zip(records, options, strict=True)
    ]


def trials_frame(records: Sequence[Mapping[str, Any]], success_psnr: float | None = None) -> pd.DataFrame:
    """One row per record: the columns of trials.csv, plus the per-image lists and progress behind them."""
    rows = sorted(
        (trial_row(r, v, success_psnr) for r, v in zip(records, variants(records), strict=True)),
        key=lambda row: tuple(sort_key(c, normalised(row[c])) for c in (*AXES, "method", "seed")),
    )
    columns = (*TRIAL_COLUMNS, *DETAIL_COLUMNS)
    # object dtype keeps integers as integers next to missing values (a float column would print 1.0)
    return pd.DataFrame(
        {c: pd.Series([row[c] for row in rows], dtype=float if c in NUMERIC else object) for c in columns}
    )


def trials_table(out_dir: Path | str, success_psnr: float | None = None) -> pd.DataFrame:
    """One row per trial (every status); metrics are floats (NaN when absent)."""
    return trials_frame(load_records(Path(out_dir)), success_psnr)


def trials_csv(trials: pd.DataFrame) -> str:
    return trials[list(TRIAL_COLUMNS)].to_csv(index=False)


def swept_axes(trials: pd.DataFrame) -> list[str]:
    """The grouping columns besides method: those that vary, plus batch size and duplicate ratio always."""
    return [c for c in AXES if c in ALWAYS or len({normalised(v) for v in trials[c]}) > 1]


def groups(frame: pd.DataFrame, columns: Sequence[str]) -> dict[tuple, list[Any]]:
    """Row labels by the values of ``columns``, in display order (missing values form their own group)."""
    found: dict[tuple, list[Any]] = {}
    for label, values in zip(frame.index, frame[list(columns)].itertuples(index=False, name=None), strict=True):
        found.setdefault(tuple(normalised(v) for v in values), []).append(label)
    # settings first, method last: rows of one setting sit together, so methods compare at a glance
    order = sorted(columns, key=lambda c: c == "method")
    positions = [list(columns).index(c) for c in order]
    return dict(
        sorted(found.items(), key=lambda kv: tuple(sort_key(order[i], kv[0][p]) for i, p in enumerate(positions)))
    )


def seed_std(values: pd.Series) -> float:
    """The sample std over seeds; undefined for one seed (NaN), never a made-up zero."""
    values = values.dropna()
    return float(values.std(ddof=1)) if len(values) > 1 and math.isfinite(values.mean()) else math.nan


def summary_columns(keys: Sequence[str]) -> list[str]:
    columns = list(keys)
    for statistic in STATISTICS:
        columns.append(mean_column(statistic))
        if statistic in METRICS:
            columns.append(f"{statistic}_std")
        columns += [f"{statistic}_ci_low", f"{statistic}_ci_high"]
    return [*columns, "success_psnr", "n_images", *(f"n_{s}" for s in STATUSES)]


def summary_table(trials: pd.DataFrame, axes: Sequence[str] | None = None) -> pd.DataFrame:
    """Per method and setting: each statistic's mean and 95% CI (ok trials only), and trial counts by status.

    ``axes`` are the grouping columns besides method (default: :func:`swept_axes`).
    """
    axes = list(swept_axes(trials) if axes is None else axes)
    keys = ["method", *axes]
    rows = []
    for values, labels in groups(trials, keys).items():
        group = trials.loc[labels]
        ok = group[group.status == "ok"]
        row: dict[str, Any] = dict(zip(keys, values, strict=True))
        for statistic in STATISTICS:
            found = statistic_interval(ok, statistic)
            row[mean_column(statistic)] = found.mean
            row[f"{statistic}_ci_low"], row[f"{statistic}_ci_high"] = found.low, found.high
            if statistic in METRICS:
                row[f"{statistic}_std"] = seed_std(ok[statistic])
        thresholds = set(ok["success_psnr"].dropna())
        row["success_psnr"] = thresholds.pop() if len(thresholds) == 1 else math.nan
        row["n_images"] = sum(not math.isnan(v) for v in units(ok, "psnr"))
        for status in STATUSES:
            row[f"n_{status}"] = int((group.status == status).sum())
        rows.append(row)
    frame = pd.DataFrame(rows, columns=summary_columns(keys))
    for column in keys:
        frame[column] = frame[column].astype(object)
    return frame


def shown_statistics(summary: pd.DataFrame) -> list[str]:
    # a statistic with no value anywhere (LPIPS without its weights) would be a column of n/a
    if not len(summary):
        return list(STATISTICS)
    return [s for s in STATISTICS if mean_column(s) in summary and summary[mean_column(s)].notna().any()]


def key_columns(summary: pd.DataFrame) -> list[str]:
    statistic_columns = set(summary_columns([]))
    return [c for c in summary.columns if c not in statistic_columns]


def statistic_label(summary: pd.DataFrame, statistic: str, latex: bool = False) -> str:
    label = METRIC_INFO[statistic][1 if latex else 0]
    if statistic == SUCCESS:
        thresholds = set(summary["success_psnr"].dropna()) if "success_psnr" in summary else set()
        if len(thresholds) == 1:
            sign = r"$\geq$" if latex else "≥"
            label += f" ({sign} {thresholds.pop():g} dB)"
    return label


def cells(row: pd.Series, shown: Sequence[str], pm: str = " ± ") -> list[str]:
    """Mean ± half the CI's width; the success rate as ``share [low, high]``, since Wilson's interval is
    asymmetric near 0 and 1 (``0.00 ± 0.28`` would suggest negative shares)."""
    found = []
    for s in shown:
        mean, low, high = row[mean_column(s)], row[f"{s}_ci_low"], row[f"{s}_ci_high"]
        if s == SUCCESS and not math.isnan(as_number(mean)) and math.isfinite(as_number(high) - as_number(low)):
            found.append(f"{mean:.2f} [{low:.2f}, {high:.2f}]")
        else:
            found.append(format_cell(mean, low, high, s, pm=pm))
    return found


def markdown_summary(summary: pd.DataFrame) -> str:
    """The summary as a Markdown table: mean ± half-width of the 95% CI (the mean alone where it is undefined)."""
    if summary.empty:
        return "_No trials._\n"
    keys = key_columns(summary)
    shown = shown_statistics(summary)
    header = [AXIS_LABELS.get(k, (k, k))[0] for k in keys] + [statistic_label(summary, s) for s in shown]
    header += ["images", "ok", "failed", "skipped"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in summary.iterrows():
        values = [md_escape(format_value(row[k])) for k in keys] + cells(row, shown)
        values += [str(row.n_images), *(str(row[f"n_{s}"]) for s in STATUSES)]
        lines.append("| " + " | ".join(values) + " |")
    missing = [METRIC_INFO[m][0] for m in STATISTICS if m not in shown]
    note = f"\n_Not shown, no values: {', '.join(missing)}._\n" if missing else ""
    return "\n".join(lines) + "\n" + note


def latex_summary(summary: pd.DataFrame) -> str:
    """The summary as a booktabs ``tabular`` to ``\\input`` inside a paper's ``table`` environment."""
    head = (
        "% gia-bench summary: mean $\\pm$ half-width of the 95% bootstrap CI over images x seeds (ok trials); "
        "success rate [95% Wilson interval]. Needs \\usepackage{booktabs}.\n"
    )
    if summary.empty:
        return head + "% no trials\n"
    keys = key_columns(summary)
    shown = shown_statistics(summary)
    # failure counts earn a column only where something failed, to keep the paper table narrow
    counts = ["ok"] + [s for s in ("failed", "skipped") if summary[f"n_{s}"].sum() > 0]
    count_labels = {"ok": "$n$", "failed": "Failed", "skipped": "Skipped"}
    header = [AXIS_LABELS.get(k, (k, latex_escape(k)))[1] for k in keys]
    header += [statistic_label(summary, s, latex=True) for s in shown] + [count_labels[s] for s in counts]
    spec = "l" * len(keys) + "r" * (len(shown) + len(counts))
    lines = [head.rstrip("\n"), f"\\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(header) + r" \\", r"\midrule"]
    setting_keys = [k for k in keys if k != "method"]
    previous = None
    for _, row in summary.iterrows():
        setting = tuple(normalised(row[k]) for k in setting_keys)
        if previous is not None and setting != previous and "method" in keys:
            lines.append(r"\midrule")  # one block per setting, methods compared inside it
        previous = setting
        values = [latex_escape(format_value(row[k])).replace("—", "--") for k in keys]
        values += cells(row, shown, pm=r" $\pm$ ") + [str(row[f"n_{s}"]) for s in counts]
        lines.append(" & ".join(values) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def label_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Label accuracy (mean over seeds): one row per (composition, B, r) cell, one column per strategy and state.

    A cell reads "skipped" when the data cannot supply it or the strategy does not apply there.
    """
    rows: dict[tuple, dict[str, Any]] = {}
    columns: set[tuple[str, str]] = set()
    trials = trials.assign(composition=trials.composition.fillna("even"))  # records from before skewed batches
    for (state, method, composition, batch, ratio), group in trials.groupby(
        ["model_state", "method", "composition", "batch_size", "dup_ratio"], dropna=False, sort=False
    ):
        ok = group[group.status == "ok"]
        if len(ok):
            value = f"{ok.label_accuracy.mean():.3f}"
        else:
            value = "skipped" if (group.status == "skipped").all() else "failed"
        column = (str(state), str(method))
        columns.add(column)
        row = rows.setdefault(
            (composition != "even", composition, batch, as_number(ratio)),
            {"composition": composition, "B": batch, "r": format_value(ratio)},
        )
        row[f"{method} ({state})"] = value
    ordered = [f"{method} ({state})" for state, method in sorted(columns, key=lambda c: (c[0] != "untrained", c))]
    table = [rows[key] for key in sorted(rows)]
    return pd.DataFrame(table, columns=["composition", "B", "r", *ordered]).fillna("")
