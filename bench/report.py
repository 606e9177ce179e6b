"""Tables, figures and a report from a results folder: ``python -m bench.report RESULTS_DIR [RESULTS_DIR_B]``.

One folder: reads its trial records and writes ``trials.csv`` (one row per trial, every status),
``summary.csv``/``summary.md``/``summary.tex`` (mean ± std over seeds per method and swept setting, with
counts of ok, failed and skipped trials), ``figures/*.png|pdf`` and ``report.md``. Two folders A B:
prints the per-metric deltas B − A for the settings both hold, and writes nothing.
See ``docs/report.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bench.records import load_records, write_atomic

# matplotlib's PDF backend subsets fonts with fontTools, which logs every font table it prunes at INFO;
# under Hydra's INFO root logger that is ~200 lines per report
logging.getLogger("fontTools").setLevel(logging.WARNING)

if TYPE_CHECKING:  # matplotlib is imported lazily: the tables must not pay for it
    from matplotlib.figure import Figure

METRICS = ("psnr", "ssim", "lpips", "label_accuracy", "attack_seconds", "seconds_per_iteration")
AXES = (
    "variant",
    "dataset",
    "model",
    "model_state",
    "profile",
    "labels_known",
    "client_mode",
    "composition",
    "batch_size",
    "dup_ratio",
)
GROUP = ("method", *AXES)
ALWAYS = ("method", "batch_size", "dup_ratio")  # grouping columns shown even when they do not vary
TRIAL_COLUMNS = (
    *GROUP,
    "seed",
    "status",
    "reason",
    *METRICS,
    "iterations",
    "trial_seconds",
    "device",
    "git_commit",
    "created",
    "key",
)
STATUSES = ("ok", "failed", "skipped")
PLOTTED = ("psnr", "ssim", "lpips", "label_accuracy")  # metrics drawn against batch size / duplicate ratio

METRIC_NAMES = {"psnr": "PSNR (dB)", "ssim": "SSIM", "lpips": "LPIPS", "label_accuracy": "label accuracy"}  # axes
# label for Markdown, label for LaTeX, decimals (None: three significant digits, for timings that span decades)
METRIC_INFO: dict[str, tuple[str, str, int | None]] = {
    "psnr": ("PSNR (dB)", r"PSNR (dB) $\uparrow$", 2),
    "ssim": ("SSIM", r"SSIM $\uparrow$", 3),
    "lpips": ("LPIPS", r"LPIPS $\downarrow$", 3),
    "label_accuracy": ("label acc.", r"Label acc.\ $\uparrow$", 3),
    "attack_seconds": ("attack s", r"Time (s)", None),
    "seconds_per_iteration": ("ms/iter", r"ms/iter", None),
}
# the tables show seconds per iteration in milliseconds (readable digits); the CSVs keep seconds
DISPLAY_SCALE = {"seconds_per_iteration": 1000.0}
AXIS_LABELS = {
    "method": ("method", "Method"),
    "variant": ("variant", "Variant"),
    "dataset": ("dataset", "Dataset"),
    "model": ("model", "Model"),
    "model_state": ("model state", "State"),
    "profile": ("profile", "Profile"),
    "labels_known": ("labels known", "Labels known"),
    "client_mode": ("client mode", "Client mode"),
    "composition": ("composition", "Composition"),
    "batch_size": ("B", "$B$"),
    "dup_ratio": ("dup. ratio", r"Dup.\ ratio"),
}
AXIS_SHORT = {"batch_size": "B", "dup_ratio": "r", "labels_known": "labels known", "model_state": "state"}

# Okabe-Ito: distinguishable with the common colour-vision deficiencies and in greyscale print
OKABE_ITO = {
    "orange": "#E69F00",
    "sky": "#56B4E9",
    "green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "purple": "#CC79A7",
    "black": "#000000",
}
METHOD_ORDER = ("dlg", "idlg", "ig", "gradinversion", "afgi")
KNOWN_STYLES = {
    "dlg": (OKABE_ITO["blue"], "o"),
    "idlg": (OKABE_ITO["vermillion"], "s"),
    "ig": (OKABE_ITO["green"], "^"),
    "gradinversion": (OKABE_ITO["purple"], "D"),
    "afgi": (OKABE_ITO["orange"], "v"),
}
# unknown methods take these in sorted-name order; yellow is last because it is faint on white
EXTRA_COLOURS = (OKABE_ITO["sky"], OKABE_ITO["black"], "#7F7F7F", "#8C564B", "#BCBD22", OKABE_ITO["yellow"])
EXTRA_MARKERS = ("P", "X", "*", "h", "<", ">", "p", "d")

SINGLE_COLUMN_IN = 3.4
DOUBLE_COLUMN_IN = 7.0
DPI = 200
MAX_PANELS = 9
STYLE: dict[str, Any] = {
    "figure.figsize": (SINGLE_COLUMN_IN, 2.3),
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "lines.linewidth": 1.2,
    "lines.markersize": 4,
    "errorbar.capsize": 2,
    "axes.linewidth": 0.6,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "axes.grid": True,
    "grid.linewidth": 0.4,
    "grid.alpha": 0.4,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "pdf.fonttype": 42,  # TrueType fonts embedded: journals reject Type 3
    "ps.fonttype": 42,
    "savefig.dpi": DPI,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.02,
}


@dataclass(frozen=True)
class MethodStyle:
    colour: str
    marker: str


@dataclass(frozen=True)
class FigureEntry:
    stem: str
    caption: str


# ----------------------------------------------------------------------------- values


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _number(value: Any) -> float:
    """A metric as a float: records store NaN as null and infinities as the strings "inf"/"-inf"."""
    if _missing(value) or isinstance(value, bool):
        return math.nan
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _norm(value: Any) -> Any:
    """A grouping value that hashes consistently: every kind of missing becomes None."""
    if _missing(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def _rank(column: str, value: Any) -> tuple[int, float, str]:
    """Sort key that tolerates mixed types; known methods first, in the order they were published."""
    if value is None:
        return (3, 0.0, "")
    if column == "method" and value in METHOD_ORDER:
        return (0, float(METHOD_ORDER.index(value)), "")
    if isinstance(value, (bool, int, float)):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def _fmt_value(value: Any) -> str:
    value = _norm(value)
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _decimals(metric: str, value: float) -> int:
    fixed = METRIC_INFO[metric][2]
    if fixed is not None:
        return fixed
    if not math.isfinite(value) or value == 0:
        return 2
    return min(6, max(0, 2 - math.floor(math.log10(abs(value)))))


def _cell(mean: float, std: float, metric: str, pm: str = " ± ") -> str:
    scale = DISPLAY_SCALE.get(metric, 1.0)
    mean, std = _number(mean) * scale, _number(std) * scale
    if math.isnan(mean):
        return "n/a"
    if math.isinf(mean):
        return "inf" if mean > 0 else "-inf"
    digits = _decimals(metric, mean)
    if math.isnan(std):  # one seed: a spread of zero would be a claim the data cannot make
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f}{pm}{std:.{digits}f}"


def _delta_cell(delta: float, metric: str) -> str:
    delta = _number(delta) * DISPLAY_SCALE.get(metric, 1.0)
    if math.isnan(delta):
        return "n/a"
    if math.isinf(delta):
        return "+inf" if delta > 0 else "-inf"
    return f"{delta + 0.0:+.{_decimals(metric, delta)}f}"  # + 0.0 turns -0.0 into 0.0


def _md_escape(text: Any) -> str:
    return str(text).replace("|", r"\|").replace("\r", " ").replace("\n", " ")


_TEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: Any) -> str:
    """Escape LaTeX's special characters (method names such as ``my_attack`` would break the table)."""
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in str(text))


