"""The defence sweep's report: a table of method x defence x strength, PSNR against defence strength, and the
privacy-utility trade-off (PSNR against the update's cosine to the undefended update, and against the accuracy of
a short training run with the defence), one curve per method.

``python -m bench.report.defences RESULTS_DIR`` writes ``defences.md``, ``defences.csv`` and
``figures/defence_*.{png,pdf}`` into the folder; ``write_defence_report(out_dir)`` does the same from code.
It reads only the records, so it can run on any folder with defended trials (docs/defences.md).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bench import records as rec
from bench.report.plotting import save

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn: the tables must not pay for it
    from matplotlib.figure import Figure

# a reconstructed image counts as a success at this PSNR or above (dB)
SUCCESS_PSNR = 20.0
METHOD_ORDER = ("dlg", "idlg", "ig", "gradinversion", "afgi")
DEFENCE_ORDER = ("none", "clip", "gaussian", "dpsgd", "prune", "quantise", "soteria")
# defences whose parameter protects more as it gets smaller: their strength axes run backwards
WEAKER_WHEN_LARGER = ("clip", "quantise")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
COLUMNS = (
    "method",
    "defence",
    "parameter",
    "strength",
    "n_trials",
    "psnr",
    "success_rate",
    "update_cosine",
    "defended_train_accuracy",
    "epsilon",
    "skipped",
)


def _order(values: Sequence[Any], preferred: Sequence[str]) -> list[Any]:
    known = [v for v in preferred if v in set(values)]
    return known + sorted(set(values) - set(known), key=str)


def _number(value: Any) -> float:
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.inf if value == "inf" else math.nan


def defence_trials(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per attack trial that ran through a defence (records without a defence column are left out)."""
    rows = []
    for r in records:
        if r.get("task", "attack") != "attack" or "defence" not in r:
            continue
        images = [p for p in (r.get("per_image_psnr") or []) if p is not None]
        rows.append(
            {
                "method": r["method"],
                "defence": r["defence"],
                "parameter": r.get("defence_parameter"),
                "strength": _number(r.get("defence_strength")),
                "status": r["status"],
                "reason": r.get("reason", ""),
                "psnr": _number(r.get("psnr")),
                "successes": sum(_number(p) >= SUCCESS_PSNR for p in images),
                "images": len(images),
                "update_cosine": _number(r.get("update_cosine")),
                "defended_train_accuracy": _number(r.get("defended_train_accuracy")),
                "epsilon": _number(r.get("epsilon")),
            }
        )
    return pd.DataFrame(rows)


