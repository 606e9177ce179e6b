"""Statistics over trials: means with bootstrap confidence intervals, success rates, paired tests.

A summary cell pools its units: the images of every ok trial (images x seeds) for the metrics a record
holds per image (``per_image_psnr``, and ``per_image_ssim``/``per_image_lpips`` where present), the
trials themselves (seeds) for the others. Every interval is scipy's 95% BCa bootstrap over those units
with a fixed seed, so the same records give the same report; the success rate's is the Wilson score
interval of a proportion.
"""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from bench.report.columns import DEFAULT_SUCCESS_PSNR, PER_IMAGE, SUCCESS
from bench.report.values import as_number, as_numbers

CONFIDENCE = 0.95
RESAMPLES = 9999  # scipy's default
BOOTSTRAP_SEED = 0


def _scipy_stats() -> Any:
    # imported when an interval or a test is computed: scipy.stats costs over a second of start-up, and a sweep
    # with one trial per cell (the smoke sweep, most CLI runs) never needs it
    from scipy import stats

    return stats


def _seed(stats: Any) -> dict[str, np.random.Generator]:
    # scipy 1.15 renamed the seed argument of bootstrap from random_state to rng
    argument = "rng" if "rng" in inspect.signature(stats.bootstrap).parameters else "random_state"
    return {argument: np.random.default_rng(BOOTSTRAP_SEED)}


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int


def bootstrap_ci(values: Sequence[float], resamples: int = RESAMPLES) -> tuple[float, float]:
    """The 95% bootstrap CI of the mean (scipy's BCa; the percentile interval where BCa is undefined).

    (nan, nan) for fewer than two values or any infinite one (a perfect reconstruction's PSNR); (v, v)
    when every value is v, where every resample's mean is v.
    """
    return cached_ci(tuple(float(v) for v in values), resamples)


@functools.lru_cache(maxsize=4096)
def cached_ci(values: tuple[float, ...], resamples: int) -> tuple[float, float]:
    data = np.asarray(values, dtype=float)
    if len(data) < 2 or not np.isfinite(data).all():
        return math.nan, math.nan
    if (data == data[0]).all():
        return float(data[0]), float(data[0])
    stats = _scipy_stats()
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            # BCa's acceleration is undefined for some small samples: scipy warns and returns NaN,
            # and the percentile interval below is the answer then
            warnings.simplefilter("ignore", category=RuntimeWarning)
            warnings.simplefilter("ignore", category=stats.DegenerateDataWarning)
            result = stats.bootstrap(
                (data,),
                np.mean,
                n_resamples=resamples,
                confidence_level=CONFIDENCE,
                method=method,
                **_seed(stats),
            )
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
        if math.isfinite(low) and math.isfinite(high):
            return low, high
    return math.nan, math.nan


def unit_mean(values: Sequence[float]) -> float:
    data = [v for v in values if not math.isnan(v)]
    return float(np.mean(data)) if data else math.nan


def interval(values: Sequence[float]) -> Interval:
    """Mean and 95% CI of the finite-or-infinite values (NaN dropped)."""
    data = [v for v in values if not math.isnan(v)]
    if not data:
        return Interval(math.nan, math.nan, math.nan, 0)
    low, high = bootstrap_ci(data)
    return Interval(float(np.mean(data)), low, high, len(data))


def proportion_interval(values: Sequence[float]) -> Interval:
    """A share of successes (0/1 values) with its 95% Wilson score interval.

    Not the bootstrap: resampling all-failed or all-succeeded images gives a zero-width interval, a
    certainty two images cannot give; Wilson's interval stays honest at 0 and 1.
    """
    data = [v for v in values if not math.isnan(v)]
    if not data:
        return Interval(math.nan, math.nan, math.nan, 0)
    successes = int(sum(data))
    low, high = wilson_interval(successes, len(data))
    return Interval(successes / len(data), low, high, len(data))


