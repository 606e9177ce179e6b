"""The optimisation loop every optimisation-based attack shares.

A method supplies an objective over its variables; this module owns the
optimiser, learning-rate schedule, signed gradients, Langevin noise, clamping
to the valid image box, the iteration trace, the progress bar and the
harness's scoring callback.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from methods.base import ProgressCallback, TracePoint, device_generator
from methods.budget import count_evaluations, current_or_new_meter
from methods.checkpoint import Stateful, active_checkpointer
from methods.eager_optim import EagerAdam, skip_dynamo_import

skip_dynamo_import()


class DivergenceError(RuntimeError):
    """The objective became NaN or inf during optimisation."""


_trace_clock: ContextVar[Callable[[], float]] = ContextVar("trace_clock", default=time.perf_counter)


@contextmanager
def trace_clock(clock: Callable[[], float]) -> Iterator[None]:
    """Inside this block the trace's seconds are read from ``clock`` instead of ``time.perf_counter``.

    For benchmarks: ``bench.perf`` times on a shared CPU with the process CPU time (``time.process_time``).
    """
    token = _trace_clock.set(clock)
    try:
        yield
    finally:
        _trace_clock.reset(token)


def synchronise(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously), so that a clock read after it is true."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_gradients(
    model: nn.Module, images: Tensor, targets: Tensor, *, create_graph: bool = True
) -> tuple[Tensor, ...]:
    """Gradients of the mean cross-entropy, as the FedSGD client computes them.

    ``targets`` are class indices (B,) or per-sample class probabilities (B, K)
    (DLG's soft labels).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    count_evaluations(1)
    logits = model(images)
    if targets.dtype.is_floating_point:
        loss = -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()
    else:
        loss = F.cross_entropy(logits, targets)
    return torch.autograd.grad(loss, params, create_graph=create_graph)


@dataclass(frozen=True)
class OptimiserConfig:
    """How to optimise; each method file sets its paper's values."""

    optimiser: Literal["adam", "lbfgs"] = "adam"
    lr: float = 0.1
    iterations: int = 100
    signed: bool = False
    schedule: Literal["constant", "step", "cosine"] = "constant"
    # step schedule: multiply the LR by 0.1 at these fractions of the budget (Geiping et al. 2020)
    milestones: tuple[float, ...] = (3 / 8, 5 / 8, 7 / 8)
    warmup: int = 0
    # Langevin-style exploration: Gaussian noise of std noise * lr added after each step (Yin et al. 2021)
    noise: float = 0.0
    lbfgs_max_iter: int = 20
    # read the objective values (one device sync) and check them for NaN/inf every this many iterations, at
    # every progress call and at the end; on a GPU a check every iteration would wait for the device each step
    check_every: int = 50
    # L-BFGS's step-size rule: None takes the fixed step lr (torch's default, DLG's code); "strong_wolfe" searches
    lbfgs_line_search: Literal["strong_wolfe"] | None = None

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"iterations must be a positive integer, got {self.iterations}")
        if self.check_every < 1:
            raise ValueError(f"check_every must be a positive integer, got {self.check_every}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


def _lr_factor(config: OptimiserConfig, iteration: int) -> float:
    if config.warmup and iteration < config.warmup:
        return (iteration + 1) / config.warmup
    if config.schedule == "step":
        return 0.1 ** sum(iteration >= m * config.iterations for m in config.milestones)
    if config.schedule == "cosine":
        span = max(config.iterations - config.warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * (iteration - config.warmup) / span))
    return 1.0


@dataclass
class ProgressHooks:
    """What the harness may ask of a running optimisation."""

    callback: ProgressCallback | None = None
    every: int = 0
    bar: bool = False
    description: str = "attack"


