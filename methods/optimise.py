"""The optimisation loop every optimisation-based attack shares.

A method supplies an objective over its variables; this module owns the
optimiser, learning-rate schedule, signed gradients, Langevin noise, clamping
to the valid image box, the iteration trace, the progress bar and the
harness's scoring callback.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from methods.base import ProgressCallback, TracePoint


class DivergenceError(RuntimeError):
    """The objective became NaN or inf during optimisation."""


def model_gradients(
    model: nn.Module, images: Tensor, targets: Tensor, *, create_graph: bool = True
) -> tuple[Tensor, ...]:
    """Gradients of the mean cross-entropy, as the FedSGD client computes them.

    ``targets`` are class indices (B,) or per-sample class probabilities (B, K)
    (DLG's soft labels).
    """
    params = [p for p in model.parameters() if p.requires_grad]
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
    # L-BFGS's step-size rule: None takes the fixed step lr (torch's default, DLG's code); "strong_wolfe" searches
    lbfgs_line_search: Literal["strong_wolfe"] | None = None

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"iterations must be a positive integer, got {self.iterations}")
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
) -> list[TracePoint]:
    """Minimise ``objective()`` over ``variables`` in place; return the iteration trace.

    ``project`` runs after each step under no_grad (e.g. clamp images to their box);
    ``snapshot`` returns the current images in [0,1] for the scoring callback.
    The trace's seconds exclude time spent in the callback.
    """
    hooks = hooks or ProgressHooks()
    if config.optimiser == "adam":
        optimiser: torch.optim.Optimizer = torch.optim.Adam(variables, lr=config.lr)
    else:
        optimiser = torch.optim.LBFGS(
            variables, lr=config.lr, max_iter=config.lbfgs_max_iter, line_search_fn=config.lbfgs_line_search
        )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda it: _lr_factor(config, it))

    def closure() -> Tensor:
        optimiser.zero_grad(set_to_none=True)
        loss = objective()
        loss.backward()
        if config.signed:
            for v in variables:
                if v.grad is not None:
                    v.grad.sign_()
        return loss

    trace: list[TracePoint] = []
    excluded = 0.0
    start = time.perf_counter()
    bar = tqdm(total=config.iterations, desc=hooks.description, disable=not hooks.bar, leave=False, dynamic_ncols=True)
    try:
        for iteration in range(config.iterations):
            loss = optimiser.step(closure)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise DivergenceError(f"objective became {value} at iteration {iteration}; lower the learning rate")
            scheduler.step()
            with torch.no_grad():
                if config.noise:
                    lr_now = optimiser.param_groups[0]["lr"]
                    for v in variables:
                        v.add_(
                            torch.randn(v.shape, generator=generator, device=v.device, dtype=v.dtype),
                            alpha=config.noise * lr_now,
                        )
                if project is not None:
                    project()
            done = iteration + 1
            trace.append(TracePoint(done, time.perf_counter() - start - excluded, value))
            if bar.disable is False:
                bar.update(1)
                if done % 10 == 0 or done == config.iterations:
                    bar.set_postfix(objective=f"{value:.4g}", refresh=False)
            if (
                hooks.callback is not None
                and snapshot is not None
                and hooks.every
                and (done % hooks.every == 0 or done == config.iterations)
            ):
                paused = time.perf_counter()
                with torch.no_grad():
                    hooks.callback(done, trace[-1].seconds, snapshot())
                excluded += time.perf_counter() - paused
    finally:
        bar.close()
    return trace
