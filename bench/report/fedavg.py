"""The FedAvg sweep's report: method x local steps (PSNR, success rate, label accuracy, skips) and PSNR against
the number of local steps, one curve per method.

``python -m bench.report.fedavg RESULTS_DIR`` writes ``fedavg.md``, ``fedavg.csv`` and
``figures/fedavg_steps.{png,pdf}`` into the folder; ``write_fedavg_report(out_dir)`` does the same from code.
It reads only the records, so it runs on any folder with FedAvg trials (docs/fedavg.md).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from bench import records as rec
from bench.report.defences import SUCCESS_PSNR
from bench.report.order import method_order
from bench.report.plotting import save
from bench.report.styles import figure_style, method_styles

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn: the tables must not pay for it
    from matplotlib.figure import Figure

COLUMNS = (
    "method",
    "local_steps",
    "local_batch_size",
    "local_lr",
    "n_trials",
    "psnr",
    "success_rate",
    "label_accuracy",
    "skipped",
)


def fedavg_trials(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per attack trial of a FedAvg client (records without a ``client`` column are FedSGD: left out)."""
    rows = []
    for r in records:
        if r.get("task", "attack") != "attack" or r.get("client") != "fedavg":
            continue
        images = [p for p in (r.get("per_image_psnr") or []) if p is not None]
        rows.append(
            {
                "method": r["method"],
                "local_steps": r["local_steps"],
                "local_batch_size": r["local_batch_size"],
                "local_lr": r["local_lr"],
                "status": r["status"],
                "reason": r.get("reason", ""),
                "psnr": r.get("psnr", math.nan) if r["status"] == "ok" else math.nan,
                "label_accuracy": r.get("label_accuracy", math.nan) if r["status"] == "ok" else math.nan,
                "successes": sum(p >= SUCCESS_PSNR for p in images),
                "images": len(images),
            }
        )
    return pd.DataFrame(rows)


def fedavg_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Per method x local steps (x mini-batch size and lr): mean PSNR, success rate and label accuracy."""
    if trials.empty:
        return pd.DataFrame(columns=COLUMNS)
    rows = []
    keys = ["method", "local_steps", "local_batch_size", "local_lr"]
    for (method, steps, size, lr), group in trials.groupby(keys, sort=False):
        ok = group[group.status == "ok"]
        images = int(ok.images.sum())
        rows.append(
            {
                "method": method,
                "local_steps": steps,
                "local_batch_size": size,
                "local_lr": lr,
                "n_trials": len(ok),
                "psnr": ok.psnr.mean() if len(ok) else math.nan,
                "success_rate": ok.successes.sum() / images if images else math.nan,
                "label_accuracy": ok.label_accuracy.mean() if len(ok) else math.nan,
                "skipped": "; ".join(sorted(set(group[group.status != "ok"].reason))),
            }
        )
    table = pd.DataFrame(rows, columns=COLUMNS)
    rank = {m: i for i, m in enumerate(method_order(table.method.unique()))}
    table["_rank"] = [(rank[r.method], r.local_steps, r.local_batch_size, r.local_lr) for r in table.itertuples()]
    return table.sort_values("_rank").drop(columns="_rank").reset_index(drop=True)


def _number(value: float, digits: int = 2) -> str:
    return "–" if math.isnan(value) else f"{value:.{digits}f}"


def markdown_table(table: pd.DataFrame) -> str:
    """The table, with each distinct skip reason written once below it and referred to by its number."""
    lines = [
        "| method | local steps | mini-batch | local lr | PSNR (dB) | success | label acc. | trials |",
        "|---|---|---|---|---|---|---|---|",
    ]
    reasons: list[str] = []
    for r in table.itertuples(index=False):
        success = "–" if math.isnan(r.success_rate) else f"{100 * r.success_rate:.0f}%"
        labels = "–" if math.isnan(r.label_accuracy) else f"{100 * r.label_accuracy:.0f}%"
        trials = f"{r.n_trials}"
        if r.skipped:
            if r.skipped not in reasons:
                reasons.append(r.skipped)
            trials += f" (skipped [{reasons.index(r.skipped) + 1}])"
        lines.append(
            f"| {r.method} | {r.local_steps} | {r.local_batch_size} | {float(r.local_lr):g} | "
            f"{_number(r.psnr)} | {success} | {labels} | {trials} |"
        )
    notes = [f"[{number}] {reason}" for number, reason in enumerate(reasons, start=1)]
    return "\n".join(lines) + "\n" + ("\n" + "\n\n".join(notes) + "\n" if notes else "")


def steps_figure(table: pd.DataFrame) -> Figure | None:
    """PSNR against the number of local steps, one curve per method that ran."""
    ran = table[table.n_trials > 0]
    if ran.empty:
        return None
    methods = method_order(ran.method.unique())
    styles = method_styles(methods)
    with figure_style():
        from matplotlib.figure import Figure

        figure = Figure()
        ax = figure.subplots()
        for method in methods:
            line = ran[ran.method == method].sort_values("local_steps")
            style = styles[method]
            ax.plot(line.local_steps, line.psnr, marker=style.marker, color=style.colour, ls=style.line, label=method)
        ax.set_xscale("log")
        ax.set_xlabel("local steps")
        ax.set_ylabel("PSNR (dB)")
        ax.legend()
    return figure


def write_fedavg_report(out_dir: Path | str, figures: bool = True) -> str | None:
    """Write ``fedavg.md``, ``fedavg.csv`` and the figure into ``out_dir``; None (writing nothing) when no trial
    there ran with a FedAvg client. Returns the markdown."""
    out_dir = Path(out_dir)
    table = fedavg_table(fedavg_trials(rec.load_records(out_dir)))
    if table.empty:
        return None
    table.to_csv(out_dir / "fedavg.csv", index=False)
    parts = [
        "# FedAvg clients\n",
        f"Success: the share of images reconstructed to at least {SUCCESS_PSNR:g} dB PSNR. Methods that match "
        "gradients only are skipped on weight differences (docs/fedavg.md).\n",
        markdown_table(table),
    ]
    figure = steps_figure(table) if figures else None
    if figure is not None:
        save(figure, out_dir / "figures", "fedavg_steps")
        caption = "PSNR against the number of FedAvg local steps"
        parts.append(f"\n![{caption}](figures/fedavg_steps.png)\n\n_{caption}._\n")
    markdown = "\n".join(parts)
    (out_dir / "fedavg.md").write_text(markdown)
    return markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report.fedavg", description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a results folder with records/ (e.g. of sweep=fedavg)")
    args = parser.parse_args(argv)
    if not (args.results / "records").is_dir():
        print(f"error: {args.results} has no records/ folder; give a sweep's results folder", file=sys.stderr)
        return 2
    markdown = write_fedavg_report(args.results)
    if markdown is None:
        print(f"error: no trial in {args.results} ran with client=fedavg; run sweep=fedavg", file=sys.stderr)
        return 2
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
