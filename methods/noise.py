"""``noise``: a reference floor, not an attack. Uniform random images; the gradient is never read for them.

A method must beat this to show that it learned anything at all from the gradient (docs/methods/noise.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from methods.base import Observation, ProgressCallback, Reconstruction, draw, register_method
from methods.labels import labels_for
from methods.options import option


@register_method()
@dataclass
class Noise:
    name: ClassVar[str] = "noise"
    paper: ClassVar[str] = "reference floor: uniform random images (no paper)"
    reference: ClassVar[bool] = True
    # no update read for the images; labels by the label strategies' FedAvg rule (docs/fedavg.md)
    accepts_weight_differences: ClassVar[bool] = True

    profiles: ClassVar[dict[str, dict]] = {"quick": {}, "paper": {}}  # no budget: nothing is optimised

    label_strategy: str = option("lrb", help="labels from the shared strategy; the images use no gradient")
    # accepted and ignored, so that a sweep-wide iterations=N applies to every method
    iterations: int = option(0, minimum=0, help="none: accepted and ignored")

    def reconstruct(
        self,
        observation: Observation,
        *,
        generator: torch.Generator,
        callback: ProgressCallback | None = None,
        callback_every: int = 0,
        progress: bool = False,
    ) -> Reconstruction:
        shape = (observation.batch_size, *observation.image_shape)
        images = draw("rand", shape, generator, observation.device)
        return Reconstruction(images=images, labels=labels_for(observation, self.label_strategy))
