"""The report's figures: metrics against batch size and duplicate ratio, attack time, convergence, a batch."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bench.report.columns import AXES, METRIC_NAMES, PLOTTED
from bench.report.order import method_order
from bench.report.plotting import (
    draw_floors,
    facets,
    floors,
    legend,
    log_axis,
    new_figure,
    reference_mask,
    representative,
    save,
    select,
    setting_text,
    use_log,
)
from bench.report.stats import curve_intervals, interval, units
from bench.report.styles import SINGLE_COLUMN_IN, figure_style, method_styles
from bench.report.tables import groups
from bench.report.values import evaluation_points, format_value, normalised, progress_points

if TYPE_CHECKING:  # matplotlib is imported lazily: the tables must not pay for it
    from matplotlib.figure import Figure

FIGURE_STEMS = (
    *(f"{m}_vs_{x}" for x in ("batch_size", "dup_ratio") for m in PLOTTED),
    "attack_time",
    "convergence_seconds",
    "convergence_iterations",
    "convergence_evaluations",
    "reconstructions",
)


@dataclass(frozen=True)
class FigureEntry:
    stem: str
    caption: str


def error_bars(found: Sequence[Any]) -> np.ndarray | None:
    """Asymmetric error bars from intervals (zero where a CI is undefined); None when there are none."""
    below = np.array([f.mean - f.low for f in found], dtype=float)
    above = np.array([f.high - f.mean for f in found], dtype=float)
    bars = np.nan_to_num(np.vstack([below, above]), nan=0.0, posinf=0.0, neginf=0.0)
    return bars if bars.any() else None


def metric_figure(ok: pd.DataFrame, x_axis: str, metric: str, varying: Sequence[str]) -> Figure | None:
    data = ok[np.isfinite(ok[metric].to_numpy(dtype=float))]
    data = data[[isinstance(normalised(v), (int, float)) for v in data[x_axis]]]
    if data.empty:
        return None
    styles = method_styles(data.method)
    panels = facets(data, [c for c in varying if c != x_axis])
    figure, axes = new_figure(len(panels))
    xs = sorted({float(normalised(v)) for v in data[x_axis]})
    log2 = x_axis == "batch_size" and min(xs) > 0
    span = (max(xs) - min(xs)) or 1.0
    for ax, (setting, labels) in zip(axes.flat, panels, strict=False):
        panel = data.loc[labels]
        attacks = panel[~reference_mask(panel)]
        methods = method_order(attacks.method)
        for i, method in enumerate(methods):
            rows = attacks[attacks.method == method]
            points = [
                (float(key[0]), interval(units(rows.loc[idx], metric))) for key, idx in groups(rows, [x_axis]).items()
            ]
            x = np.array([p[0] for p in points])
            found = [p[1] for p in points]
            # a small sideways dodge so that methods with equal values (label accuracy 1.0) stay visible
            shift = (i - (len(methods) - 1) / 2) * 0.05
            x = x * 2**shift if log2 else x + shift * 0.25 * span
            style = styles[method]
            ax.errorbar(
                x,
                [f.mean for f in found],
                yerr=error_bars(found),
                color=style.colour,
                marker=style.marker,
                label=method,
                elinewidth=0.8,
            )
        draw_floors(ax, floors(panel, metric))
        if log2:
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.set_xticks([], minor=True)
        if setting:
            ax.set_title(setting_text(setting))
        if metric == "label_accuracy":
            ax.set_ylim(-0.03, 1.03)
    for ax in axes[:, 0]:
        ax.set_ylabel(METRIC_NAMES[metric])
    for ax in axes[-1, :]:
        ax.set_xlabel("batch size" if x_axis == "batch_size" else "duplicate-label ratio")
    legend(figure, axes)
    return figure


def time_figure(ok: pd.DataFrame, varying: Sequence[str]) -> tuple[Figure, dict[str, Any]] | None:
    data = ok[np.isfinite(ok["attack_seconds"].to_numpy(dtype=float)) & ~reference_mask(ok)]
    if data.empty:
        return None
    setting = representative(data, [c for c in varying if c != "batch_size"])
    data = select(data, setting)
    methods = method_order(data.method)
    styles = method_styles(methods)
    sizes = [key[0] for key in groups(data, ["batch_size"])]
    figure, axes = new_figure()
    ax = axes[0, 0]
    width = 0.8 / len(methods)
    heights = []
    for i, method in enumerate(methods):
        rows = data[data.method == method]
        label: str | None = method  # one legend entry per method, on its first bar
        for j, size in enumerate(sizes):
            found = interval(units(select(rows, {"batch_size": size}), "attack_seconds"))
            if math.isnan(found.mean):
                continue
            heights.append(found.mean)
            ax.bar(
                j + (i - (len(methods) - 1) / 2) * width,
                found.mean,
                width=width * 0.9,
                yerr=error_bars([found]),
                color=styles[method].colour,
                label=label,
                error_kw={"elinewidth": 0.8, "capsize": 2},
            )
            label = None
    if use_log(heights, 30):  # methods differ by orders of magnitude (DLG vs IG budgets)
        log_axis(ax, "y")
    if len(sizes) > 1:
        ax.set_xticks(range(len(sizes)), [format_value(s) for s in sizes])
        ax.set_xlabel("batch size")
        legend(figure, axes)
    else:
        # one batch size: the methods themselves label the bars, a legend would repeat them
        ax.set_xticks([(i - (len(methods) - 1) / 2) * width for i in range(len(methods))], methods)
    ax.set_ylabel("attack time (s)")
    ax.grid(axis="x", visible=False)
    return figure, setting


def mean_curve(trial_points: Sequence[list[tuple[float, float, float]]]) -> pd.DataFrame:
    """Per scored iteration: the mean seconds and PSNR over seeds, with the PSNR's 95% CI over seeds."""
    frame = pd.DataFrame(
        [(trial, *point) for trial, points in enumerate(trial_points) for point in points],
        columns=["trial", "iteration", "seconds", "psnr"],
    )
    curve = frame.groupby("iteration").agg(seconds=("seconds", "mean"), psnr=("psnr", "mean"), n=("psnr", "size"))
    curve["low"], curve["high"] = math.nan, math.nan
    full = curve.index[curve.n == len(trial_points)]  # scored on every seed: one vectorised bootstrap
    if len(full) and len(trial_points) > 1:
        table = frame.pivot_table(index="trial", columns="iteration", values="psnr").loc[:, full]
        curve.loc[full, "low"], curve.loc[full, "high"] = curve_intervals(table.to_numpy())
    return curve.reset_index()


