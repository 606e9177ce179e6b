"""The report of one results folder: every table and figure, and ``report.md`` that ties them together."""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.records import load_records, write_atomic
from bench.report.columns import AXES, AXIS_LABELS, ORACLE, STATUSES, mean_column
from bench.report.defences import write_defence_report
from bench.report.fedavg import write_fedavg_report
from bench.report.figures import FigureEntry, write_figures
from bench.report.order import is_reference, method_order
from bench.report.stage import write_stage_report
from bench.report.stats import CONFIDENCE
from bench.report.tables import (
    key_columns,
    label_table,
    latex_summary,
    markdown_summary,
    summary_table,
    swept_axes,
    trials_csv,
    trials_frame,
)
from bench.report.values import format_value, is_missing, markdown_table, md_escape, normalised

# matplotlib's PDF backend subsets fonts with fontTools, which logs every font table it prunes at INFO;
# under Hydra's INFO root logger that is ~200 lines per report
logging.getLogger("fontTools").setLevel(logging.WARNING)


def distinct(values: Iterable[Any]) -> str:
    counts = Counter("unknown" if is_missing(v) else str(v) for v in values)
    if len(counts) <= 1:
        return next(iter(counts), "unknown")
    return "records differ: " + ", ".join(f"{v} ({n})" for v, n in counts.most_common())


def environment_table(records: Sequence[Mapping[str, Any]]) -> str:
    """Versions, commit, device and Python from the records, saying where records disagree."""
    if not records:
        return "_No records._\n"
    lines = ["| | |", "|---|---|"]
    for package in ("torch", "torchvision", "lpips", "piq"):
        values = [
            (r.get("versions") or {}).get(package) if isinstance(r.get("versions"), Mapping) else None for r in records
        ]
        lines.append(f"| {package} | {md_escape(distinct(values))} |")
    for field, label in (("git_commit", "git commit"), ("device", "device"), ("python", "python")):
        lines.append(f"| {label} | {md_escape(distinct(r.get(field) for r in records))} |")
    return "\n".join(lines) + "\n"


