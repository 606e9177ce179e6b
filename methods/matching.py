"""Gradient matching with an image variable: the core that iDLG, IG, GradInversion and AFGI compose.

A method describes its attack as a ``MatchingSpec`` (which gradient distance,
which image prior, how to optimise, how to initialise) and calls ``invert``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from methods.base import Observation, TracePoint
from methods.losses import build_gradient_loss
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
    prior: ImagePrior | None = None
    # extra objective terms that need the forward pass (e.g. BN statistics); called after each forward
    forward_terms: tuple[Callable[[], Tensor], ...] = field(default_factory=tuple)


@dataclass
class MatchingResult:
    images_model: Tensor
    trace: list[TracePoint]
    objective: float


def initial_images(observation: Observation, init: str, generator: torch.Generator, count: int = 1) -> Tensor:
    """Random dummy images in model space, shaped (count*B, C, H, W)."""
    shape = (count * observation.batch_size, *observation.image_shape)
    device = observation.device
    if init == "rand":
        return observation.normalise(torch.rand(shape, generator=generator, device=device))
    if init == "randn":
        return torch.randn(shape, generator=generator, device=device)
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
    the result with the lowest final objective is kept (Geiping et al. 2020).
    """
    gradient_loss = build_gradient_loss(spec.loss, observation.gradients)
    low, high = observation.input_box()
    best: MatchingResult | None = None
    trace_so_far: list[TracePoint] = []  # restarts continue one trace, so iterations and seconds keep counting up
    for _ in range(spec.restarts):
        images = (
            start.clone() if start is not None else initial_images(observation, spec.init, generator)
        ).requires_grad_(True)

        def objective(images: Tensor = images) -> Tensor:
            value = gradient_loss(model_gradients(observation.model, images, labels))
            for term in spec.forward_terms:
                value = value + term()
            if spec.prior is not None:
                value = value + spec.prior(images)
            return value

        def project(images: Tensor = images) -> None:
            images.copy_(torch.max(torch.min(images, high), low))

        def snapshot(images: Tensor = images) -> Tensor:
            return observation.denormalise(images.detach()).clamp(0, 1)

        trace = optimise(
            objective,
            [images],
            spec.optimiser,
            project=project if spec.clamp else None,
            snapshot=snapshot,
            hooks=hooks,
            generator=generator,
        )
        if trace_so_far:
            last = trace_so_far[-1]
            trace = [TracePoint(last.iteration + p.iteration, last.seconds + p.seconds, p.objective) for p in trace]
        trace_so_far.extend(trace)
        if best is None or trace[-1].objective < best.objective:
            best = MatchingResult(images.detach(), trace_so_far, trace[-1].objective)
    assert best is not None
    return best