def convergence_figures(
    ok: pd.DataFrame,
    progress: Mapping[str, list[tuple[float, float, float]]],
    varying: Sequence[str],
    by_evaluations: Mapping[str, list[tuple[float, float, float]]] | None = None,
) -> list[tuple[str, Figure, dict[str, Any]]]:
    """PSNR against attack time, iterations and (where every trial counted them) gradient evaluations.

    ``by_evaluations`` holds each trial's progress as (evaluations, seconds, psnr) rows: the x-axis on which
    methods with different costs per iteration (restarts, candidates, L-BFGS line searches) compare fairly.
    """
    scored = ok[[bool(progress.get(k)) for k in ok.key]]
    if scored.empty:
        return []
    setting = representative(scored, [c for c in varying if c != "batch_size"])
    everything = select(ok, setting)  # the reference methods, unscored, give the floors
    panels = facets(select(scored, setting), ["batch_size"] if "batch_size" in varying else [])

    def curves_of(points: Mapping[str, list[tuple[float, float, float]]]) -> list[list[tuple[str, pd.DataFrame]]]:
        return [
            [
                (method, mean_curve([points[key] for key in panel[panel.method == method].key]))
                for method in method_order(panel.method)
            ]
            for panel in (select(scored, setting).loc[labels] for _, labels in panels)
        ]

    curves = curves_of(progress)
    axes_to_draw = [("seconds", "attack time (s)", "convergence_seconds", curves)]
    axes_to_draw.append(("iteration", "iteration", "convergence_iterations", curves))
    if by_evaluations is not None and all(by_evaluations.get(key) for key in scored.key):
        # the curve's "iteration" column then holds the evaluation count
        axes_to_draw.append(("iteration", "gradient evaluations", "convergence_evaluations", curves_of(by_evaluations)))
    from matplotlib.ticker import MaxNLocator

    styles = method_styles(scored.method)
    made = []
    for x_name, x_label, stem, curves in axes_to_draw:
        figure, axes = new_figure(len(panels))
        log = use_log((v for panel in curves for _, c in panel for v in c[x_name]), 50)
        for ax, (panel_setting, _), panel in zip(axes.flat, panels, curves, strict=False):
            for method, curve in panel:
                curve = curve[curve[x_name] > 0] if log else curve
                style = styles[method]
                ax.plot(
                    curve[x_name],
                    curve["psnr"],
                    color=style.colour,
                    marker=style.marker if len(curve) <= 15 else None,
                    linestyle=style.line,
                    label=method,
                )
                band = curve.dropna(subset=["low", "high"])
                if len(band):  # 95% CI over seeds, where there is more than one
                    ax.fill_between(band[x_name], band["low"], band["high"], color=style.colour, alpha=0.2, linewidth=0)
            draw_floors(ax, floors(select(everything, panel_setting), "psnr"))
            if log:
                log_axis(ax, "x")
            elif x_name == "iteration":
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if panel_setting:
                ax.set_title(setting_text(panel_setting))
        for ax in axes[:, 0]:
            ax.set_ylabel("PSNR (dB)")
        for ax in axes[-1, :]:
            ax.set_xlabel(x_label)
        legend(figure, axes)
        made.append((stem, figure, setting))
    return made


