"""Building blocks of the report's figures: panels, saving, legends, facets and the reference floors."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bench.report.columns import AXES, AXIS_SHORT, ORACLE
from bench.report.order import is_reference, method_order
from bench.report.stats import unit_mean, units
from bench.report.styles import (
    DOUBLE_COLUMN_IN,
    DPI,
    ORACLE_COLOUR,
    ORACLE_LABEL,
    ORACLE_LINE,
    SINGLE_COLUMN_IN,
    method_styles,
)
from bench.report.tables import groups
from bench.report.values import format_value, normalised

if TYPE_CHECKING:  # matplotlib is imported lazily: the tables must not pay for it
    from matplotlib.figure import Figure

MAX_PANELS = 9


@dataclass(frozen=True)
class Floor:
    label: str
    value: float
    colour: str
    line: Any


def new_figure(panels: int = 1) -> tuple[Figure, np.ndarray]:
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


def save(figure: Figure, folder: Path, stem: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    figure.savefig(folder / f"{stem}.png", dpi=DPI)
    # no creation date: the same results give the same bytes
    figure.savefig(folder / f"{stem}.pdf", metadata={"CreationDate": None})
    figure.clear()


def legend(figure: Figure, axes: np.ndarray) -> None:
    """One legend above the panels: methods in display order, then the floors, whichever panel met them first."""
    handles: dict[str, Any] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    order = method_order(label for label in handles if label != ORACLE_LABEL)
    order += [ORACLE_LABEL] if ORACLE_LABEL in handles else []
    if handles:
        figure.legend(
            [handles[name] for name in order],
            order,
            loc="outside upper center",
            ncols=min(len(handles), 4),
            handlelength=2.0,
            columnspacing=1.0,
        )


def log_axis(ax: Any, which: str) -> None:
    """Log scale labelled with plain numbers (1, 10, 100), and no labels on the minor ticks, which crowd."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    getattr(ax, f"set_{which}scale")("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def use_log(values: Iterable[float], ratio: float) -> bool:
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    return bool(positive) and max(positive) / min(positive) > ratio


def setting_text(setting: Mapping[str, Any]) -> str:
    return ", ".join(f"{AXIS_SHORT.get(k, k)}={format_value(v)}" for k, v in setting.items())


def facets(frame: pd.DataFrame, columns: Sequence[str]) -> list[tuple[dict[str, Any], list[Any]]]:
    if not columns:
        return [({}, list(frame.index))]
    found = groups(frame, columns)
    return [(dict(zip(columns, key, strict=True)), labels) for key, labels in found.items()][:MAX_PANELS]


def representative(frame: pd.DataFrame, columns: Sequence[str]) -> dict[str, Any]:
    """The setting of ``columns`` with the most ok trials (ties: the first in display order)."""
    if not columns or frame.empty:
        return {}
    found = groups(frame, columns)
    best = max(found, key=lambda key: len(found[key]))  # max keeps the first of equals
    return dict(zip(columns, best, strict=True))


def select(frame: pd.DataFrame, setting: Mapping[str, Any]) -> pd.DataFrame:
    mask = np.ones(len(frame), dtype=bool)
    for column, value in setting.items():
        mask &= np.array([normalised(v) == value for v in frame[column]], dtype=bool)
    return frame[mask]


def reference_mask(frame: pd.DataFrame) -> np.ndarray:
    return np.array([is_reference(m) for m in frame.method], dtype=bool)


def floors(panel: pd.DataFrame, metric: str) -> list[Floor]:
    """The reference methods' mean ``metric`` over the panel, and for PSNR the flat-colour oracle's."""
    found = []
    references = panel[reference_mask(panel)]
    styles = method_styles(references.method)
    for method in method_order(references.method):
        value = unit_mean(units(references[references.method == method], metric))
        if math.isfinite(value):
            found.append(Floor(method, value, styles[method].colour, styles[method].line))
    if metric == "psnr" and ORACLE in panel:
        # every method of a seed saw the same images: one oracle value per (setting, seed) is enough
        per_seed = panel.drop_duplicates(subset=[c for c in (*AXES, "seed") if c != "variant" and c in panel])
        value = unit_mean(units(per_seed, ORACLE))
        if math.isfinite(value):
            found.append(Floor(ORACLE_LABEL, value, ORACLE_COLOUR, ORACLE_LINE))
    return found


def draw_floors(ax: Any, found: Sequence[Floor]) -> None:
    for floor in found:
        ax.axhline(floor.value, color=floor.colour, linestyle=floor.line, linewidth=0.9, label=floor.label, zorder=1)
