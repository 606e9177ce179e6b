"""Gradient evaluations: counting them, and giving every method the same budget of them (or of seconds).

A gradient evaluation is one pass of one dummy batch through the model that yields the model's
gradient: a forward and a backward pass, double-backward included when the objective is differentiated
through it. The places that make such a pass count it (``methods.optimise.model_gradients`` one per call,
``methods.batched.GroupGradients`` one per batch of its G-batch pass: G restarts or candidates count G),
so L-BFGS's line-search evaluations count as they happen and nothing can be missed by the loop. Label
strategies' forward-only passes (no gradient) do not count.

A ``Meter`` is the running count of one attack; ``metered`` makes one current for a block (the trial
opens one around ``reconstruct``). With a ``Budget`` the shared loop (``methods.optimise``) stops before
a step that would spend more than what is left: ``evaluations:N`` or ``seconds:T`` (the attack's own
seconds; the harness's scoring is paused out). docs/budgets.md says how each method splits a budget.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal

BudgetKind = Literal["evaluations", "seconds"]


@dataclass(frozen=True)
class Budget:
    """What every method may spend on one attack: gradient evaluations or seconds."""

    kind: BudgetKind
    amount: float

    def __post_init__(self) -> None:
        if self.kind not in ("evaluations", "seconds"):
            raise ValueError(f"unknown budget kind {self.kind!r}; use evaluations:N or seconds:T")
        if not self.amount > 0 or not math.isfinite(self.amount):
            raise ValueError(f"a budget must be positive and finite, got {self.amount}")
        if self.kind == "evaluations" and self.amount != int(self.amount):
            raise ValueError(f"an evaluation budget is a whole number, got {self.amount}")

    def __str__(self) -> str:
        amount = int(self.amount) if self.kind == "evaluations" else f"{self.amount:g}"
        return f"{self.kind}:{amount}"

    @classmethod
    def parse(cls, text: str) -> Budget:
        """``evaluations:N`` (N a positive integer) or ``seconds:T`` (T a positive number)."""
        kind, _, amount = str(text).partition(":")
        try:
            value = float(amount)
        except ValueError:
            raise ValueError(f"budget={text!r} is not valid; give evaluations:N or seconds:T") from None
        return cls(kind, value)  # type: ignore[arg-type]


class Meter:
    """The gradient evaluations and seconds one attack has spent, against an optional ``Budget``."""

    def __init__(self, budget: Budget | None = None, clock: Callable[[], float] = time.perf_counter) -> None:
        self.budget = budget
        self.evaluations = 0
        self._clock = clock
        self._start = clock()
        self._paused = 0.0
        # a sub-budget (a share for one of several sequential runs): spend limits relative to these
        self._limit_evaluations = budget.amount if budget and budget.kind == "evaluations" else math.inf
        self._limit_seconds = budget.amount if budget and budget.kind == "seconds" else math.inf

    def count(self, evaluations: int) -> None:
        self.evaluations += evaluations

    def seconds(self) -> float:
        """Seconds since the meter started, less the paused ones (the harness's scoring)."""
        return self._clock() - self._start - self._paused

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Time inside this block is not the attack's (e.g. scoring the running reconstruction)."""
        started = self._clock()
        try:
            yield
        finally:
            self._paused += self._clock() - started

    def evaluations_left(self) -> float:
        return self._limit_evaluations - self.evaluations

    def exhausted(self, step_evaluations: int = 0) -> bool:
        """Whether a step that costs ``step_evaluations`` (0: unknown yet) would overspend the budget."""
        if self.seconds() >= self._limit_seconds:
            return True
        return self.evaluations + max(step_evaluations, 1) > self._limit_evaluations

    @contextmanager
    def share(self, parts: int) -> Iterator[None]:
        """Within this block only 1/``parts`` of what is left may be spent (sequential restarts split a budget)."""
        saved = self._limit_evaluations, self._limit_seconds
        if math.isfinite(self._limit_evaluations):
            self._limit_evaluations = self.evaluations + math.floor(self.evaluations_left() / parts)
        if math.isfinite(self._limit_seconds):
            self._limit_seconds = self.seconds() + (self._limit_seconds - self.seconds()) / parts
        try:
            yield
        finally:
            self._limit_evaluations, self._limit_seconds = saved


_current: ContextVar[Meter | None] = ContextVar("gradient_evaluation_meter", default=None)


@contextmanager
def metered(budget: Budget | None = None) -> Iterator[Meter]:
    """A fresh ``Meter`` (with ``budget``) counts every gradient evaluation made inside this block."""
    meter = Meter(budget)
    token = _current.set(meter)
    try:
        yield meter
    finally:
        _current.reset(token)


@contextmanager
def current_or_new_meter() -> Iterator[Meter]:
    """The current meter, or a fresh one without a budget for this block (an attack called outside a trial)."""
    meter = _current.get()
    if meter is not None:
        yield meter
    else:
        with metered() as meter:
            yield meter


def count_evaluations(evaluations: int) -> None:
    """Called by every place that passes dummy batches through the model for their gradient."""
    meter = _current.get()
    if meter is not None:
        meter.count(evaluations)


def evaluations_so_far() -> int:
    """The current meter's count (0 without one): for a progress callback, which is called inside the loop."""
    meter = _current.get()
    return meter.evaluations if meter is not None else 0


@contextmanager
def budget_share(parts: int) -> Iterator[None]:
    """``Meter.share`` on the current meter (nothing without one)."""
    meter = _current.get()
    if meter is None or parts <= 1:
        yield
    else:
        with meter.share(parts):
            yield


def iterations_within(attack: Any, evaluations: int) -> int:
    """The iteration budget with which ``attack`` spends at most ``evaluations`` gradient evaluations.

    A method whose iterations cost more than one evaluation (restarts or candidates side by side, a final
    scoring pass) says so with ``budget_iterations(evaluations)``; without it an iteration costs one evaluation
    at least, and the loop stops at the budget (L-BFGS steps, which spend a varying number).
    """
    rule = getattr(attack, "budget_iterations", None)
    iterations = int(rule(evaluations)) if rule is not None else int(evaluations)
    if iterations < 1:
        least = next(n for n in range(1, 2**20) if rule(n) >= 1)
        raise ValueError(
            f"budget=evaluations:{evaluations} is too small for method {getattr(attack, 'name', attack)!r}: "
            f"one iteration of it costs more; give at least evaluations:{least}"
        )
    return iterations
