"""Measure what tests/test_gradient_use.py asserts, over several seeds: the numbers behind its settings and margins.

    python scripts/gradient_use_margins.py                      # every attack, seeds 0-4, the test's settings
    python scripts/gradient_use_margins.py ig afgi --seeds 0 1  # some attacks, some seeds
    python scripts/gradient_use_margins.py ig --iterations 500  # another budget
    python scripts/gradient_use_margins.py --seeds 1 --zero-gradient-term   # the broken variant

Per method and seed it prints the per-image PSNR (dB) of the attack on its true gradient and on a wrong one
(another batch, same model), the grey ``mean`` floor and each image's own flat colour, then the smallest
differences over the seeds, which the test's margins must stay below.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import test_gradient_use as gradient_use  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("methods", nargs="*", default=gradient_use.ATTACKS)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(5)))
    parser.add_argument("--iterations", type=int, help="override the test's budget")
    parser.add_argument("--zero-gradient-term", action="store_true", help="the broken variant the test must catch")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.zero_gradient_term:
        gradient_use.zero_gradient_losses(pytest.MonkeyPatch())
    for method in args.methods:
        if args.iterations:
            setting = gradient_use.SETTINGS[method]
            options = {**setting.options, "iterations": args.iterations}
            gradient_use.SETTINGS[method] = dataclasses.replace(setting, options=options)
        rows = []
        for seed in args.seeds:
            started = time.process_time()
            s = gradient_use.measure(method, seed)
            seconds = time.process_time() - started
            rows.append(s)
            print(
                f"{method:14s} seed {seed}  true {fmt(s.true)}  wrong {fmt(s.wrong)}  mean {fmt(s.mean)}  "
                f"flat {fmt(s.flat)}  ({seconds:.1f} CPU s)",
                flush=True,
            )
        gaps = {
            "true-wrong": [t - w for s in rows for t, w in zip(s.true, s.wrong, strict=True)],
            "true-mean": [t - m for s in rows for t, m in zip(s.true, s.mean, strict=True)],
            "true-flat": [t - f for s in rows for t, f in zip(s.true, s.flat, strict=True)],
        }
        print(f"{method:14s} " + "  ".join(f"{k} min {min(v):.2f} mean {sum(v) / len(v):.2f}" for k, v in gaps.items()))


def fmt(values: list[float]) -> str:
    return "[" + " ".join(f"{v:.2f}" for v in values) + "]"


if __name__ == "__main__":
    main()
