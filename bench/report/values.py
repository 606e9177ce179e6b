"""Values as records store them, and as the tables print them."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from bench.report.columns import DISPLAY_SCALE, METRIC_INFO


def is_missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def as_number(value: Any) -> float:
    """A metric as a float: records store NaN as null and infinities as the strings "inf"/"-inf"."""
    if is_missing(value) or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def as_numbers(values: Any) -> list[float] | None:
    """A per-image list as floats, or None when the record holds no such list."""
    if not isinstance(values, (list, tuple)) or not values:
        return None
    return [as_number(v) for v in values]


def progress_points(progress: Any) -> list[tuple[float, float, float]]:
    """A record's ``progress`` as (iteration, seconds, psnr) rows, dropping malformed ones."""
    points = []
    for point in progress if isinstance(progress, list) else []:
        if isinstance(point, (list, tuple)) and len(point) >= 3:
            iteration, seconds, value = (as_number(p) for p in point[:3])
            if math.isfinite(iteration) and math.isfinite(seconds) and math.isfinite(value):
                points.append((iteration, seconds, value))
    return points


def evaluation_points(progress: Any) -> list[tuple[float, float, float]]:
    """A record's ``progress`` as (gradient evaluations, seconds, psnr) rows; empty for records before the count."""
    points = []
    for point in progress if isinstance(progress, list) else []:
        if isinstance(point, (list, tuple)) and len(point) >= 4:
            _, seconds, value, evaluations = (as_number(p) for p in point[:4])
            if math.isfinite(evaluations) and math.isfinite(seconds) and math.isfinite(value):
                points.append((evaluations, seconds, value))
    return points


def normalised(value: Any) -> Any:
    """A grouping value that hashes consistently: every kind of missing becomes None."""
    if is_missing(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def format_value(value: Any) -> str:
    value = normalised(value)
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def decimals(metric: str, value: float) -> int:
    fixed = METRIC_INFO[metric][2]
    if fixed is not None:
        return fixed
    if not math.isfinite(value) or value == 0:
        return 2
    return min(6, max(0, 2 - math.floor(math.log10(abs(value)))))


def format_cell(mean: float, low: float, high: float, metric: str, pm: str = " ± ") -> str:
    """``mean ± h``, h half the width of the 95% CI [low, high]; the mean alone where the CI is undefined."""
    scale = DISPLAY_SCALE.get(metric, 1.0)
    mean = as_number(mean) * scale
    if math.isnan(mean):
        return "n/a"
    if math.isinf(mean):
        return "inf" if mean > 0 else "-inf"
    digits = decimals(metric, mean)
    half = (as_number(high) - as_number(low)) * scale / 2
    if not math.isfinite(half):  # one unit: an interval of zero would be a claim the data cannot make
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f}{pm}{half:.{digits}f}"


def format_delta(delta: float, metric: str) -> str:
    delta = as_number(delta) * DISPLAY_SCALE.get(metric, 1.0)
    if math.isnan(delta):
        return "n/a"
    if math.isinf(delta):
        return "+inf" if delta > 0 else "-inf"
    return f"{delta + 0.0:+.{decimals(metric, delta)}f}"  # + 0.0 turns -0.0 into 0.0


def format_p(p: float) -> str:
    p = as_number(p)
    if math.isnan(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def md_escape(text: Any) -> str:
    return str(text).replace("|", r"\|").replace("\r", " ").replace("\n", " ")


TEX_SPECIAL = {
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
    return "".join(TEX_SPECIAL.get(ch, ch) for ch in str(text))


def markdown_table(frame: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(md_escape(v) for v in row) + " |" for row in frame.itertuples(index=False, name=None)]
    return "\n".join(lines) + "\n"