def defence_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Per method x defence x strength: mean PSNR, the share of images >= SUCCESS_PSNR dB, the mean utility."""
    if trials.empty:
        return pd.DataFrame(columns=COLUMNS)
    rows = []
    keys = ["method", "defence", "parameter", "strength"]
    frame = trials.assign(parameter=trials.parameter.fillna(""), strength=trials.strength.fillna(-math.inf))
    for (method, defence, parameter, strength), group in frame.groupby(keys, sort=False):
        ok = group[group.status == "ok"]
        images = int(ok.images.sum())
        rows.append(
            {
                "method": method,
                "defence": defence,
                "parameter": parameter or None,
                "strength": math.nan if strength == -math.inf else strength,
                "n_trials": len(ok),
                "psnr": ok.psnr.mean() if len(ok) else math.nan,
                "success_rate": ok.successes.sum() / images if images else math.nan,
                "update_cosine": group.update_cosine.mean(),
                "defended_train_accuracy": group.defended_train_accuracy.mean(),
                "epsilon": group.epsilon.mean(),
                "skipped": "; ".join(sorted(set(group[group.status != "ok"].reason))) or "",
            }
        )
    table = pd.DataFrame(rows, columns=COLUMNS)
    method_rank = {m: i for i, m in enumerate(_order(table.method.unique(), METHOD_ORDER))}
    defence_rank = {d: i for i, d in enumerate(_order(table.defence.unique(), DEFENCE_ORDER))}

    def strength_rank(row: pd.Series) -> float:
        value = row.strength if not math.isnan(row.strength) else -math.inf
        return -value if row.defence in WEAKER_WHEN_LARGER else value

    table["_rank"] = [
        (method_rank[r.method], defence_rank[r.defence], strength_rank(r)) for r in table.itertuples(index=False)
    ]
    return table.sort_values("_rank").drop(columns="_rank").reset_index(drop=True)


def _fmt(value: Any, digits: int = 2) -> str:
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    if isinstance(value, float) and value != 0 and (abs(value) < 0.01 or abs(value) >= 1e4):
        return f"{value:.3g}"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown_table(table: pd.DataFrame) -> str:
    header = (
        "| method | defence | strength | PSNR (dB) | success | update cosine | defended train acc. | ε | trials |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in table.itertuples(index=False):
        strength = f"{r.parameter}={_fmt(r.strength, 3)}" if isinstance(r.parameter, str) else "–"
        success = "–" if math.isnan(r.success_rate) else f"{100 * r.success_rate:.0f}%"
        trials = f"{r.n_trials}" + (f" ({r.skipped})" if r.skipped else "")
        lines.append(
            f"| {r.method} | {r.defence} | {strength} | {_fmt(r.psnr)} | {success} | {_fmt(r.update_cosine, 3)} | "
            f"{_fmt(r.defended_train_accuracy, 3)} | {_fmt(r.epsilon)} | {trials} |"
        )
    return header + "\n".join(lines) + "\n"


def _styles(methods: Sequence[str]) -> dict[str, tuple[Any, str]]:
    import matplotlib

    colours = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    return {m: (colours[i % len(colours)], MARKERS[i % len(MARKERS)]) for i, m in enumerate(methods)}


def _panels(count: int) -> tuple[Figure, np.ndarray]:
    columns = min(3, max(count, 1))
    rows = math.ceil(max(count, 1) / columns)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(3.2 * columns, 2.6 * rows))
    axes = figure.subplots(rows, columns, squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return figure, axes


def _defended(table: pd.DataFrame) -> list[str]:
    return [d for d in _order(table.defence.unique(), DEFENCE_ORDER) if d != "none"]


def strength_figure(table: pd.DataFrame) -> Figure | None:
    """PSNR against each defence's strength (stronger to the right), one curve per method; dashed: no defence."""
    defences = _defended(table)
    if not defences:
        return None
    methods = _order(table.method.unique(), METHOD_ORDER)
    styles = _styles(methods)
    baseline = table[table.defence == "none"].groupby("method").psnr.mean()
    figure, axes = _panels(len(defences))
    for ax, defence in zip(axes.flat, defences, strict=False):
        cells = table[table.defence == defence]
        for method in methods:
            line = cells[cells.method == method].sort_values("strength")
            colour, marker = styles[method]
            if len(line):
                ax.plot(line.strength, line.psnr, marker=marker, color=colour, label=method, markersize=4)
            if method in baseline.index:
                ax.axhline(baseline[method], color=colour, linestyle="--", linewidth=0.8)
        strengths = cells.strength.dropna()
        if len(strengths) and (strengths > 0).all() and strengths.max() / strengths.min() >= 20:
            ax.set_xscale("log")
        if defence in WEAKER_WHEN_LARGER:
            ax.invert_xaxis()
        parameter = cells.parameter.dropna().iloc[0] if cells.parameter.notna().any() else "strength"
        ax.set_title(defence, fontsize=9)
        ax.set_xlabel(f"{parameter} (stronger →)", fontsize=8)
        ax.set_ylabel("PSNR (dB)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    _legend(figure, axes)
    return figure


def utility_figure(table: pd.DataFrame, utility: str) -> Figure | None:
    """Privacy-utility: PSNR against ``utility`` (update_cosine or defended_train_accuracy), one curve per method
    per defence panel, through the defence's strengths; the undefended point as a star."""
    defences = _defended(table)
    if not defences or table[utility].notna().sum() == 0:
        return None
    methods = _order(table.method.unique(), METHOD_ORDER)
    styles = _styles(methods)
    undefended = table[table.defence == "none"].groupby("method")[["psnr", utility]].mean()
    figure, axes = _panels(len(defences))
    for ax, defence in zip(axes.flat, defences, strict=False):
        cells = table[table.defence == defence]
        for method in methods:
            line = cells[(cells.method == method) & cells[utility].notna()].sort_values(utility)
            colour, marker = styles[method]
            if len(line):
                ax.plot(line[utility], line.psnr, marker=marker, color=colour, label=method, markersize=4)
            if method in undefended.index and not math.isnan(undefended.loc[method, utility]):
                ax.plot(undefended.loc[method, utility], undefended.loc[method, "psnr"], "*", color=colour, ms=8)
        ax.set_title(defence, fontsize=9)
        label = "cosine to the undefended update" if utility == "update_cosine" else "held-out accuracy (defended)"
        ax.set_xlabel(label, fontsize=8)
        ax.set_ylabel("PSNR (dB)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    _legend(figure, axes)
    return figure


def _legend(figure: Figure, axes: np.ndarray) -> None:
    handles, labels = [], []
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if handles:
        figure.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.06, 1, 1))


FIGURES = {
    "defence_strength": (strength_figure, "PSNR against defence strength (dashed: no defence)"),
    "defence_utility": (
        lambda table: utility_figure(table, "update_cosine"),
        "Privacy-utility: PSNR against the defended update's cosine to the undefended one (star: no defence)",
    ),
    "defence_training": (
        lambda table: utility_figure(table, "defended_train_accuracy"),
        "Privacy-utility: PSNR against held-out accuracy after a short training run with the defence",
    ),
}


def write_defence_report(out_dir: Path | str, figures: bool = True) -> str | None:
    """Write ``defences.md``, ``defences.csv`` and the figures (unless ``figures`` is False) into ``out_dir``; None
    (writing nothing) when no trial there ran with a defence. Returns the markdown."""
    out_dir = Path(out_dir)
    table = defence_table(defence_trials(rec.load_records(out_dir)))
    if not (table.defence != "none").any():
        return None
    table.to_csv(out_dir / "defences.csv", index=False)
    figures_dir = out_dir / "figures"
    parts = [
        "# Defences\n",
        f"Success: the share of images reconstructed to at least {SUCCESS_PSNR:g} dB PSNR. Update cosine: the "
        "defended update's cosine similarity to the undefended one. Defended train acc.: held-out accuracy after "
        "the short training run of `defence_training` with the defence at every step (docs/defences.md).\n",
        markdown_table(table),
    ]
    if not figures:
        parts.append(f"\nFigures not drawn (figures=false): `python -m bench.report.defences {out_dir}` draws them.\n")
    for stem, (build, caption) in FIGURES.items() if figures else ():
        figure = build(table)
        if figure is None:
            continue
        save(figure, figures_dir, stem)
        parts.append(f"\n![{caption}](figures/{stem}.png)\n\n_{caption}._\n")
    markdown = "\n".join(parts)
    (out_dir / "defences.md").write_text(markdown)
    return markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report.defences", description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a results folder with records/ (e.g. of sweep=defences)")
    args = parser.parse_args(argv)
    if not (args.results / "records").is_dir():
        print(f"error: {args.results} has no records/ folder; give a sweep's results folder", file=sys.stderr)
        return 2
    markdown = write_defence_report(args.results)
    if markdown is None:
        print(f"error: no trial in {args.results} ran with a defence; run sweep=defences", file=sys.stderr)
        return 2
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
