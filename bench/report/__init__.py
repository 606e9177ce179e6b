"""Tables, figures and a report from a results folder: ``python -m bench.report RESULTS_DIR [RESULTS_DIR_B]``.

One folder: reads its trial records and writes ``trials.csv`` (one row per trial, every status),
``summary.csv``/``summary.md``/``summary.tex`` (per method and swept setting: means with 95% bootstrap
CIs, success rates, the reference floors, and counts of ok, failed and skipped trials),
``figures/*.png|pdf`` and ``report.md``. ``--time-to METHOD`` writes the time-to-METHOD table instead.
Two folders A B: prints B − A per metric over trials paired by (setting, seed, image), with a CI and a
Wilcoxon p-value, and writes nothing. See ``docs/report.md``.

The modules: ``columns`` (vocabulary), ``values`` (parsing and printing), ``order`` (method order and
reference methods, from the registry), ``stats`` (bootstrap CIs, success rate, paired tests), ``tables``,
``styles`` and ``plotting`` and ``figures``, ``document`` (report.md, ``write_report``), ``compare``,
``timeto`` and ``cli``.
"""

from bench.report.cli import main
from bench.report.columns import METRICS, PLOTTED, STATISTICS, STATUSES
from bench.report.compare import compare, markdown_comparison
from bench.report.document import environment_table, write_report
from bench.report.figures import FigureEntry, write_figures
from bench.report.order import is_reference, method_order
from bench.report.stats import bootstrap_ci, paired_difference, success_rate
from bench.report.styles import MethodStyle, figure_style, method_styles
from bench.report.tables import label_table, latex_summary, markdown_summary, summary_table, swept_axes, trials_table
from bench.report.timeto import markdown_time_to, time_to_table
from bench.report.values import latex_escape

__all__ = [
    "METRICS",
    "PLOTTED",
    "STATISTICS",
    "STATUSES",
    "FigureEntry",
    "MethodStyle",
    "bootstrap_ci",
    "compare",
    "environment_table",
    "figure_style",
    "is_reference",
    "label_table",
    "latex_escape",
    "latex_summary",
    "main",
    "markdown_comparison",
    "markdown_summary",
    "markdown_time_to",
    "method_order",
    "method_styles",
    "paired_difference",
    "success_rate",
    "summary_table",
    "swept_axes",
    "time_to_table",
    "trials_table",
    "write_figures",
    "write_report",
]