def reconstruction_figure(ok: pd.DataFrame, out_dir: Path) -> tuple[Figure, dict[str, Any]] | None:
    """Ground truth and each method's reconstruction of one batch, composed from the trials' strips."""
    from matplotlib.figure import Figure
    from matplotlib.image import imread

    strips = out_dir / "strips"

    def has_strips(key: Any) -> bool:
        return (strips / f"{key}-truth.png").is_file() and (strips / f"{key}-reconstruction.png").is_file()

    data = ok[[has_strips(k) for k in ok.key]]
    if data.empty:
        return None
    batch_columns = [*AXES, "seed"]  # same data, model and seed: the same ground-truth batch
    found = groups(data, batch_columns)

    def preference(key: tuple) -> tuple:
        # most methods first, then the largest batch (more to see), then display order
        size = key[batch_columns.index("batch_size")]
        return (-data.loc[found[key], "method"].nunique(), -(size if isinstance(size, (int, float)) else 0))

    best = min(found, key=preference)
    batch = data.loc[found[best]]
    methods = method_order(batch.method)
    first = {m: batch[batch.method == m].iloc[0] for m in methods}
    truth = imread(strips / f"{first[methods[0]].key}-truth.png")
    rows = [("ground truth", truth)]
    for method in methods:
        image = imread(strips / f"{first[method].key}-reconstruction.png")
        psnr = first[method].psnr
        rows.append((f"{method}\n{psnr:.1f} dB" if math.isfinite(psnr) else method, image))
    height, width = truth.shape[:2]
    images = max(1, round(width / max(height, 1)))  # strips are one row of square images
    side = min(0.55, (SINGLE_COLUMN_IN - 0.8) / images)  # inches per image, so the figure fits one column
    figure = Figure(figsize=(0.8 + side * images, side * len(rows) * 1.08))
    axes = figure.subplots(len(rows), 1, squeeze=False)[:, 0]
    figure.subplots_adjust(left=0.8 / (0.8 + side * images), right=1, top=1, bottom=0, hspace=0.08)
    for ax, (label, image) in zip(axes, rows, strict=True):
        ax.imshow(image, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_ylabel(label, rotation=0, ha="right", va="center", labelpad=4)
    setting = {
        c: v for c, v in zip(batch_columns, best, strict=True) if c in ("dataset", "batch_size", "dup_ratio", "seed")
    }
    return figure, setting


def write_figures(
    out_dir: Path, trials: pd.DataFrame, records: Sequence[Mapping[str, Any]] | None = None
) -> tuple[list[FigureEntry], list[str]]:
    """Draw every figure that the data supports into ``out_dir/figures``; returns (figures, problems).

    A figure that fails to draw is reported, not raised: the runner calls this after a long sweep,
    and one odd record must not cost the tables. ``records`` is accepted for compatibility: the
    trials frame carries each trial's progress.
    """
    folder = out_dir / "figures"
    # a method name is what every figure keys its colour on; a record without one is in the tables only
    ok = trials[(trials.status == "ok").to_numpy() & np.array([isinstance(m, str) for m in trials.method], dtype=bool)]
    varying = [c for c in AXES if len({normalised(v) for v in ok[c]}) > 1]
    progress = {key: progress_points(points) for key, points in zip(ok.key, ok.progress, strict=True)}
    by_evaluations = {key: evaluation_points(points) for key, points in zip(ok.key, ok.progress, strict=True)}
    entries: list[FigureEntry] = []
    problems: list[str] = []

    def draw(stem: str, build: Callable[[], Any], caption: Callable[[Any], str]) -> None:
        try:
            with figure_style():
                made = build()
                if made is None:
                    return
                figure, extra = made if isinstance(made, tuple) else (made, None)
                save(figure, folder, stem)
            entries.append(FigureEntry(stem, caption(extra)))
        except Exception as error:  # noqa: BLE001 - see the docstring
            problems.append(f"{stem}: {type(error).__name__}: {error}")
            print(f"warning: figure {stem} not drawn ({type(error).__name__}: {error})", file=sys.stderr)

    def where(setting: Mapping[str, Any] | None) -> str:
        return f" ({setting_text(setting)})" if setting else ""

    floors_note = " Dashed lines: the reference methods, which use no gradient, and for PSNR the flat-colour oracle."
    if len(ok):
        for x_axis, name in (("batch_size", "batch size"), ("dup_ratio", "duplicate-label ratio")):
            if x_axis not in varying:
                continue
            for metric in PLOTTED:
                draw(
                    f"{metric}_vs_{x_axis}",
                    lambda x_axis=x_axis, metric=metric: metric_figure(ok, x_axis, metric, varying),
                    lambda _, metric=metric, name=name: (
                        f"Mean of {METRIC_NAMES[metric]} against {name}, with its 95% bootstrap CI over images x seeds."
                        + floors_note
                    ),
                )
        draw("attack_time", lambda: time_figure(ok, varying), lambda s: f"Attack time per method, 95% CI{where(s)}.")
        for stem, figure, setting in safe_convergence(ok, progress, varying, problems, by_evaluations):
            draw(
                stem,
                lambda figure=figure, setting=setting: (figure, setting),
                lambda s, stem=stem: (
                    "PSNR of the running reconstruction against "
                    + {"seconds": "attack time", "iterations": "iterations", "evaluations": "gradient evaluations"}[
                        stem.rsplit("_", 1)[1]
                    ]
                    + f", mean over seeds (band: 95% CI){where(s)}."
                    + floors_note
                ),
            )
        draw(
            "reconstructions",
            lambda: reconstruction_figure(ok, out_dir),
            lambda s: f"Ground truth and each method's reconstruction of one batch{where(s)}.",
        )
    # a figure the data no longer supports must not linger from an earlier report
    made = {e.stem for e in entries}
    for stem in FIGURE_STEMS:
        if stem not in made:
            for suffix in (".png", ".pdf"):
                (folder / f"{stem}{suffix}").unlink(missing_ok=True)
    return entries, problems


def safe_convergence(
    ok: pd.DataFrame,
    progress: Mapping[str, Any],
    varying: Sequence[str],
    problems: list[str],
    by_evaluations: Mapping[str, Any] | None = None,
) -> list[tuple[str, Figure, dict[str, Any]]]:
    try:
        with figure_style():
            return convergence_figures(ok, progress, varying, by_evaluations)
    except Exception as error:  # noqa: BLE001 - as in write_figures
        problems.append(f"convergence: {type(error).__name__}: {error}")
        print(f"warning: convergence figures not drawn ({type(error).__name__}: {error})", file=sys.stderr)
        return []
