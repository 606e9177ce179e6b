"""Coarse-to-fine image optimisation as a gradient projection: a shared component (AFGI uses it).

For the first iterations of a run the gradient of the images is replaced by its projection onto
images of a lower resolution: average-pooled onto a ``size`` x ``size`` grid and upsampled back
(nearest or bilinear). With Adam (signed or not) acting elementwise, every block of pixels then
moves as one, which is optimising a low-resolution image ``size`` x ``size`` upsampled to the model's
resolution, with no change to the objective, the model or the observation: each step still costs one
gradient evaluation at full resolution. The levels run one after another (e.g. 4, 8, 16 pixels a side),
then the full resolution for the rest of the run. Why: PSNR at large batches is dominated by low
frequencies, which per-pixel steps reach slowly (docs/methods/afgi.md has the measurements).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor


def project(gradient: Tensor, size: int, mode: Literal["nearest", "bilinear"] = "bilinear") -> Tensor:
    """``gradient`` (B, C, H, W) averaged onto a ``size`` x ``size`` grid and upsampled back to (H, W)."""
    height, width = gradient.shape[-2:]
    if size >= min(height, width):
        return gradient
    coarse = F.adaptive_avg_pool2d(gradient, size)
    if mode == "nearest":
        return F.interpolate(coarse, size=(height, width), mode="nearest")
    return F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)


def coarse_noise(noise: Tensor, size: int, mode: Literal["nearest", "bilinear"] = "bilinear") -> Tensor:
    """``noise`` (B, C, H, W) with its per-pixel part removed: what a coarse start at ``size`` can represent.

    Rescaled so that its per-pixel standard deviation stays that of ``noise``.
    """
    coarse = project(noise, size, mode)
    return coarse * (noise.std() / coarse.std().clamp_min(1e-12))


class CoarseToFine:
    """A gradient hook for the image variable: level ``k`` of ``sizes`` for ``steps[k]`` backward passes, then none.

    The count wraps every ``iterations`` passes, so each restart of a run starts again at the coarsest level.
    Checkpointable (``methods.checkpoint.Stateful``): the pass count is its whole state.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        steps: Sequence[int],
        iterations: int,
        mode: Literal["nearest", "bilinear"] = "bilinear",
    ) -> None:
        if len(sizes) != len(steps):
            raise ValueError(f"one step count per level: {len(sizes)} sizes, {len(steps)} step counts")
        self.ends = [sum(steps[: k + 1]) for k in range(len(steps))]
        self.sizes = list(sizes)
        self.iterations = iterations
        self.mode = mode
        self.calls = 0

    def level(self, step: int) -> int | None:
        """The grid side at ``step`` of a run, or None once the full resolution is reached."""
        for size, end in zip(self.sizes, self.ends, strict=True):
            if step < end:
                return size
        return None

    def __call__(self, gradient: Tensor) -> Tensor:
        size = self.level(self.calls % self.iterations)
        self.calls += 1
        return gradient if size is None else project(gradient, size, self.mode)

    def state_dict(self) -> dict[str, Any]:
        return {"calls": self.calls}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.calls = int(state["calls"])