def wilson_interval(successes: int, trials: int) -> tuple[float, float]:
    """The 95% Wilson score interval of ``successes`` in ``trials`` (no continuity correction): the formula of
    scipy's ``binomtest(...).proportion_ci(method="wilson")`` (Newcombe 1998), without importing scipy.stats for
    the single-trial cells of every small sweep (tests/test_stats.py checks it against scipy)."""
    z = NormalDist().inv_cdf(0.5 + 0.5 * CONFIDENCE)
    p = successes / trials
    denominator = 2 * (trials + z**2)
    centre = (2 * trials * p + z**2) / denominator
    delta = z / denominator * math.sqrt(4 * trials * p * (1 - p) + z**2)
    low = 0.0 if successes == 0 else centre - delta
    high = 1.0 if successes == trials else centre + delta
    return low, high


def statistic_interval(trials: pd.DataFrame, statistic: str) -> Interval:
    """The mean of ``statistic`` over the trials' units, and its 95% CI."""
    found = units(trials, statistic)
    return proportion_interval(found) if statistic == SUCCESS else interval(found)


def curve_intervals(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column of ``rows`` (seeds x points), the 95% CI of the mean over seeds, in one vectorised call."""
    rows = np.asarray(rows, dtype=float)
    nan = np.full(rows.shape[1], math.nan)
    if rows.shape[0] < 2 or not np.isfinite(rows).all():
        return nan, nan
    stats = _scipy_stats()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        warnings.simplefilter("ignore", category=stats.DegenerateDataWarning)
        result = stats.bootstrap(
            (rows,),
            np.mean,
            axis=0,
            n_resamples=RESAMPLES,
            confidence_level=CONFIDENCE,
            method="percentile",
            **_seed(stats),
        )
    return np.asarray(result.confidence_interval.low), np.asarray(result.confidence_interval.high)


def units(trials: pd.DataFrame, statistic: str) -> list[float]:
    """The values a statistic averages over the trials: per image where the records allow, else per trial."""
    found: list[float] = []
    for _, trial in trials.iterrows():
        found += trial_units(trial, statistic)
    return found


def trial_units(trial: Mapping[str, Any], statistic: str) -> list[float]:
    if statistic == SUCCESS:
        threshold = as_number(trial.get("success_psnr"))
        threshold = DEFAULT_SUCCESS_PSNR if math.isnan(threshold) else threshold
        scores = trial_units(trial, "psnr")
        return [float(score >= threshold) if not math.isnan(score) else math.nan for score in scores]
    per_image = as_numbers(trial.get(PER_IMAGE[statistic])) if statistic in PER_IMAGE else None
    if per_image is not None:
        return per_image
    return [as_number(trial.get(statistic))]


def success_rate(psnr_values: Sequence[float], threshold: float = DEFAULT_SUCCESS_PSNR) -> float:
    """The share of images whose PSNR reaches ``threshold`` dB (NaN without any score)."""
    scored = [v for v in psnr_values if not math.isnan(v)]
    return sum(v >= threshold for v in scored) / len(scored) if scored else math.nan


@dataclass(frozen=True)
class PairedDifference:
    mean_a: float
    mean_b: float
    delta: float  # mean of b - a over the pairs
    low: float
    high: float
    p: float  # Wilcoxon signed-rank, two-sided; NaN where every difference is zero
    n: int


def paired_difference(a: Sequence[float], b: Sequence[float]) -> PairedDifference:
    """B − A over pairs of units: mean difference, its bootstrap CI, and the Wilcoxon signed-rank p-value.

    Pairs where either side is missing or the difference is undefined (inf − inf) are dropped.
    """
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if not math.isnan(y - x)]
    if not pairs:
        return PairedDifference(math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, 0)
    left, right = (np.array(side, dtype=float) for side in zip(*pairs, strict=True))
    differences = right - left
    low, high = bootstrap_ci(differences)
    p = math.nan
    finite = differences[np.isfinite(differences)]
    if np.count_nonzero(finite):  # Wilcoxon drops zero differences: with none left there is no test
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=RuntimeWarning)  # ties at small n: scipy's note
            warnings.simplefilter("ignore", category=UserWarning)
            p = float(_scipy_stats().wilcoxon(finite).pvalue)
    return PairedDifference(
        float(left.mean()), float(right.mean()), float(differences.mean()), low, high, p, len(differences)
    )
