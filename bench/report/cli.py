"""The command line: ``python -m bench.report DIR [--success-psnr DB] [--time-to METHOD]`` or ``... A B``."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from bench.errors import UserError
from bench.report.compare import compare, markdown_comparison
from bench.report.document import write_report, write_text
from bench.report.tables import trials_table
from bench.report.timeto import markdown_time_to, time_to_table


def threshold(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise UserError(f"--success-psnr {text!r} is not a PSNR in dB; give a finite number such as 20")
    return value


def parser() -> argparse.ArgumentParser:
    found = argparse.ArgumentParser(
        prog="python -m bench.report",
        description="Tables, figures and a report from a results folder, or two folders compared (B − A).",
    )
    found.add_argument(
        "results",
        type=Path,
        nargs="+",
        metavar="RESULTS_DIR",
        help="one folder written by bench.run: write its report; two folders A B: print the paired deltas B − A",
    )
    found.add_argument(
        "--success-psnr",
        default=None,
        metavar="DB",
        help="success threshold in dB (a success is an image with PSNR >= DB); default: the records' "
        "success_psnr, else 20",
    )
    found.add_argument(
        "--time-to",
        metavar="METHOD",
        default=None,
        help="instead of the report: when each method's scored progress first reaches METHOD's final PSNR, "
        "relative to METHOD's attack time (writes time_to_METHOD.csv/.md)",
    )
    return found


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return run(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    threshold(args.success_psnr)  # checked before anything is read
    if len(args.results) > 2:
        raise UserError(f"pass one results folder (report) or two (compare), not {len(args.results)}")
    for folder in args.results:
        if not (folder / "records").is_dir():
            raise UserError(f"{folder} holds no records/ folder; pass a folder written by python -m bench.run")
    if len(args.results) == 2:
        if args.time_to:
            raise UserError("--time-to reads one results folder; pass one folder, not two")
        a, b = args.results
        print(markdown_comparison(compare(a, b), a, b))
        return 0
    (folder,) = args.results
    if args.time_to:
        table = time_to_table(trials_table(folder), args.time_to)
        text = markdown_time_to(table)
        stem = f"time_to_{args.time_to}"
        write_text(folder / f"{stem}.csv", table.to_csv(index=False))
        write_text(folder / f"{stem}.md", text)
        print(text)
        print(f"table: {(folder / f'{stem}.md').resolve()}")
        return 0
    print(write_report(folder, threshold(args.success_psnr)))
    print(f"report: {(folder / 'report.md').resolve()}")
    return 0
