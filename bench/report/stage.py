"""The training-stage sweep's report: per method and checkpoint (``model.state=trained@E``), the mean PSNR with its
95% CI over images x seeds, the success rate and the checkpoint's held-out accuracy, and a figure of PSNR against
the epoch and against that accuracy, one curve per method (dashed: the reference floors).

``python -m bench.report.stage RESULTS_DIR`` writes ``stage.md``, ``stage.csv`` and ``figures/stage.{png,pdf}``
into the folder; ``write_stage_report(out_dir)`` does the same from code (``bench.report`` calls it). It reads only
the records, so it runs on any folder with trials of a ``trained@E`` state (docs/stage.md).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from bench import records as rec
from bench.report.columns import DEFAULT_SUCCESS_PSNR
from bench.report.order import is_reference, method_order
from bench.report.plotting import legend, new_figure, save
from bench.report.stats import interval
from bench.report.styles import figure_style, method_styles

COLUMNS = (
    "method",
    "model_epoch",
    "model_accuracy",
    "model_held_out",
    "n_trials",
    "psnr",
    "psnr_low",
    "psnr_high",
    "success_rate",
    "skipped",
)
FIGURE_STEM = "stage"
CAPTION = "PSNR against training epochs and against the checkpoint's held-out accuracy (dashed: reference floors)"


def _number(value: Any) -> float:
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def stage_trials(records: Sequence[dict[str, Any]], success_psnr: float | None = None) -> pd.DataFrame:
    """One row per attack trial at a ``trained@E`` checkpoint (records without ``model_epoch`` are left out); an
    image is a success at ``success_psnr`` dB or above (default: the record's threshold, else 20 dB)."""
    rows = []
    for r in records:
        if r.get("task", "attack") != "attack" or "model_epoch" not in r:
            continue
        threshold = _number(success_psnr if success_psnr is not None else r.get("success_psnr"))
        threshold = DEFAULT_SUCCESS_PSNR if math.isnan(threshold) else threshold
        images = [_number(p) for p in (r.get("per_image_psnr") or []) if p is not None]
        rows.append(
            {
                "method": r["method"],
                "model_epoch": int(r["model_epoch"]),
                "model_accuracy": _number(r.get("model_accuracy")),
                "model_held_out": r.get("model_held_out"),
                "status": r["status"],
                "reason": r.get("reason", ""),
                "per_image_psnr": images,
                "successes": sum(p >= threshold for p in images),
            }
        )
    return pd.DataFrame(rows)


def stage_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Per method x epoch: the checkpoint's mean held-out accuracy (over seeds), mean PSNR with its 95% CI over
    images x seeds, and the share of images at or above the success threshold."""
    if trials.empty:
        return pd.DataFrame(columns=COLUMNS)
    rows = []
    for method in method_order(trials.method):
        for epoch in sorted(trials[trials.method == method].model_epoch.unique()):
            group = trials[(trials.method == method) & (trials.model_epoch == epoch)]
            ok = group[group.status == "ok"]
            images = [p for found in ok.per_image_psnr for p in found]
            psnr = interval(images)
            rows.append(
                {
                    "method": method,
                    "model_epoch": int(epoch),
                    "model_accuracy": group.model_accuracy.mean(),
                    "model_held_out": group.model_held_out.iloc[0],
                    "n_trials": len(ok),
                    "psnr": psnr.mean,
                    "psnr_low": psnr.low,
                    "psnr_high": psnr.high,
                    "success_rate": ok.successes.sum() / len(images) if images else math.nan,
                    "skipped": "; ".join(sorted(set(group[group.status != "ok"].reason))),
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)


def _fmt(value: float, digits: int = 2) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def markdown_table(table: pd.DataFrame) -> str:
    lines = [
        "| method | epochs | held-out acc. | PSNR (dB) | 95% CI | success | trials |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in table.itertuples(index=False):
        success = "–" if math.isnan(r.success_rate) else f"{100 * r.success_rate:.0f}%"
        trials = f"{r.n_trials}" + (f" ({r.skipped})" if r.skipped else "")
        lines.append(
            f"| {r.method} | {r.model_epoch} | {_fmt(r.model_accuracy, 3)} | {_fmt(r.psnr)} | "
            f"[{_fmt(r.psnr_low)}, {_fmt(r.psnr_high)}] | {success} | {trials} |"
        )
    return "\n".join(lines) + "\n"


def stage_figure(table: pd.DataFrame) -> Any:
    """Two panels, PSNR against the epoch and against the held-out accuracy; each method's curve runs through its
    checkpoints in epoch order. None when no checkpoint has a PSNR."""
    data = table[table.psnr.notna()]
    if data.empty:
        return None
    styles = method_styles(data.method)
    figure, axes = new_figure(2)
    for ax, x_axis, label in (
        (axes.flat[0], "model_epoch", "training epochs"),
        (axes.flat[1], "model_accuracy", "held-out accuracy"),
    ):
        for method in method_order(data.method):
            line = data[data.method == method].sort_values("model_epoch")
            style = styles[method]
            ax.plot(
                line[x_axis],
                line.psnr,
                marker=style.marker,
                color=style.colour,
                linestyle=style.line,
                label=method,
                markersize=3,
                linewidth=0.9 if is_reference(method) else 1.2,
            )
        if x_axis == "model_epoch":
            if data.model_epoch.max() >= 10:
                ax.set_xscale("symlog", linthresh=1)  # keeps epoch 0 on the axis while spreading 1, 5, 20
            ax.set_xticks(sorted(data.model_epoch.unique()), labels=map(str, sorted(data.model_epoch.unique())))
            ax.minorticks_off()
        ax.set_xlabel(label)
        ax.set_ylabel("PSNR (dB)")
        ax.grid(alpha=0.3)
    legend(figure, axes)
    return figure


def write_stage_report(out_dir: Path | str, success_psnr: float | None = None, figures: bool = True) -> str | None:
    """Write ``stage.md``, ``stage.csv`` and ``figures/stage.{png,pdf}`` into ``out_dir``; None (writing nothing)
    when no trial there ran at a ``trained@E`` checkpoint. Returns the Markdown."""
    out_dir = Path(out_dir)
    table = stage_table(stage_trials(rec.load_records(out_dir), success_psnr))
    if table.empty:
        return None
    table.to_csv(out_dir / "stage.csv", index=False)
    parts = [
        "# Training stage\n",
        "Each row: a method against the checkpoint `trained@E` of one seeded training run (E epochs; 0 is its "
        "initialisation). Held-out acc.: the checkpoint's accuracy on the images the run did not train on "
        "(docs/stage.md). PSNR: mean over images x seeds with its 95% bootstrap CI; success: the share of images "
        "at or above the success threshold.\n",
        markdown_table(table),
    ]
    with figure_style():
        figure = stage_figure(table) if figures else None
        if figure is not None:
            save(figure, out_dir / "figures", FIGURE_STEM)
            parts.append(f"\n![{CAPTION}](figures/{FIGURE_STEM}.png)\n\n_{CAPTION}._\n")
    markdown = "\n".join(parts)
    rec.write_atomic(out_dir / "stage.md", markdown)
    return markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report.stage", description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a results folder with records/ (e.g. of sweep=stage)")
    args = parser.parse_args(argv)
    if not (args.results / "records").is_dir():
        print(f"error: {args.results} has no records/ folder; give a sweep's results folder", file=sys.stderr)
        return 2
    markdown = write_stage_report(args.results)
    if markdown is None:
        print(f"error: no trial in {args.results} ran at a trained@E checkpoint; run sweep=stage", file=sys.stderr)
        return 2
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
