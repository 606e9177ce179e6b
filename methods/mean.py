"""``mean``: a reference floor, not an attack. The dataset's mean image for every sample.

The attacker knows the data only through the Observation's normalisation, so the mean image is the image
whose model-space value is 0: a flat image of the normalisation mean. The gradient is never read for the
images (docs/methods/mean.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from methods.base import Observation, ProgressCallback, Reconstruction, register_method
from methods.labels import labels_for
from methods.options import option


@register_method()
@dataclass
class Mean:
    name: ClassVar[str] = "mean"
    paper: ClassVar[str] = "reference floor: the dataset's mean image (no paper)"
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
        zero = torch.zeros((observation.batch_size, *observation.image_shape), device=observation.device)
        images = observation.denormalise(zero).clamp(0, 1)
        return Reconstruction(images=images, labels=labels_for(observation, self.label_strategy))
