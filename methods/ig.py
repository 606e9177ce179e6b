"""Inverting Gradients: Geiping, Bauermeister, Dröge and Moeller, "Inverting Gradients - How easy is it to
break privacy in federated learning?", NeurIPS 2020.

What makes IG itself: a magnitude-invariant distance (1 - cosine similarity of
the whole concatenated gradient) plus total variation, minimised with Adam on
*signed* gradients, images projected onto the valid box after every step, a
step decay of the learning rate (x0.1 at 3/8, 5/8 and 7/8 of the budget), and
several restarts from random images of which the one with the lowest final
objective is kept (side by side as one tensor at small batches). Paper defaults:
Adam lr 0.1, 24,000 iterations, init N(0,1).

Labels come from the observation when the threat model grants them; otherwise
iDLG's rule at B = 1 (as in the paper) and ``batch_label_strategy`` from
``methods.labels`` for B > 1 (the paper assumes known labels there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from methods.base import Observation, ProgressCallback, Reconstruction, register_method
from methods.labels import labels_for
from methods.matching import MatchingSpec, invert
from methods.optimise import OptimiserConfig, ProgressHooks
from methods.priors import total_variation


@register_method()
@dataclass
class InvertingGradients:
    name: ClassVar[str] = "ig"
    paper: ClassVar[str] = (
        "Geiping, Bauermeister, Dröge, Moeller. Inverting Gradients - How easy is it to break privacy "
        "in federated learning? NeurIPS 2020"
    )

    iterations: int = 24_000
    lr: float = 0.1
    # weight of the total variation of the model-space images (the authors' ImageNet setting)
    tv_weight: float = 0.1
    # independent trials from fresh random images; the one with the lowest final objective is returned
    restarts: int = 8
    # run the restarts side by side as one tensor (one vmapped gradient pass per iteration, R times the
    # memory of one run) when the client batch has at most this many images, else one after another; same
    # result either way. Measured on CPU (docs/performance.md): 0.57-0.63x the time at B = 1, 0.84-0.90x at
    # B = 8, 0.96x at B = 16, 1.02-1.05x at B = 48. 0: never
    batch_restarts_up_to: int = 16
    # torch.compile the distance + TV (methods.matching.MatchingSpec.compile_loss): for long runs only
    compile_loss: bool = False
    label_strategy: str = "idlg"
    batch_label_strategy: str = "ilrg"

    def __post_init__(self) -> None:
        if self.restarts < 1:
            raise ValueError(f"restarts must be at least 1, got {self.restarts}")
        if self.batch_restarts_up_to < 0:
            raise ValueError(f"batch_restarts_up_to must be non-negative, got {self.batch_restarts_up_to}")
        if self.tv_weight < 0:
            raise ValueError(f"tv_weight must be non-negative, got {self.tv_weight}")

    def reconstruct(
        self,
        observation: Observation,
        *,
        generator: torch.Generator,
        callback: ProgressCallback | None = None,
        callback_every: int = 0,
        progress: bool = False,
    ) -> Reconstruction:
        labels = labels_for(observation, self.label_strategy, self.batch_label_strategy)
        tv_weight = self.tv_weight
        spec = MatchingSpec(
            loss="cosine",
            optimiser=OptimiserConfig(
                optimiser="adam", lr=self.lr, iterations=self.iterations, signed=True, schedule="step"
            ),
            init="randn",
            clamp=True,
            restarts=self.restarts,
            batch_restarts=observation.batch_size <= self.batch_restarts_up_to,
            compile_loss=self.compile_loss,
            prior=(lambda images: tv_weight * total_variation(images)) if tv_weight else None,
        )
        result = invert(
            observation,
            labels,
            spec,
            generator=generator,
            hooks=ProgressHooks(callback, callback_every, progress, self.name),
        )
        return Reconstruction(
            images=observation.denormalise(result.images_model).clamp(0, 1),
            labels=labels,
            trace=result.trace,
            extras={"objective": result.objective},
        )
