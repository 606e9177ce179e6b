"""DLG: Zhu, Liu and Han, "Deep Leakage from Gradients", NeurIPS 2019.

What makes DLG itself: images *and* soft labels are dummy variables optimised
jointly with L-BFGS to minimise the squared euclidean gradient distance.
Paper defaults: L-BFGS lr 1, 300 iterations, dummy data and labels drawn from
N(0,1), no clamping, no image prior.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from methods.base import Observation, ProgressCallback, Reconstruction, draw, register_method
from methods.losses import build_gradient_loss
from methods.matching import initial_images
from methods.optimise import OptimiserConfig, ProgressHooks, model_gradients, optimise
from methods.options import option


@register_method()
@dataclass
class DLG:
    name: ClassVar[str] = "dlg"
    paper: ClassVar[str] = "Zhu, Liu, Han. Deep Leakage from Gradients. NeurIPS 2019"

    profiles: ClassVar[dict[str, dict]] = {"quick": {"iterations": 12}, "paper": {"iterations": 300}}

    iterations: int = option(300, minimum=1, help="L-BFGS steps")
    lr: float = option(1.0, above=0, help="L-BFGS learning rate")
    lbfgs_max_iter: int = option(20, minimum=1, help="function evaluations per L-BFGS step")

    def budget_iterations(self, evaluations: int) -> int:
        """L-BFGS steps of up to ``lbfgs_max_iter`` evaluations each; the loop shortens the last to what is left."""
        return -(-evaluations // self.lbfgs_max_iter)

    def reconstruct(
        self,
        observation: Observation,
        *,
        generator: torch.Generator,
        callback: ProgressCallback | None = None,
        callback_every: int = 0,
        progress: bool = False,
    ) -> Reconstruction:
        images = initial_images(observation, "randn", generator).requires_grad_(True)
        shape = (observation.batch_size, observation.num_classes)
        label_logits = draw("randn", shape, generator, observation.device).requires_grad_(True)
        distance = build_gradient_loss("euclidean", observation.gradients)

        def objective():
            soft_labels = label_logits.softmax(dim=-1)
            return distance(model_gradients(observation.model, images, soft_labels))

        trace = optimise(
            objective,
            [images, label_logits],
            OptimiserConfig(
                optimiser="lbfgs", lr=self.lr, iterations=self.iterations, lbfgs_max_iter=self.lbfgs_max_iter
            ),
            snapshot=lambda: observation.denormalise(images.detach()).clamp(0, 1),
            hooks=ProgressHooks(callback, callback_every, progress, self.name),
            generator=generator,
        )
        return Reconstruction(
            images=observation.denormalise(images.detach()).clamp(0, 1),
            labels=label_logits.detach().argmax(dim=-1),
            trace=trace,
        )
