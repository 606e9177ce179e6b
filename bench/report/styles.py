"""How figures look: one colour and marker per method, derived from the registry, and the paper rcParams."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from bench.report.order import REFERENCE_NAMES, registered_methods

# Okabe-Ito first (distinguishable with the common colour-vision deficiencies and in greyscale print), then
# further colours for a sixth method on; yellow last because it is faint on white
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#8C564B", "#BCBD22", "#17BECF", "#F0E442")
# a marker list of another length than the palette: the (colour, marker) pairs repeat only after 60 methods
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p")
# reference floors are grey dashed lines: they are a baseline to read against, not a competitor
REFERENCE_COLOURS = ("#000000", "#7F7F7F", "#4D4D4D", "#A6A6A6")
REFERENCE_LINE = "--"
ORACLE_COLOUR = "#8C564B"
ORACLE_LINE = (0, (5, 1.5, 1, 1.5))  # dash-dot: the oracle floor is not a method
ORACLE_LABEL = "flat colour (oracle)"

SINGLE_COLUMN_IN = 3.4
DOUBLE_COLUMN_IN = 7.0
DPI = 200
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
    line: Any = "-"


def method_styles(names: Iterable[str]) -> dict[str, MethodStyle]:
    """Colour and marker per method, the same in every figure and every results folder.

    Registered methods take the palette in their registry order (publication year), so a method's colour
    does not depend on which others ran; methods the registry does not know take the next colours in
    sorted-name order; reference methods are grey and dashed.
    """
    names = set(names)
    registry = registered_methods()
    attacks = [m.name for m in registry if not m.reference]
    # the built-in floors keep their shades whatever else registers; other references follow by name
    registered_references = {m.name for m in registry if m.reference}
    references = [n for n in REFERENCE_NAMES if n in registered_references]
    references += sorted(registered_references - set(REFERENCE_NAMES))
    known = {m.name for m in registry}
    unknown = sorted(n for n in names if n not in known)
    attacks += [n for n in unknown if n not in REFERENCE_NAMES]
    references += [n for n in unknown if n in REFERENCE_NAMES and n not in references]
    styles = {}
    for name in names:
        if name in references:
            i = references.index(name)
            styles[name] = MethodStyle(REFERENCE_COLOURS[i % len(REFERENCE_COLOURS)], MARKERS[-1 - i], REFERENCE_LINE)
        else:
            i = attacks.index(name)
            styles[name] = MethodStyle(PALETTE[i % len(PALETTE)], MARKERS[i % len(MARKERS)])
    return styles


@contextlib.contextmanager
def figure_style() -> Iterator[None]:
    """Paper-sized rcParams, set only inside the block so that importing the report changes nothing."""
    import matplotlib

    with matplotlib.rc_context(STYLE):
        yield