# ----------------------------------------------------------------------------- tables


def _trial_row(record: Mapping[str, Any]) -> dict[str, Any]:
    config = record.get("config") if isinstance(record.get("config"), Mapping) else {}
    row = {column: record.get(column) for column in TRIAL_COLUMNS if column != "variant"}
    if row["client_mode"] is None:  # the record keeps it only inside its config
        row["client_mode"] = config.get("client_mode")
    for column in (*METRICS, "trial_seconds"):
        row[column] = _number(row[column])
    return row


def _method_options(record: Mapping[str, Any]) -> dict[str, Any]:
    config = record.get("config") if isinstance(record.get("config"), Mapping) else {}
    options = config.get("method") if isinstance(config.get("method"), Mapping) else {}
    return {k: v for k, v in options.items() if k not in ("name", "iterations")}


def _variants(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Per record, the method options that differ between records of the same method (e.g. an ablation)."""
    by_method: dict[Any, list[dict[str, Any]]] = {}
    options = [_method_options(r) for r in records]
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


def _trials_frame(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    variants = _variants(records)
    rows = sorted(
        (_trial_row(r) | {"variant": v} for r, v in zip(records, variants, strict=True)),
        key=lambda row: tuple(_rank(c, _norm(row[c])) for c in (*AXES, "method", "seed")),
    )
    numeric = {*METRICS, "trial_seconds"}
    # object dtype keeps integers as integers next to missing values (a float column would print 1.0)
    return pd.DataFrame(
        {c: pd.Series([row[c] for row in rows], dtype=float if c in numeric else object) for c in TRIAL_COLUMNS}
    )


def trials_table(out_dir: Path | str) -> pd.DataFrame:
    """One row per trial (every status), with the main scalar columns; metrics are floats (NaN when absent)."""
    return _trials_frame(load_records(Path(out_dir)))


def swept_axes(trials: pd.DataFrame) -> list[str]:
    """The grouping columns besides method: those that vary, plus batch size and duplicate ratio always."""
    return [c for c in AXES if c in ALWAYS or len({_norm(v) for v in trials[c]}) > 1]


def _groups(frame: pd.DataFrame, columns: Sequence[str]) -> dict[tuple, list[Any]]:
    """Row labels by the values of ``columns``, in display order (missing values form their own group)."""
    found: dict[tuple, list[Any]] = {}
    for label, values in zip(frame.index, frame[list(columns)].itertuples(index=False, name=None), strict=True):
        found.setdefault(tuple(_norm(v) for v in values), []).append(label)
    # settings first, method last: rows of one setting sit together, so methods compare at a glance
    order = sorted(columns, key=lambda c: c == "method")
    positions = [list(columns).index(c) for c in order]
    return dict(sorted(found.items(), key=lambda kv: tuple(_rank(order[i], kv[0][p]) for i, p in enumerate(positions))))


def _mean_std(values: pd.Series) -> tuple[float, float]:
    values = values.dropna()
    if values.empty:
        return math.nan, math.nan
    mean = float(values.mean())
    # the sample std over seeds; undefined for one seed (NaN), never a made-up zero
    std = float(values.std(ddof=1)) if len(values) > 1 and math.isfinite(mean) else math.nan
    return mean, std


def summary_table(trials: pd.DataFrame, axes: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean and std over seeds of every metric (ok trials only), plus trial counts by status.

    ``axes`` are the grouping columns besides method (default: :func:`swept_axes`).
    """
    axes = list(swept_axes(trials) if axes is None else axes)
    keys = ["method", *axes]
    columns = [*keys, *(f"{m}_{s}" for m in METRICS for s in ("mean", "std")), *(f"n_{s}" for s in STATUSES)]
    rows = []
    for values, labels in _groups(trials, keys).items():
        group = trials.loc[labels]
        ok = group[group.status == "ok"]
        row: dict[str, Any] = dict(zip(keys, values, strict=True))
        for metric in METRICS:
            row[f"{metric}_mean"], row[f"{metric}_std"] = _mean_std(ok[metric])
        for status in STATUSES:
            row[f"n_{status}"] = int((group.status == status).sum())
        rows.append(row)
    frame = pd.DataFrame(rows, columns=columns)
    for column in keys:
        frame[column] = frame[column].astype(object)
    return frame


def _shown_metrics(summary: pd.DataFrame) -> list[str]:
    # a metric with no value anywhere (LPIPS without its weights) would be a column of n/a
    return [m for m in METRICS if summary[f"{m}_mean"].notna().any()] if len(summary) else list(METRICS)


def _key_columns(summary: pd.DataFrame) -> list[str]:
    return [c for c in summary.columns if not c.endswith(("_mean", "_std")) and not c.startswith("n_")]


def markdown_summary(summary: pd.DataFrame) -> str:
    """The summary as a Markdown table (mean ± std; the mean alone where one seed leaves std undefined)."""
    if summary.empty:
        return "_No trials._\n"
    keys = _key_columns(summary)
    shown = _shown_metrics(summary)
    header = [AXIS_LABELS.get(k, (k, k))[0] for k in keys] + [METRIC_INFO[m][0] for m in shown]
    header += ["ok", "failed", "skipped"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in summary.iterrows():
        cells = [_md_escape(_fmt_value(row[k])) for k in keys]
        cells += [_cell(row[f"{m}_mean"], row[f"{m}_std"], m) for m in shown]
        cells += [str(row[f"n_{s}"]) for s in STATUSES]
        lines.append("| " + " | ".join(cells) + " |")
    missing = [METRIC_INFO[m][0] for m in METRICS if m not in shown]
    note = f"\n_Not shown, no values: {', '.join(missing)}._\n" if missing else ""
    return "\n".join(lines) + "\n" + note


def latex_summary(summary: pd.DataFrame) -> str:
    """The summary as a booktabs ``tabular`` to ``\\input`` inside a paper's ``table`` environment."""
    head = "% gia-bench summary: mean $\\pm$ sample std over seeds (ok trials). Needs \\usepackage{booktabs}.\n"
    if summary.empty:
        return head + "% no trials\n"
    keys = _key_columns(summary)
    shown = _shown_metrics(summary)
    # failure counts earn a column only where something failed, to keep the paper table narrow
    counts = ["ok"] + [s for s in ("failed", "skipped") if summary[f"n_{s}"].sum() > 0]
    count_labels = {"ok": "$n$", "failed": "Failed", "skipped": "Skipped"}
    header = [AXIS_LABELS.get(k, (k, latex_escape(k)))[1] for k in keys] + [METRIC_INFO[m][1] for m in shown]
    header += [count_labels[s] for s in counts]
    spec = "l" * len(keys) + "r" * (len(shown) + len(counts))
    lines = [head.rstrip("\n"), f"\\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(header) + r" \\", r"\midrule"]
    setting_keys = [k for k in keys if k != "method"]
    previous = None
    for _, row in summary.iterrows():
        setting = tuple(_norm(row[k]) for k in setting_keys)
        if previous is not None and setting != previous and "method" in keys:
            lines.append(r"\midrule")  # one block per setting, methods compared inside it
        previous = setting
        cells = [latex_escape(_fmt_value(row[k])).replace("—", "--") for k in keys]
        cells += [_cell(row[f"{m}_mean"], row[f"{m}_std"], m, pm=r" $\pm$ ") for m in shown]
        cells += [str(row[f"n_{s}"]) for s in counts]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- figures


def method_styles(names: Iterable[str]) -> dict[str, MethodStyle]:
    """Colour and marker per method: fixed for the known methods, the extras in sorted-name order for others."""
    names = set(names)
    styles = {name: MethodStyle(*KNOWN_STYLES[name]) for name in names if name in KNOWN_STYLES}
    for i, name in enumerate(sorted(n for n in names if n not in KNOWN_STYLES)):
        styles[name] = MethodStyle(EXTRA_COLOURS[i % len(EXTRA_COLOURS)], EXTRA_MARKERS[i % len(EXTRA_MARKERS)])
    return styles


def _method_order(names: Iterable[Any]) -> list[Any]:
    return sorted(set(names), key=lambda n: _rank("method", _norm(n)))


@contextlib.contextmanager
def figure_style() -> Iterator[None]:
    """Paper-sized rcParams, set only inside the block so that importing this module changes nothing."""
    import matplotlib

    with matplotlib.rc_context(STYLE):
        yield


def _new_figure(panels: int = 1) -> tuple[Figure, np.ndarray]:
    """One column wide for up to two panels (stacked), two columns wide with three panels a row beyond."""
    # Figure objects, not pyplot: no global figure registry to leak into and no GUI backend to pick
    from matplotlib.figure import Figure

    ncols = 1 if panels <= 2 else 3
    nrows = math.ceil(panels / ncols)
    width = SINGLE_COLUMN_IN if panels <= 2 else DOUBLE_COLUMN_IN
    height = 2.3 if panels == 1 else 1.7 * nrows + 0.4
    figure = Figure(figsize=(width, height), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False, sharey=True)
    for ax in axes.flat[panels:]:
        ax.set_visible(False)
    return figure, axes


def _save(figure: Figure, folder: Path, stem: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    figure.savefig(folder / f"{stem}.png", dpi=DPI)
    # no creation date: the same results give the same bytes
    figure.savefig(folder / f"{stem}.pdf", metadata={"CreationDate": None})
    figure.clear()


def _legend(figure: Figure, axes: np.ndarray) -> None:
    handles: dict[str, Any] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    order = _method_order(handles)  # the published order, whichever panel met a method first
    if handles:
        figure.legend(
            [handles[name] for name in order],
            order,
            loc="outside upper center",
            ncols=min(len(handles), 5),
            handlelength=1.6,
            columnspacing=1.0,
        )


def _log_axis(ax: Any, which: str) -> None:
    """Log scale labelled with plain numbers (1, 10, 100), and no labels on the minor ticks, which crowd."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    getattr(ax, f"set_{which}scale")("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def _setting_text(setting: Mapping[str, Any]) -> str:
    return ", ".join(f"{AXIS_SHORT.get(k, k)}={_fmt_value(v)}" for k, v in setting.items())


def _facets(frame: pd.DataFrame, columns: Sequence[str]) -> list[tuple[dict[str, Any], list[Any]]]:
    if not columns:
        return [({}, list(frame.index))]
    found = _groups(frame, columns)
    return [(dict(zip(columns, key, strict=True)), labels) for key, labels in found.items()][:MAX_PANELS]


def _representative(frame: pd.DataFrame, columns: Sequence[str]) -> dict[str, Any]:
    """The setting of ``columns`` with the most ok trials (ties: the first in display order)."""
    if not columns or frame.empty:
        return {}
    found = _groups(frame, columns)
    best = max(found, key=lambda key: len(found[key]))  # max keeps the first of equals
    return dict(zip(columns, best, strict=True))


def _select(frame: pd.DataFrame, setting: Mapping[str, Any]) -> pd.DataFrame:
    mask = np.ones(len(frame), dtype=bool)
    for column, value in setting.items():
        mask &= np.array([_norm(v) == value for v in frame[column]], dtype=bool)
    return frame[mask]


def _metric_figure(ok: pd.DataFrame, x_axis: str, metric: str, varying: Sequence[str]) -> Figure | None:
    data = ok[np.isfinite(ok[metric].to_numpy(dtype=float))]
    data = data[[isinstance(_norm(v), (int, float)) for v in data[x_axis]]]
    if data.empty:
        return None
    styles = method_styles(data.method)
    facets = _facets(data, [c for c in varying if c != x_axis])
    figure, axes = _new_figure(len(facets))
    xs = sorted({float(_norm(v)) for v in data[x_axis]})
    log2 = x_axis == "batch_size" and min(xs) > 0
    span = (max(xs) - min(xs)) or 1.0
    for ax, (setting, labels) in zip(axes.flat, facets, strict=False):
        panel = data.loc[labels]
        methods = _method_order(panel.method)
        for i, method in enumerate(methods):
            rows = panel[panel.method == method]
            points = [
                (float(key[0]), *_mean_std(rows.loc[idx, metric])) for key, idx in _groups(rows, [x_axis]).items()
            ]
            x, mean, std = (np.array(v, dtype=float) for v in zip(*points, strict=True))
            # a small sideways dodge so that methods with equal values (label accuracy 1.0) stay visible
            shift = (i - (len(methods) - 1) / 2) * 0.05
            x = x * 2**shift if log2 else x + shift * 0.25 * span
            yerr = np.nan_to_num(std, nan=0.0)
            style = styles[method]
            ax.errorbar(
                x,
                mean,
                yerr=yerr if yerr.any() else None,
                color=style.colour,
                marker=style.marker,
                label=method,
                elinewidth=0.8,
            )
        if log2:
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.set_xticks([], minor=True)
        if setting:
            ax.set_title(_setting_text(setting))
        if metric == "label_accuracy":
            ax.set_ylim(-0.03, 1.03)
    for ax in axes[:, 0]:
        ax.set_ylabel(METRIC_NAMES[metric])
    for ax in axes[-1, :]:
        ax.set_xlabel("batch size" if x_axis == "batch_size" else "duplicate-label ratio")
    _legend(figure, axes)
    return figure


def _use_log(values: Iterable[float], ratio: float) -> bool:
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    return bool(positive) and max(positive) / min(positive) > ratio


def _time_figure(ok: pd.DataFrame, varying: Sequence[str]) -> tuple[Figure, dict[str, Any]] | None:
    data = ok[np.isfinite(ok["attack_seconds"].to_numpy(dtype=float))]
    if data.empty:
        return None
    setting = _representative(data, [c for c in varying if c != "batch_size"])
    data = _select(data, setting)
    methods = _method_order(data.method)
    styles = method_styles(methods)
    sizes = [key[0] for key in _groups(data, ["batch_size"])]
    figure, axes = _new_figure()
    ax = axes[0, 0]
    width = 0.8 / len(methods)
    heights = []
    for i, method in enumerate(methods):
        rows = data[data.method == method]
        label: str | None = method  # one legend entry per method, on its first bar
        for j, size in enumerate(sizes):
            mean, std = _mean_std(_select(rows, {"batch_size": size})["attack_seconds"])
            if math.isnan(mean):
                continue
            heights.append(mean)
            ax.bar(
                j + (i - (len(methods) - 1) / 2) * width,
                mean,
                width=width * 0.9,
                yerr=None if math.isnan(std) else std,
                color=styles[method].colour,
                label=label,
                error_kw={"elinewidth": 0.8, "capsize": 2},
            )
            label = None
    if _use_log(heights, 30):  # methods differ by orders of magnitude (DLG vs IG budgets)
        _log_axis(ax, "y")
    if len(sizes) > 1:
        ax.set_xticks(range(len(sizes)), [_fmt_value(s) for s in sizes])
        ax.set_xlabel("batch size")
        _legend(figure, axes)
    else:
        # one batch size: the methods themselves label the bars, a legend would repeat them
        ax.set_xticks([(i - (len(methods) - 1) / 2) * width for i in range(len(methods))], methods)
    ax.set_ylabel("attack time (s)")
    ax.grid(axis="x", visible=False)
    return figure, setting


def _progress_points(progress: Any) -> list[tuple[float, float, float]]:
    points = []
    for point in progress if isinstance(progress, list) else []:
        if isinstance(point, (list, tuple)) and len(point) >= 3:
            iteration, seconds, value = (_number(p) for p in point[:3])
            if math.isfinite(iteration) and math.isfinite(seconds) and math.isfinite(value):
                points.append((iteration, seconds, value))
    return points


def _convergence_figures(
    ok: pd.DataFrame, progress: Mapping[str, list[tuple[float, float, float]]], varying: Sequence[str]
) -> list[tuple[str, Figure, dict[str, Any]]]:
    data = ok[[bool(progress.get(k)) for k in ok.key]]
    if data.empty:
        return []
    setting = _representative(data, [c for c in varying if c != "batch_size"])
    data = _select(data, setting)
    facets = _facets(data, ["batch_size"] if "batch_size" in varying else [])
    # per panel and method: the mean over seeds at each scored iteration
    curves: list[list[tuple[str, pd.DataFrame]]] = []
    for _, labels in facets:
        panel = data.loc[labels]
        per_method = []
        for method in _method_order(panel.method):
            points = [
                (trial, *point)
                for trial, key in enumerate(panel[panel.method == method].key)
                for point in progress[key]
            ]
            frame = pd.DataFrame(points, columns=["trial", "iteration", "seconds", "psnr"])
            mean = frame.groupby("iteration").agg(
                seconds=("seconds", "mean"), psnr=("psnr", "mean"), std=("psnr", "std"), n=("psnr", "size")
            )
            per_method.append((method, mean.reset_index()))
        curves.append(per_method)
    from matplotlib.ticker import MaxNLocator

    styles = method_styles(data.method)
    made = []
    for x_name, x_label in (("seconds", "attack time (s)"), ("iteration", "iteration")):
        figure, axes = _new_figure(len(facets))
        log = _use_log((v for panel in curves for _, c in panel for v in c[x_name]), 50)
        for ax, (panel_setting, _), panel in zip(axes.flat, facets, curves, strict=False):
            for method, curve in panel:
                curve = curve[curve[x_name] > 0] if log else curve
                style = styles[method]
                ax.plot(
                    curve[x_name],
                    curve["psnr"],
                    color=style.colour,
                    marker=style.marker if len(curve) <= 15 else None,
                    label=method,
                )
                if (curve["n"] > 1).any():  # spread over seeds, where there is more than one
                    low, high = curve["psnr"] - curve["std"].fillna(0), curve["psnr"] + curve["std"].fillna(0)
                    ax.fill_between(curve[x_name], low, high, color=style.colour, alpha=0.2, linewidth=0)
            if log:
                _log_axis(ax, "x")
            elif x_name == "iteration":
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if panel_setting:
                ax.set_title(_setting_text(panel_setting))
        for ax in axes[:, 0]:
            ax.set_ylabel("PSNR (dB)")
        for ax in axes[-1, :]:
            ax.set_xlabel(x_label)
        _legend(figure, axes)
        made.append(("convergence_seconds" if x_name == "seconds" else "convergence_iterations", figure, setting))
    return made


def _reconstruction_figure(ok: pd.DataFrame, out_dir: Path) -> tuple[Figure, dict[str, Any]] | None:
    """Ground truth and each method's reconstruction of one batch, composed from the trials' strips."""
    from matplotlib.image import imread

    strips = out_dir / "strips"

    def has_strips(key: Any) -> bool:
        return (strips / f"{key}-truth.png").is_file() and (strips / f"{key}-reconstruction.png").is_file()

    data = ok[[has_strips(k) for k in ok.key]]
    if data.empty:
        return None
    batch_columns = [*AXES, "seed"]  # same data, model and seed: the same ground-truth batch
    found = _groups(data, batch_columns)

    def preference(key: tuple) -> tuple:
        # most methods first, then the largest batch (more to see), then display order
        size = key[batch_columns.index("batch_size")]
        return (-data.loc[found[key], "method"].nunique(), -(size if isinstance(size, (int, float)) else 0))

    best = min(found, key=preference)
    batch = data.loc[found[best]]
    methods = _method_order(batch.method)
    first = {m: batch[batch.method == m].iloc[0] for m in methods}
    truth = imread(strips / f"{first[methods[0]].key}-truth.png")
    rows = [("ground truth", truth)]
    for method in methods:
        image = imread(strips / f"{first[method].key}-reconstruction.png")
        psnr = first[method].psnr
        rows.append((f"{method}\n{psnr:.1f} dB" if math.isfinite(psnr) else method, image))
    from matplotlib.figure import Figure

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


FIGURE_STEMS = (
    *(f"{m}_vs_{x}" for x in ("batch_size", "dup_ratio") for m in PLOTTED),
    "attack_time",
    "convergence_seconds",
    "convergence_iterations",
    "reconstructions",
)


def write_figures(
    out_dir: Path, trials: pd.DataFrame, records: Sequence[Mapping[str, Any]]
) -> tuple[list[FigureEntry], list[str]]:
    """Draw every figure that the data supports into ``out_dir/figures``; returns (figures, problems).

    A figure that fails to draw is reported, not raised: the runner calls this after a long sweep,
    and one odd record must not cost the tables.
    """
    folder = out_dir / "figures"
    # a method name is what every figure keys its colour on; a record without one is in the tables only
    ok = trials[(trials.status == "ok").to_numpy() & np.array([isinstance(m, str) for m in trials.method], dtype=bool)]
    varying = [c for c in AXES if len({_norm(v) for v in ok[c]}) > 1]
    progress = {r.get("key"): _progress_points(r.get("progress")) for r in records if r.get("status") == "ok"}
    entries: list[FigureEntry] = []
    problems: list[str] = []

    def draw(stem: str, build: Callable[[], Any], caption: Callable[[Any], str]) -> None:
        try:
            with figure_style():
                made = build()
                if made is None:
                    return
                figure, extra = made if isinstance(made, tuple) else (made, None)
                _save(figure, folder, stem)
            entries.append(FigureEntry(stem, caption(extra)))
        except Exception as error:  # noqa: BLE001 - see the docstring
            problems.append(f"{stem}: {type(error).__name__}: {error}")
            print(f"warning: figure {stem} not drawn ({type(error).__name__}: {error})", file=sys.stderr)

    def where(setting: Mapping[str, Any] | None) -> str:
        return f" ({_setting_text(setting)})" if setting else ""

    if len(ok):
        for x_axis, name in (("batch_size", "batch size"), ("dup_ratio", "duplicate-label ratio")):
            if x_axis not in varying:
                continue
            for metric in PLOTTED:
                draw(
                    f"{metric}_vs_{x_axis}",
                    lambda x_axis=x_axis, metric=metric: _metric_figure(ok, x_axis, metric, varying),
                    lambda _, metric=metric, name=name: (
                        f"Mean ± std over seeds of {METRIC_NAMES[metric]} against {name}."
                    ),
                )
        draw("attack_time", lambda: _time_figure(ok, varying), lambda s: f"Attack time per method{where(s)}.")
        for stem, figure, setting in _safe_convergence(ok, progress, varying, problems):
            draw(
                stem,
                lambda figure=figure, setting=setting: (figure, setting),
                lambda s, stem=stem: (
                    "PSNR of the running reconstruction against "
                    + ("attack time" if stem.endswith("seconds") else "iterations")
                    + f", mean over seeds{where(s)}."
                ),
            )
        draw(
            "reconstructions",
            lambda: _reconstruction_figure(ok, out_dir),
            lambda s: f"Ground truth and each method's reconstruction of one batch{where(s)}.",
        )
    # a figure the data no longer supports must not linger from an earlier report
    made = {e.stem for e in entries}
    for stem in FIGURE_STEMS:
        if stem not in made:
            for suffix in (".png", ".pdf"):
                (folder / f"{stem}{suffix}").unlink(missing_ok=True)
    return entries, problems


def _safe_convergence(
    ok: pd.DataFrame, progress: Mapping[str, Any], varying: Sequence[str], problems: list[str]
) -> list[tuple[str, Figure, dict[str, Any]]]:
    try:
        with figure_style():
            return _convergence_figures(ok, progress, varying)
    except Exception as error:  # noqa: BLE001 - as in write_figures
        problems.append(f"convergence: {type(error).__name__}: {error}")
        print(f"warning: convergence figures not drawn ({type(error).__name__}: {error})", file=sys.stderr)
        return []


# ----------------------------------------------------------------------------- report.md


def _distinct(values: Iterable[Any]) -> str:
    counts = Counter("unknown" if _missing(v) else str(v) for v in values)
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
        lines.append(f"| {package} | {_md_escape(_distinct(values))} |")
    for field, label in (("git_commit", "git commit"), ("device", "device"), ("python", "python")):
        lines.append(f"| {label} | {_md_escape(_distinct(r.get(field) for r in records))} |")
    return "\n".join(lines) + "\n"


def _problem_trials(trials: pd.DataFrame) -> str:
    bad = trials[trials.status != "ok"]
    if bad.empty:
        return "None: every trial finished.\n"
    axes = ["method", *swept_axes(trials), "seed"]
    header = ["status", *(AXIS_LABELS.get(c, (c,))[0] for c in axes), "reason", "key"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in bad.iterrows():
        cells = [
            _fmt_value(row.status),
            *(_fmt_value(row[c]) for c in axes),
            _fmt_value(row.reason),
            _fmt_value(row.key),
        ]
        lines.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def report_markdown(
    out_dir: Path,
    trials: pd.DataFrame,
    summary_md: str,
    figures: Sequence[FigureEntry],
    problems: Sequence[str],
    records: Sequence[Mapping[str, Any]],
) -> str:
    counts = {s: int((trials.status == s).sum()) for s in STATUSES}
    other = len(trials) - sum(counts.values())
    fixed = [c for c in AXES if c != "variant" and len({_norm(v) for v in trials[c]}) <= 1]
    fixed_text = ", ".join(f"{AXIS_LABELS[c][0]} {_fmt_value(trials[c].iloc[0])}" for c in fixed) if len(trials) else ""
    parts = [
        f"# gia-bench report: {out_dir.resolve().name}\n",
        f"{len(trials)} trials: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped"
        + (f", {other} with another status" if other else "")
        + f". Methods: {', '.join(map(str, _method_order(trials.method))) or 'none'}."
        + (f" Fixed settings: {fixed_text}." if fixed_text else "")
        + "\n",
        "## Summary\n",
        "Tables: [summary.csv](summary.csv) · [summary.md](summary.md) · [summary.tex](summary.tex) "
        "(booktabs, for `\\input`) · [trials.csv](trials.csv) (one row per trial).\n",
        "Mean ± sample std over seeds of the ok trials; with one ok seed the mean alone. "
        "Failed and skipped trials are counted, never averaged.\n",
        summary_md,
    ]
    if len(trials) and trials["lpips"].isna().all():
        parts.append("LPIPS has no values: the trials ran without the AlexNet weights (see README).\n")
    parts.append("## Figures\n")
    if figures:
        for entry in figures:
            parts.append(
                f"![{entry.caption}](figures/{entry.stem}.png)\n\n"
                f"{entry.caption} [PNG](figures/{entry.stem}.png) · [PDF](figures/{entry.stem}.pdf)\n"
            )
    else:
        parts.append("No figures: no trial finished.\n")
    if problems:
        parts.append("Not drawn:\n\n" + "".join(f"- {_md_escape(p)}\n" for p in problems))
    parts += ["## Failed and skipped trials\n", _problem_trials(trials), "## Environment\n", environment_table(records)]
    return "\n".join(parts)


def _write(path: Path, text: str) -> None:
    write_atomic(path, text)
    path.chmod(0o644)  # the temporary file behind the atomic write is private (0600); reports are for sharing


def label_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Label accuracy (mean over seeds): one row per (composition, B, r) cell, one column per strategy and model state.

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
            (composition != "even", composition, batch, _number(ratio)),
            {"composition": composition, "B": batch, "r": _fmt_value(ratio)},
        )
        row[f"{method} ({state})"] = value
    ordered = [f"{method} ({state})" for state, method in sorted(columns, key=lambda c: (c[0] != "untrained", c))]
    table = [rows[key] for key in sorted(rows)]
    return pd.DataFrame(table, columns=["composition", "B", "r", *ordered]).fillna("")


def _markdown_table(frame: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False, name=None)]
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path | str) -> str:
    """Write the tables, figures and report.md for ``out_dir`` and return the Markdown summary."""
    out_dir = Path(out_dir)
    records = load_records(out_dir)
    trials = _trials_frame(records)
    if records and all(r.get("task") == "labels" for r in records):
        # a label-recovery sweep: no images, so the table of interest is strategy x (B, r)
        labels = label_table(trials)
        _write(out_dir / "trials.csv", trials.to_csv(index=False))
        _write(out_dir / "labels.csv", labels.to_csv(index=False))
        text = _markdown_table(labels)
        _write(out_dir / "labels.md", text)
        return text
    _write(out_dir / "trials.csv", trials.to_csv(index=False))
    summary = summary_table(trials)
    _write(out_dir / "summary.csv", summary.to_csv(index=False))
    text = markdown_summary(summary)
    _write(out_dir / "summary.md", text)
    _write(out_dir / "summary.tex", latex_summary(summary))
    figures, problems = write_figures(out_dir, trials, records)
    _write(out_dir / "report.md", report_markdown(out_dir, trials, text, figures, problems, records))
    return text


# ----------------------------------------------------------------------------- comparison


def compare(a: Path | str, b: Path | str) -> pd.DataFrame:
    """Per-setting metric means of A and B and their deltas B − A, for the settings both hold.

    Settings match on method and every grouping column (not only the swept ones), so that a
    setting of A never meets a different dataset or model in B. Reads only; writes nothing.
    """
    summaries = [summary_table(trials_table(folder), axes=AXES) for folder in (a, b)]
    keys = list(GROUP)
    indexed = [{tuple(_norm(v) for v in row[keys]): row for _, row in s.iterrows()} for s in summaries]
    rows = []
    for key, row_a in indexed[0].items():
        row_b = indexed[1].get(key)
        if row_b is None:
            continue
        row = dict(zip(keys, key, strict=True))
        for metric in METRICS:
            mean_a, mean_b = _number(row_a[f"{metric}_mean"]), _number(row_b[f"{metric}_mean"])
            row[f"{metric}_a"], row[f"{metric}_b"] = mean_a, mean_b
            # inf - inf is NaN in Python: two perfect reconstructions have no meaningful delta
            row[f"{metric}_delta"] = mean_b - mean_a
        row["n_ok_a"], row["n_ok_b"] = int(row_a.n_ok), int(row_b.n_ok)
        rows.append(row)
    columns = [*keys, *(f"{m}_{s}" for m in METRICS for s in ("a", "b", "delta")), "n_ok_a", "n_ok_b"]
    frame = pd.DataFrame(rows, columns=columns)
    frame.attrs["only_a"] = len(set(indexed[0]) - set(indexed[1]))
    frame.attrs["only_b"] = len(set(indexed[1]) - set(indexed[0]))
    return frame


def markdown_comparison(comparison: pd.DataFrame, a: Path | str = "A", b: Path | str = "B") -> str:
    """The deltas B − A as a Markdown table (grouping columns that vary, plus method, B and dup. ratio)."""
    only = f"{comparison.attrs.get('only_a', 0)} only in A, {comparison.attrs.get('only_b', 0)} only in B"
    head = f"B − A, A = {a}, B = {b}: {len(comparison)} settings in both ({only}).\n"
    if comparison.empty:
        return head + "\nNo setting in common: nothing to compare.\n"
    keys = ["method", *(c for c in AXES if c in ALWAYS or len({_norm(v) for v in comparison[c]}) > 1)]
    shown = [m for m in METRICS if comparison[[f"{m}_a", f"{m}_b"]].notna().any().any()]
    header = [AXIS_LABELS[k][0] for k in keys] + [f"Δ {METRIC_INFO[m][0]}" for m in shown] + ["ok A", "ok B"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in comparison.iterrows():
        cells = [_md_escape(_fmt_value(row[k])) for k in keys]
        cells += [_delta_cell(row[f"{m}_delta"], m) for m in shown]
        cells += [str(row.n_ok_a), str(row.n_ok_b)]
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n" + "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.splitlines()[0])
    parser.add_argument(
        "results",
        type=Path,
        nargs="+",
        metavar="RESULTS_DIR",
        help="one folder written by bench.run: write its report; two folders A B: print the deltas B − A",
    )
    args = parser.parse_args(argv)
    if len(args.results) > 2:
        print(f"error: pass one results folder (report) or two (compare), not {len(args.results)}", file=sys.stderr)
        return 2
    for folder in args.results:
        if not (folder / "records").is_dir():
            print(
                f"error: {folder} holds no records/ folder; pass a folder written by python -m bench.run",
                file=sys.stderr,
            )
            return 2
    if len(args.results) == 2:
        a, b = args.results
        print(markdown_comparison(compare(a, b), a, b))
        return 0
    print(write_report(args.results[0]))
    print(f"report: {(args.results[0] / 'report.md').resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
