"""Inverting Gradients: Geiping, Bauermeister, Dröge and Moeller, "Inverting Gradients - How easy is it to
break privacy in federated learning?", NeurIPS 2020.

What makes IG itself: a magnitude-invariant distance (1 - cosine similarity of
the whole concatenated gradient) plus total variation, minimised with Adam on
*signed* gradients, images projected onto the valid box after every step, a
step decay of the learning rate (x0.1 at 3/8, 5/8 and 7/8 of the budget), and
several restarts from random images of which the one with the lowest final
objective is kept (side by side as one tensor at small batches, when that is predicted to fit
``memory_budget_gb``: ``methods.memory``). Paper defaults:
Adam lr 0.1, 24,000 iterations, init N(0,1).

Labels come from the observation when the threat model grants them; otherwise
iDLG's rule at B = 1 (as in the paper) and ``batch_label_strategy`` from
``methods.labels`` for B > 1 (the paper assumes known labels there).

FedAvg (the paper's section 5): on a weight difference the objective replays the client's local
steps on the dummy images (``methods.fedavg``) and matches the simulated difference with the same
cosine distance; restarts then run one after another (docs/fedavg.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from methods.base import Observation, ProgressCallback, Reconstruction, register_method
from methods.fedavg import simulated_update
from methods.labels import labels_for
from methods.losses import build_gradient_loss
from methods.matching import MatchingSpec, invert
from methods.memory import batched_fits
from methods.optimise import OptimiserConfig, ProgressHooks
from methods.options import option
from methods.priors import total_variation


@register_method()
@dataclass
class InvertingGradients:
    name: ClassVar[str] = "ig"
    paper: ClassVar[str] = (
        "Geiping, Bauermeister, Dröge, Moeller. Inverting Gradients - How easy is it to break privacy "
        "in federated learning? NeurIPS 2020"
    )

    accepts_weight_differences: ClassVar[bool] = True  # the multi-step variant of section 5
    profiles: ClassVar[dict[str, dict]] = {
        "quick": {"iterations": 240, "restarts": 1},
        "paper": {"iterations": 24_000, "restarts": 8},
    }

    iterations: int = option(24_000, minimum=1, help="Adam steps per restart")
    lr: float = option(0.1, above=0, help="Adam on signed gradients; x0.1 at 3/8, 5/8 and 7/8 of the budget")
    tv_weight: float = option(0.1, minimum=0, help="total variation of the model-space images (authors' ImageNet)")
    restarts: int = option(8, minimum=1, help="runs from fresh random images; the lowest final objective is kept")
    # why a threshold: batching the restarts pays on CPU only for small client batches (docs/performance.md)
    batch_restarts_up_to: int = option(
        16, minimum=0, help="restarts side by side as one tensor up to this client batch (R x memory); 0: never"
    )
    memory_budget_gb: float = option(
        0.0, minimum=0, help="batch the restarts only if predicted to fit (GiB); 0: share of free memory"
    )
    compile_loss: bool = option(False, help="torch.compile distance + TV once per process and shape: long runs")
    label_strategy: str = option("idlg", help="labels at B = 1 when the threat model does not give them")
    batch_label_strategy: str = option("ilrg", help="labels at B > 1 (the paper assumes known labels there)")

    def budget_iterations(self, evaluations: int) -> int:
        """Every restart gets an equal share: each iteration costs one evaluation per restart."""
        return evaluations // self.restarts

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
        batch_restarts, memory = self._batch_restarts(observation)
        spec = MatchingSpec(
            loss="cosine",
            optimiser=OptimiserConfig(
                optimiser="adam", lr=self.lr, iterations=self.iterations, signed=True, schedule="step"
            ),
            init="randn",
            clamp=True,
            restarts=self.restarts,
            batch_restarts=batch_restarts,
            compile_loss=self.compile_loss,
            prior=(lambda images: tv_weight * total_variation(images)) if tv_weight else None,
            update=simulated_update(observation),
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
            extras={"objective": result.objective, "batched_restarts": batch_restarts, **memory},
        )

    def _batch_restarts(self, observation: Observation) -> tuple[bool, dict[str, float]]:
        """Side by side when the batch is small enough to pay and the predicted peak fits the budget."""
        if self.restarts < 2 or observation.batch_size > self.batch_restarts_up_to or observation.is_weight_difference:
            return False, {}
        return batched_fits(
            observation.model,
            observation.image_shape,
            observation.num_classes,
            build_gradient_loss("cosine", observation.gradients),
            groups=self.restarts,
            batch=observation.batch_size,
            memory_budget_gb=self.memory_budget_gb,
        )