def optimise(
    objective: Callable[[], Tensor],
    variables: Sequence[Tensor],
    config: OptimiserConfig,
    *,
    project: Callable[[], None] | None = None,
    snapshot: Callable[[], Tensor] | None = None,
    hooks: ProgressHooks | None = None,
    generator: torch.Generator | None = None,
    state: Sequence[Stateful] = (),
) -> list[TracePoint]:
    """Minimise ``objective()`` over ``variables`` in place; return the iteration trace.

    ``project`` runs after each step under no_grad (e.g. clamp images to their box);
    ``snapshot`` returns the current images in [0,1] for the scoring callback;
    ``state`` lists the objective's parts that keep state across iterations (saved with checkpoints).
    The trace's seconds exclude time spent in the callback and in writing checkpoints. Under a
    ``methods.checkpoint.checkpointing`` block the call is checkpointed, and continues from its checkpoint.

    Under a budget (``methods.budget``) the loop also stops after the step past which the next would overspend
    it (at least one step runs); an L-BFGS step is shortened to the evaluations left.
    """
    hooks = hooks or ProgressHooks()
    budget = ExitStack()
    meter = budget.enter_context(current_or_new_meter())
    counts = _CallCounts(meter)
    state = (*state, counts)  # the evaluation count is checkpointed with the call
    checkpointer = active_checkpointer()
    call = checkpointer.begin(variables, config) if checkpointer is not None else None
    if call is not None and call.finished is not None:  # finished before the checkpoint: its stored result
        rows = call.restore_finished(variables, generator, state)
        budget.close()
        return [TracePoint(int(row[0]), row[1], row[2], int(row[3]) if len(row) > 3 else 0) for row in rows]
    if config.optimiser == "adam":
        optimiser: torch.optim.Optimizer = EagerAdam(variables, lr=config.lr)
    else:
        optimiser = torch.optim.LBFGS(
            variables, lr=config.lr, max_iter=config.lbfgs_max_iter, line_search_fn=config.lbfgs_line_search
        )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda it: _lr_factor(config, it))

    def call_cost() -> int:
        """Gradient evaluations per objective call (G for G batches side by side), as measured so far."""
        return -(-(meter.evaluations - counts.before) // counts.calls) if counts.calls else 0

    def closure() -> Tensor:
        counts.calls += 1
        optimiser.zero_grad(set_to_none=True)
        loss = objective()
        # only into the optimised variables: the model's parameters require grad too (the attacker's copy),
        # and a plain backward() would compute and accumulate their gradients every iteration for nobody
        loss.backward(inputs=list(variables))
        if config.signed:
            for v in variables:
                if v.grad is not None:
                    v.grad.sign_()
        return loss

    trace: list[TracePoint] = []
    # objectives and clock readings of the iterations since the last check, still on the device
    pending_values: list[Tensor] = []
    pending_seconds: list[float] = []
    pending_evaluations: list[int] = []
    device = variables[0].device
    noise_generator = device_generator(generator, device) if config.noise and generator is not None else None
    # the noise generator only when it is a generator of its own (on another device than ``generator``)
    generators = (generator, noise_generator if noise_generator is not generator else None)
    first, seconds_before = 0, 0.0
    if call is not None and call.running is not None:  # interrupted: continue where the checkpoint left it
        first, rows, seconds_before = call.restore_running(variables, optimiser, scheduler, generators, state)
        trace.extend(TracePoint(int(row[0]), row[1], row[2], int(row[3]) if len(row) > 3 else 0) for row in rows)
    clock = _trace_clock.get()
    excluded = 0.0
    start = clock() - seconds_before  # a resumed call's seconds carry on from the time spent before it stopped

    def check() -> None:
        """Move the pending objectives into the trace (one transfer) and stop on NaN/inf.

        The last pending point's seconds are re-read after a device sync: on CUDA the earlier readings
        are when the work was queued, this one is when it was done.
        """
        synchronise(device)
        values = torch.stack(pending_values).tolist()
        pending_seconds[-1] = clock() - start - excluded
        for value, seconds, evaluations in zip(values, pending_seconds, pending_evaluations, strict=True):
            if not math.isfinite(value):
                raise DivergenceError(f"objective became {value} at iteration {len(trace)}; lower the learning rate")
            trace.append(TracePoint(len(trace) + 1, seconds, value, evaluations))
        pending_values.clear()
        pending_seconds.clear()
        pending_evaluations.clear()

    bar = tqdm(
        total=config.iterations,
        initial=first,
        desc=hooks.description,
        disable=not hooks.bar,
        leave=False,
        dynamic_ncols=True,
    )
    try:
        for iteration in range(first, config.iterations):
            if config.optimiser == "lbfgs":
                left = int(min(meter.evaluations_left(), 2**31) // max(call_cost(), 1))
                group = optimiser.param_groups[0]
                group["max_iter"] = max(1, min(config.lbfgs_max_iter, left))
                if config.lbfgs_line_search is not None:
                    # a line search may evaluate up to 25 times past the step's limit: where that could overspend
                    # what is left of a budget, the step takes the fixed step (one evaluation per inner iteration)
                    group["line_search_fn"] = (
                        None if left < config.lbfgs_max_iter * 5 // 4 + 25 else config.lbfgs_line_search
                    )
            loss = optimiser.step(closure)
            scheduler.step()
            with torch.no_grad():
                if config.noise:
                    lr_now = optimiser.param_groups[0]["lr"]
                    for v in variables:
                        v.add_(
                            torch.randn(v.shape, generator=noise_generator, device=v.device, dtype=v.dtype),
                            alpha=config.noise * lr_now,
                        )
                if project is not None:
                    project()
            done = iteration + 1
            final = done == config.iterations or meter.exhausted(call_cost())
            pending_values.append(loss.detach())
            pending_seconds.append(clock() - start - excluded)
            pending_evaluations.append(meter.evaluations - counts.before)
            show = not bar.disable and (done % 10 == 0 or final)
            scoring = (
                hooks.callback is not None
                and snapshot is not None
                and hooks.every
                and (done % hooks.every == 0 or final)
            )
            if show or scoring or done % config.check_every == 0 or final:
                check()
            if not bar.disable:
                bar.update(1)
                if show:
                    bar.set_postfix(objective=f"{trace[-1].objective:.4g}", refresh=False)
            # the objective is read before each step, so a last step that ends in NaN/inf would only show in the
            # scoring of its images: check them where they are scored or returned
            if (scoring or final) and not all(bool(torch.isfinite(v).all()) for v in variables):
                raise DivergenceError(f"the reconstruction became NaN or inf at step {done}; lower the learning rate")
            if scoring:
                paused = clock()
                with torch.no_grad(), meter.paused():  # scoring is not the attack's time, nor its budget's
                    hooks.callback(done, trace[-1].seconds, snapshot())
                excluded += clock() - paused
            if final:
                break
            if call is not None and call.due() and done < config.iterations:
                if pending_values:
                    check()
                paused = clock()
                call.save(done, variables, optimiser, scheduler, generators, trace, paused - start - excluded, state)
                excluded += clock() - paused
    finally:
        bar.close()
        budget.close()
    if call is not None:
        call.finish(variables, trace, generator, state)
    return trace


class _CallCounts:
    """One loop call's evaluation bookkeeping, saved with its checkpoint so a resumed call counts on."""

    def __init__(self, meter: Any) -> None:
        self.meter = meter
        self.before = meter.evaluations  # the meter's count when this call started
        self.calls = 0  # objective calls so far

    def state_dict(self) -> dict[str, Any]:
        return {"evaluations": self.meter.evaluations, "before": self.before, "calls": self.calls}

    def load_state_dict(self, state: Any) -> None:
        self.meter.evaluations = int(state["evaluations"])
        self.before, self.calls = int(state["before"]), int(state["calls"])