def problem_trials(trials: pd.DataFrame) -> str:
    bad = trials[trials.status != "ok"]
    if bad.empty:
        return "None: every trial finished.\n"
    axes = ["method", *swept_axes(trials), "seed"]
    header = ["status", *(AXIS_LABELS.get(c, (c,))[0] for c in axes), "reason", "key"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in bad.iterrows():
        values = [format_value(row.status), *(format_value(row[c]) for c in axes), format_value(row.reason)]
        lines.append("| " + " | ".join(md_escape(v) for v in [*values, format_value(row.key)]) + " |")
    return "\n".join(lines) + "\n"


def floors_text(summary: pd.DataFrame) -> str:
    """One sentence on what a method must beat to have learned anything from the gradient, with the numbers."""
    if summary.empty or "psnr_mean" not in summary:
        return ""
    reference = np.array([is_reference(m) for m in summary.method], dtype=bool)
    references = summary[reference & summary.psnr_mean.notna().to_numpy()]
    oracle = summary[mean_column(ORACLE)].dropna()
    oracle_text = (
        f"; the flat-colour oracle, a flat image of each true image's own mean colour, scores {oracle.mean():.2f} dB,"
        " a bar no attack should be proud to beat by little"
        if len(oracle)
        else ""
    )
    if references.empty:
        return (
            "No reference method ran here: add `noise` and `mean` to the sweep to see the PSNR a method must beat "
            f"to have learned anything from the gradient{oracle_text}.\n"
        )
    averages = references.groupby("method").psnr_mean.mean().sort_values(ascending=False)
    best, others = averages.index[0], averages.iloc[1:]
    other_text = "".join(f", `{m}` {v:.2f} dB" for m, v in others.items())
    setting = [k for k in key_columns(summary) if k != "method"]
    floor = {
        tuple(normalised(v) for v in key): rows.psnr_mean.max()
        for key, rows in references.groupby(setting, dropna=False, sort=False)
    }
    attacks = summary[~reference]
    above = [
        row.psnr_ci_low > floor[key]
        for _, row in attacks.iterrows()
        if (key := tuple(normalised(row[k]) for k in setting)) in floor and math.isfinite(row.psnr_ci_low)
    ]
    count = (
        f" {sum(above)} of {len(above)} attack rows with a CI have it entirely above their setting's best reference."
        if above
        else ""
    )
    return (
        f"**What a method must beat.** A method has learned something from the gradient only where its PSNR's "
        f"{CONFIDENCE:.0%} CI lies above the best reference row of its setting, which uses no gradient at all "
        f"(here `{best}`, {averages.iloc[0]:.2f} dB on average over settings{other_text}){oracle_text}.{count}\n"
    )


def report_markdown(
    out_dir: Path,
    trials: pd.DataFrame,
    summary: pd.DataFrame,
    figures: Sequence[FigureEntry],
    problems: Sequence[str],
    records: Sequence[Mapping[str, Any]],
) -> str:
    counts = {s: int((trials.status == s).sum()) for s in STATUSES}
    other = len(trials) - sum(counts.values())
    fixed = [c for c in AXES if c != "variant" and len({normalised(v) for v in trials[c]}) <= 1]
    fixed_text = (
        ", ".join(f"{AXIS_LABELS[c][0]} {format_value(trials[c].iloc[0])}" for c in fixed) if len(trials) else ""
    )
    thresholds = sorted(set(trials.success_psnr.dropna()))
    parts = [
        f"# gia-bench report: {out_dir.resolve().name}\n",
        f"{len(trials)} trials: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped"
        + (f", {other} with another status" if other else "")
        + f". Methods: {', '.join(map(str, method_order(trials.method))) or 'none'}."
        + (f" Fixed settings: {fixed_text}." if fixed_text else "")
        + "\n",
        "## Summary\n",
        "Tables: [summary.csv](summary.csv) · [summary.md](summary.md) · [summary.tex](summary.tex) "
        "(booktabs, for `\\input`) · [trials.csv](trials.csv) (one row per trial).\n",
        f"Mean ± half-width of its {CONFIDENCE:.0%} bootstrap CI (scipy, BCa) over the ok trials' images x seeds "
        "for PSNR (and SSIM/LPIPS where records hold them per image), over seeds for the rest; summary.csv holds "
        "the exact bounds. The mean alone where one unit leaves the CI undefined. Success: the share of images "
        f"with PSNR ≥ {' / '.join(f'{t:g}' for t in thresholds) or '—'} dB, with its Wilson interval in brackets. "
        "Failed and skipped trials are counted, never averaged.\n",
        floors_text(summary),
        markdown_summary(summary),
    ]
    if len(trials) and trials["lpips"].isna().all():
        parts.append("LPIPS has no values: the trials ran without the AlexNet weights (see README).\n")
    parts.append("## Figures\n")
    for entry in figures:
        parts.append(
            f"![{entry.caption}](figures/{entry.stem}.png)\n\n"
            f"{entry.caption} [PNG](figures/{entry.stem}.png) · [PDF](figures/{entry.stem}.pdf)\n"
        )
    if not figures and not any(p.startswith("figures=false") for p in problems):
        parts.append("No figures: no trial finished.\n")
    if problems:
        parts.append("Not drawn:\n\n" + "".join(f"- {md_escape(p)}\n" for p in problems))
    parts += ["## Failed and skipped trials\n", problem_trials(trials), "## Environment\n", environment_table(records)]
    return "\n".join(part for part in parts if part)


def write_text(path: Path, text: str) -> None:
    write_atomic(path, text)
    path.chmod(0o644)  # the temporary file behind the atomic write is private (0600); reports are for sharing


def write_report(out_dir: Path | str, success_psnr: float | None = None, figures: bool = True) -> str:
    """Write the tables, figures and report.md for ``out_dir`` and return the Markdown summary.

    ``success_psnr`` overrides the success threshold the records carry (default 20 dB). ``figures=False`` skips
    the figures (most of the report's time): report.md then says how to draw them.
    """
    out_dir = Path(out_dir)
    records = load_records(out_dir)
    trials = trials_frame(records, success_psnr)
    write_text(out_dir / "trials.csv", trials_csv(trials))
    if records and all(r.get("task") == "labels" for r in records):
        # a label-recovery sweep: no images, so the table of interest is strategy x (B, r)
        labels = label_table(trials)
        write_text(out_dir / "labels.csv", labels.to_csv(index=False))
        text = markdown_table(labels)
        write_text(out_dir / "labels.md", text)
        return text
    summary = summary_table(trials)
    write_text(out_dir / "summary.csv", summary.to_csv(index=False))
    text = markdown_summary(summary)
    write_text(out_dir / "summary.md", text)
    write_text(out_dir / "summary.tex", latex_summary(summary))
    if figures:
        drawn, problems = write_figures(out_dir, trials, records)
    else:
        drawn, problems = [], [f"figures=false: `python -m bench.report {out_dir}` draws them"]
    write_text(out_dir / "report.md", report_markdown(out_dir, trials, summary, drawn, problems, records))
    write_defence_report(out_dir, figures)  # defences.md and its figures, when the folder holds defended trials
    write_stage_report(out_dir, success_psnr, figures)  # stage.md and its figure, with trained@E trials
    write_fedavg_report(out_dir, figures)  # fedavg.md and its figure, when the folder holds FedAvg trials
    return text
