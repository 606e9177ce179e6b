"""How bench.perf measures: the clock, device syncs, peak memory, and interleaved A/B statistics."""

from __future__ import annotations

import dataclasses
import math
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from methods.optimise import synchronise

CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}


class Clock:
    """The attack clock of one measuring process: process CPU time ("cpu") or wall time ("wall").

    On a shared machine the wall clock also counts the time other processes hold the core, which swamps
    a 3% difference; process CPU time does not. Ours is timed by its own trace, read through
    ``methods.optimise.trace_clock`` with this same source.
    """

    def __init__(self, kind: str = "wall") -> None:
        if kind not in CLOCKS:
            raise ValueError(f"unknown clock {kind!r}; choose from {', '.join(CLOCKS)}")
        self.kind = kind
        self.read = CLOCKS[kind]

    def __call__(self) -> float:
        return self.read()


def proc_status() -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) of this process in MiB, from /proc (Linux)."""
    values: dict[str, float] = {}
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    values[key] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return values


def reset_peak_rss() -> bool:
    """Reset this process's peak-RSS high-water mark (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def minor_faults() -> int:
    """Minor page faults of this process so far (what glibc's mmap/trim churn costs)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class PeakMemory:
    """Peak memory of the code inside ``with``: CUDA allocator peak, or this process's peak RSS on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.result: dict[str, Any] = {}

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            synchronise(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._reset = reset_peak_rss()
            self._base = proc_status().get("VmRSS", math.nan)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            synchronise(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
            self.result = {
                "measure": "cuda max_memory_allocated",
                "peak_mb": peak,
                "increase_mb": peak - self._base / 2**20,
            }
        else:
            peak = proc_status().get("VmHWM", math.nan)
            self.result = {
                "measure": "peak RSS of the process (VmHWM" + (", reset before the run)" if self._reset else ")"),
                "peak_mb": peak,
                "increase_mb": peak - self._base,
            }


def median(values: Sequence[float]) -> float:
    """Median of the finite values (NaN when there are none)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def relative(a: float, b: float) -> float:
    """|a - b| relative to the larger magnitude (inf when either is not finite)."""
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> tuple[float, Any]:
    """Median wall seconds of ``fn`` over ``repeats`` calls (after one untimed call), and its last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        synchronise(device)
        start = time.perf_counter()
        result = fn()
        synchronise(device)
        times.append(time.perf_counter() - start)
    return median(times), result


@dataclasses.dataclass
class RunResult:
    """One timed optimisation: seconds per iteration, objective per iteration, objective evaluations."""

    seconds_per_iteration: float
    objectives: list[float]
    evaluations: int = 0
    call_seconds: float = math.nan
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def paired(ours: Sequence[float], floor: Sequence[float]) -> dict[str, float]:
    """Medians of two interleaved series, their paired ratios (median and range) and their minima's ratio, in %."""
    ratios = [o / f - 1 for o, f in zip(ours, floor, strict=True) if f > 0]
    return {
        "ours_s_per_iter": median(ours),
        "floor_s_per_iter": median(floor),
        "overhead_pct": 100 * median(ratios) if ratios else math.nan,
        "overhead_min_pct": 100 * min(ratios) if ratios else math.nan,
        "overhead_max_pct": 100 * max(ratios) if ratios else math.nan,
        # best run against best run: on a loaded machine other processes only ever add time, so the minima
        # are the least disturbed estimate of each side's own cost
        "overhead_best_pct": 100 * (min(ours) / min(floor) - 1) if ratios else math.nan,
    }


def interleaved(
    a: Callable[[], RunResult], b: Callable[[], RunResult], pairs: int, *, warmup: bool = True
) -> dict[str, Any]:
    """Run A and B interleaved (ABBA...): median seconds per iteration of each and the median paired ratio b/a."""
    if warmup:
        a()
        b()
    times_a, times_b, ratios = [], [], []
    results: dict[str, RunResult] = {}
    for r in range(pairs):
        order = ("a", "b") if r % 2 == 0 else ("b", "a")
        for who in order:
            results[who] = (a if who == "a" else b)()
        times_a.append(results["a"].seconds_per_iteration)
        times_b.append(results["b"].seconds_per_iteration)
        ratios.append(results["b"].seconds_per_iteration / results["a"].seconds_per_iteration)
    return {
        "a_s_per_iter": median(times_a),
        "b_s_per_iter": median(times_b),
        "b_over_a": median(ratios),
        "pairs": pairs,
        "results": results,
    }
