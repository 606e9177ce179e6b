"""Gradient matching with an image variable: the core that iDLG, IG and AFGI compose (GradInversion and DLG call
the shared loop directly: their variables are several candidates, or images and soft labels).

A method describes its attack as a ``MatchingSpec`` (which gradient distance,
which image prior, how to optimise, how to initialise) and calls ``invert``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from methods.base import Observation, TracePoint, draw
from methods.batched import GroupGradients
from methods.budget import budget_share
from methods.checkpoint import StackedHistory, Stateful
from methods.fedavg import UpdateFunction
from methods.losses import GradientLoss, build_gradient_loss
from methods.optimise import OptimiserConfig, ProgressHooks, model_gradients, optimise

ImagePrior = Callable[[Tensor], Tensor]
"""Maps model-space images (B,C,H,W) to a scalar penalty added to the objective."""


@dataclass(frozen=True)
class MatchingSpec:
    loss: Literal["euclidean", "cosine"]
    optimiser: OptimiserConfig
    init: Literal["randn", "rand"] = "randn"
    clamp: bool = False
    restarts: int = 1
    # run the restarts as one (R*B, C, H, W) tensor, every restart's gradient from one vmapped pass
    # (methods.batched); needs an elementwise optimiser (Adam), a functional prior and no forward_terms
    batch_restarts: bool = False
    prior: ImagePrior | None = None
    # replaces the images' gradient before each optimiser step (a tensor hook; e.g. methods.coarse.CoarseToFine)
    image_gradient: Callable[[Tensor], Tensor] | None = None
    # torch.compile the gradient distance and the prior (first-order; the model's double backward stays
    # eager, aot_autograd cannot compile it). Compiled once per process and input shape (needs a C++
    # compiler), it pays only over long runs (measured in docs/performance.md)
    compile_loss: bool = False
    # extra objective terms that need the forward pass (e.g. BN statistics); called after each forward
    forward_terms: tuple[Callable[[], Tensor], ...] = field(default_factory=tuple)
    # the update the dummy images would produce (methods.fedavg.simulated_update); None: the FedSGD gradient
    update: UpdateFunction | None = None


@dataclass
class MatchingResult:
    images_model: Tensor
    trace: list[TracePoint]
    objective: float


def _matching_terms(
    gradient_loss: GradientLoss, prior: ImagePrior | None, gradients: tuple[Tensor, ...], images: Tensor
) -> Tensor:
    value = gradient_loss(gradients)
    return value + prior(images) if prior is not None else value


def _per_restart_terms(
    gradient_loss: GradientLoss, prior: ImagePrior | None, gradients: tuple[Tensor, ...], stacked: Tensor
) -> Tensor:
    values = gradient_loss.per_group(gradients)
    return values + torch.func.vmap(prior)(stacked) if prior is not None else values


_compiled: dict[Callable[..., Tensor], Callable[..., Tensor]] = {}


def _maybe_compiled(terms: Callable[..., Tensor], compiled: bool) -> Callable[..., Tensor]:
    """``terms`` itself, or its torch.compile wrapper (one per process, so compiled code is reused across trials)."""
    if not compiled:
        return terms
    if terms not in _compiled:
        if shutil.which(os.environ.get("CXX", "c++")) is None:
            raise ValueError(
                "compile_loss needs a C++ compiler (c++ or $CXX) for torch.compile; set compile_loss=false"
            )
        _compiled[terms] = torch.compile(terms, dynamic=False)
    return _compiled[terms]


def stateful_parts(spec: MatchingSpec) -> list[Stateful]:
    """The prior and forward terms that keep state across iterations (saved with a trial's checkpoints)."""
    parts = (spec.prior, spec.image_gradient, *spec.forward_terms)
    return [part for part in parts if isinstance(part, Stateful)]


def initial_images(observation: Observation, init: str, generator: torch.Generator, count: int = 1) -> Tensor:
    """Random dummy images in model space, shaped (count*B, C, H, W)."""
    shape = (count * observation.batch_size, *observation.image_shape)
    if init == "rand":
        return observation.normalise(draw("rand", shape, generator, observation.device))
    if init == "randn":
        return draw("randn", shape, generator, observation.device)
    raise ValueError(f"unknown init {init!r}; use 'randn' or 'rand'")


def invert(
    observation: Observation,
    labels: Tensor,
    spec: MatchingSpec,
    *,
    generator: torch.Generator,
    hooks: ProgressHooks | None = None,
    start: Tensor | None = None,
) -> MatchingResult:
    """Optimise dummy images whose gradient (with ``labels``) matches the observation's.

    With ``restarts`` > 1 the optimisation is repeated from fresh random images and
    the result with the lowest final objective is kept (Geiping et al. 2020). With
    ``batch_restarts`` they run side by side as one tensor (see ``_invert_batched``);
    otherwise one after another, the trace continuing across restarts.
    """
    gradient_loss = build_gradient_loss(spec.loss, observation.gradients)
    if spec.batch_restarts and spec.restarts > 1:
        if spec.optimiser.optimiser != "adam":
            raise ValueError(
                "batch_restarts needs an elementwise optimiser (adam); L-BFGS's line search would couple the "
                "restarts; set batch_restarts=False"
            )
        if spec.forward_terms or start is not None or spec.update is not None:
            raise ValueError(
                "batch_restarts needs random starts, no forward_terms and FedSGD gradients; set batch_restarts=False"
            )
        return _invert_batched(observation, labels, spec, gradient_loss, generator=generator, hooks=hooks)
    low, high = observation.input_box()
    terms = _maybe_compiled(_matching_terms, spec.compile_loss)
    update = spec.update or model_gradients
    best: MatchingResult | None = None
    trace_so_far: list[TracePoint] = []  # restarts continue one trace, so iterations and seconds keep counting up
    for index in range(spec.restarts):
        images = (
            start.clone() if start is not None else initial_images(observation, spec.init, generator)
        ).requires_grad_(True)
        if spec.image_gradient is not None:
            images.register_hook(spec.image_gradient)

        def objective(images: Tensor = images) -> Tensor:
            gradients = update(observation.model, images, labels)
            value = terms(gradient_loss, spec.prior, gradients, images)
            for term in spec.forward_terms:
                value = value + term()
            return value

        def project(images: Tensor = images) -> None:
            images.clamp_(low, high)

        def snapshot(images: Tensor = images) -> Tensor:
            return observation.denormalise(images.detach()).clamp(0, 1)

        with budget_share(spec.restarts - index):  # under a budget each restart gets an equal share of it
            trace = optimise(
                objective,
                [images],
                spec.optimiser,
                project=project if spec.clamp else None,
                snapshot=snapshot,
                hooks=hooks,
                generator=generator,
                state=stateful_parts(spec),
            )
        if trace_so_far:
            last = trace_so_far[-1]
            trace = [
                TracePoint(
                    last.iteration + p.iteration,
                    last.seconds + p.seconds,
                    p.objective,
                    last.evaluations + p.evaluations,
                )
                for p in trace
            ]
        trace_so_far.extend(trace)
        if best is None or trace[-1].objective < best.objective:
            best = MatchingResult(images.detach(), trace_so_far, trace[-1].objective)
    assert best is not None
    return best


def _invert_batched(
    observation: Observation,
    labels: Tensor,
    spec: MatchingSpec,
    gradient_loss: GradientLoss,
    *,
    generator: torch.Generator,
    hooks: ProgressHooks | None,
) -> MatchingResult:
    """All restarts as one (R*B, C, H, W) variable; the objective is the sum of the R restarts' objectives.

    Each restart's gradient comes from its own B images (one vmapped pass), and Adam, the
    signed gradient and the clamp act elementwise, so this is R independent runs of the
    sequential loop, with the same random starts drawn in the same order; only the float
    summation order differs. The trace records, per iteration, the objective of the restart
    that is finally kept; the progress callback sees the restart that is currently best.
    """
    restarts, batch, shape = spec.restarts, observation.batch_size, observation.image_shape
    images = torch.cat([initial_images(observation, spec.init, generator) for _ in range(restarts)])
    images.requires_grad_(True)
    if spec.image_gradient is not None:
        images.register_hook(spec.image_gradient)
    low, high = observation.input_box()
    gradients = GroupGradients(observation.model)
    terms = _maybe_compiled(_per_restart_terms, spec.compile_loss)
    history = StackedHistory()  # each iteration's per-restart objectives, (R,) each

    def objective() -> Tensor:
        stacked = images.view(restarts, batch, *shape)
        values = terms(gradient_loss, spec.prior, gradients(stacked, labels)[0], stacked)
        history.append(values.detach())
        return values.sum()

    def project() -> None:
        images.clamp_(low, high)

    def snapshot() -> Tensor:
        best_now = int(history[-1].argmin())
        return observation.denormalise(images.detach().view(restarts, batch, *shape)[best_now]).clamp(0, 1)

    trace = optimise(
        objective,
        [images],
        spec.optimiser,
        project=project if spec.clamp else None,
        snapshot=snapshot,
        hooks=hooks,
        generator=generator,
        state=[history, *stateful_parts(spec)],
    )
    per_iteration = torch.stack(history).tolist()  # (iterations, R), one transfer at the end
    best = min(range(restarts), key=lambda r: per_iteration[-1][r])
    trace = [
        TracePoint(p.iteration, p.seconds, values[best], p.evaluations)
        for p, values in zip(trace, per_iteration, strict=True)
    ]
    chosen = images.detach().view(restarts, batch, *shape)[best].clone()
    return MatchingResult(chosen, trace, trace[-1].objective)
