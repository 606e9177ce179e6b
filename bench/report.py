"""Tables from a results folder: ``python -m bench.report RESULTS_DIR``.

Reads the trial records and writes ``trials.csv`` (one row per trial),
``summary.csv`` and ``summary.md`` (mean and std over seeds per method and
swept setting, with counts of failed and skipped trials).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from bench.records import load_records

METRICS = ("psnr", "ssim", "lpips", "label_accuracy", "attack_seconds", "seconds_per_iteration")
GROUP = ("method", "dataset", "model", "model_state", "profile", "labels_known", "batch_size", "dup_ratio")
TRIAL_COLUMNS = (*GROUP, "seed", "status", "reason", *METRICS, "iterations", "trial_seconds", "key")


def trials_table(out_dir: Path) -> pd.DataFrame:
    rows = load_records(out_dir)
    frame = pd.DataFrame(rows)
    for column in TRIAL_COLUMNS:
        if column not in frame:
            frame[column] = pd.NA
    return frame[list(TRIAL_COLUMNS)].sort_values([*GROUP, "seed"], kind="stable").reset_index(drop=True)


def summary_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of every metric (ok trials only), plus trial counts by status."""
    groups = [c for c in GROUP if trials[c].nunique(dropna=False) > 1 or c in ("method", "batch_size", "dup_ratio")]
    rows = []
    for values, group in trials.groupby(groups, dropna=False, sort=True):
        ok = group[group.status == "ok"]
        row = dict(zip(groups, values if isinstance(values, tuple) else (values,), strict=True))
        for metric in METRICS:
            column = pd.to_numeric(ok[metric], errors="coerce")
            row[f"{metric}_mean"] = column.mean()
            row[f"{metric}_std"] = column.std(ddof=1) if len(column) > 1 else 0.0 if len(column) else float("nan")
        row["n_ok"] = len(ok)
        row["n_failed"] = int((group.status == "failed").sum())
        row["n_skipped"] = int((group.status == "skipped").sum())
        rows.append(row)
    return pd.DataFrame(rows)


def _format(mean: float, std: float, digits: int) -> str:
    if pd.isna(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_summary(summary: pd.DataFrame) -> str:
    shown = {
        "psnr": ("PSNR (dB)", 2),
        "ssim": ("SSIM", 3),
        "lpips": ("LPIPS", 3),
        "label_accuracy": ("label acc.", 3),
        "attack_seconds": ("attack s", 2),
        "seconds_per_iteration": ("s/iter", 4),
    }
    keys = [c for c in summary.columns if not c.endswith(("_mean", "_std")) and not c.startswith("n_")]
    header = keys + [label for label, _ in shown.values()] + ["ok", "failed", "skipped"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in summary.iterrows():
        cells = [str(row[k]) for k in keys]
        cells += [_format(row[f"{m}_mean"], row[f"{m}_std"], d) for m, (_, d) in shown.items()]
        cells += [str(row["n_ok"]), str(row["n_failed"]), str(row["n_skipped"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path) -> str:
    """Write the tables for ``out_dir`` and return the Markdown summary."""
    trials = trials_table(out_dir)
    trials.to_csv(out_dir / "trials.csv", index=False)
    summary = summary_table(trials)
    summary.to_csv(out_dir / "summary.csv", index=False)
    text = markdown_summary(summary)
    (out_dir / "summary.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a results folder written by bench.run")
    args = parser.parse_args(argv)
    if not (args.results / "records").is_dir():
        print(
            f"error: {args.results} holds no records/ folder; pass a folder written by python -m bench.run",
            file=sys.stderr,
        )
        return 2
    print(write_report(args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
