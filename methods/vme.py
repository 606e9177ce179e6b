"""VME: AFGI's image regulariser (Liu et al. 2024, arXiv 2403.08383), as a shared prior component.

The paper's abstract names three parts, "total variation, the discrepancy between
three-channel means and edges, between values from exposed gradients and
reconstructed images, respectively"; an earlier version used Canny edges. Ours:

* **V** total variation of the model-space images (``methods.priors.total_variation``,
  the same scale as Inverting Gradients' ``tv_weight``);
* **M** mean squared difference between each reconstructed image's per-channel
  means, in [0,1] pixel units, and target means;
* **E** mean squared difference between the reconstruction's edge map and a target
  edge map. The edge map is the Sobel gradient magnitude of each channel in [0,1]
  units, ``sqrt(gx^2 + gy^2 + eps)``: a differentiable stand-in for Canny, whose
  thresholding and non-maximum suppression have no useful gradient.

Each term has its own weight; a weight of 0 (or a missing target) switches a term
off. Where the targets come from is the method's decision, not this module's:
``VMETargets.from_images`` derives them from any estimate of the batch (AFGI uses
the result of a first stage of plain gradient matching, see ``methods/afgi.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from methods.priors import total_variation

EDGE_EPS = 1e-6  # keeps the square root differentiable where the image is flat

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
# the kernels per (channels, device, dtype): built once, so an attack on a GPU does not copy them every iteration
_sobel_kernels: dict[tuple[int, torch.device, torch.dtype], Tensor] = {}


def _sobel_kernel(channels: int, like: Tensor) -> Tensor:
    key = (channels, like.device, like.dtype)
    if key not in _sobel_kernels:
        with torch.inference_mode(False):  # a cached inference tensor could not be saved for a later backward
            kx = _SOBEL_X.to(device=like.device, dtype=like.dtype)
            _sobel_kernels[key] = torch.stack([kx, kx.T]).unsqueeze(1).repeat(channels, 1, 1, 1)  # (2C, 1, 3, 3)
    return _sobel_kernels[key]


def channel_means(images: Tensor) -> Tensor:
    """Per-image, per-channel means (B, C) of images (B, C, H, W)."""
    return images.mean(dim=(-2, -1))


def sobel_edges(images: Tensor) -> Tensor:
    """Sobel gradient magnitude of each channel, (B, C, H, W) -> (B, C, H, W), replicate-padded.

    The kernels are scaled by 1/8 so that a unit step between two flat regions has magnitude 1/2.
    """
    channels = images.shape[1]
    padded = F.pad(images, (1, 1, 1, 1), mode="replicate")
    grads = F.conv2d(padded, _sobel_kernel(channels, images), groups=channels)  # (B, 2C, H, W): gx, gy of each channel
    gx, gy = grads[:, 0::2], grads[:, 1::2]
    return torch.sqrt(gx.square() + gy.square() + EDGE_EPS)


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur with reflect padding (sigma in pixels; 0 returns the input)."""
    if sigma <= 0:
        return images
    radius = max(1, int(round(3 * sigma)))
    radius = min(radius, images.shape[-1] - 1, images.shape[-2] - 1)
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    out = F.pad(images, (radius, radius, 0, 0), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    out = F.pad(out, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(out, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)


@dataclass(frozen=True)
class VMETargets:
    """What M and E pull towards: per-image channel means (B, C) and edge maps (B, C, H, W), in [0,1] units."""

    channel_means: Tensor | None = None
    edges: Tensor | None = None

    @staticmethod
    def from_images(images_unit: Tensor, *, blur: float = 0.0) -> VMETargets:
        """Targets read off an estimate of the batch in [0,1]; ``blur`` (pixels) smooths it before the edges."""
        images_unit = images_unit.detach().clamp(0, 1)
        return VMETargets(channel_means(images_unit), sobel_edges(gaussian_blur(images_unit, blur)))


class VME:
    """The weighted sum ``tv_weight V + mean_weight M + edge_weight E`` as a ``matching.ImagePrior``.

    Called with model-space images (B, C, H, W); M and E are computed on the
    de-normalised images (``mean``/``std`` per channel), so their targets are in [0,1] units.
    """

    def __init__(
        self,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        tv_weight: float = 0.0,
        mean_weight: float = 0.0,
        edge_weight: float = 0.0,
        targets: VMETargets | None = None,
    ) -> None:
        for name, value in (("tv_weight", tv_weight), ("mean_weight", mean_weight), ("edge_weight", edge_weight)):
            if value < 0:
                raise ValueError(f"{name} must be non-negative, got {value}")
        self.mean = torch.tensor(tuple(mean), dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(tuple(std), dtype=torch.float32).view(1, -1, 1, 1)
        self.tv_weight = tv_weight
        self.mean_weight = mean_weight
        self.edge_weight = edge_weight
        self.targets = targets or VMETargets()
        self._statistics: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}

    def unit(self, images_model: Tensor) -> Tensor:
        key = (images_model.device, images_model.dtype)
        if key not in self._statistics:  # once per device: no host-to-device copy per iteration
            with torch.inference_mode(False):  # a cached inference tensor could not be saved for a later backward
                self._statistics[key] = (
                    self.mean.to(device=key[0], dtype=key[1]),
                    self.std.to(device=key[0], dtype=key[1]),
                )
        mean, std = self._statistics[key]
        return images_model * std + mean

    def terms(self, images_model: Tensor) -> dict[str, Tensor]:
        """The unweighted terms that are switched on (weight > 0 and, for M and E, a target set)."""
        terms: dict[str, Tensor] = {}
        if self.tv_weight > 0:
            terms["tv"] = total_variation(images_model)
        needs_unit = (self.mean_weight > 0 and self.targets.channel_means is not None) or (
            self.edge_weight > 0 and self.targets.edges is not None
        )
        if not needs_unit:
            return terms
        unit = self.unit(images_model)
        if self.mean_weight > 0 and self.targets.channel_means is not None:
            terms["mean"] = (channel_means(unit) - self.targets.channel_means.to(unit)).square().mean()
        if self.edge_weight > 0 and self.targets.edges is not None:
            terms["edge"] = (sobel_edges(unit) - self.targets.edges.to(unit)).square().mean()
        return terms

    def __call__(self, images_model: Tensor) -> Tensor:
        weights = {"tv": self.tv_weight, "mean": self.mean_weight, "edge": self.edge_weight}
        terms = self.terms(images_model)
        total = images_model.new_zeros(())
        for name, value in terms.items():
            total = total + weights[name] * value
        return total


class StagedVME:
    """The VME prior in two stages over each run of ``iterations`` objective evaluations.

    Evaluations ``[0, switch)`` see V only; at evaluation ``switch`` the M and E targets
    are read off the images being optimised (de-normalised to [0,1]) and the full VME
    applies from then on. The count wraps every ``iterations`` evaluations, so each
    restart of ``matching.invert`` starts again from stage one.
    """

    def __init__(self, vme: VME, *, iterations: int, switch: int, edge_blur: float, refresh: int = 0) -> None:
        self.full = vme
        self.first = VME(
            mean=tuple(vme.mean.flatten().tolist()), std=tuple(vme.std.flatten().tolist()), tv_weight=vme.tv_weight
        )
        self.iterations = iterations
        self.switch = switch
        self.edge_blur = edge_blur
        self.refresh = refresh
        self.calls = 0
        self.active = self.first

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: the evaluation count, the stage and the M and E targets read so far."""
        targets = self.full.targets
        return {
            "calls": self.calls,
            "full": self.active is self.full,
            "channel_means": targets.channel_means,
            "edges": targets.edges,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.calls = state["calls"]
        self.full.targets = VMETargets(state["channel_means"], state["edges"])
        self.active = self.full if state["full"] else self.first

    def set_targets(self, images_model: Tensor) -> None:
        """Read the M and E targets off ``images_model`` and switch to the full VME."""
        self.full.targets = VMETargets.from_images(self.full.unit(images_model.detach()), blur=self.edge_blur)
        self.active = self.full

    def __call__(self, images_model: Tensor) -> Tensor:
        step = self.calls % self.iterations
        self.calls += 1
        if step == 0:
            self.active = self.first
        if step == self.switch or (self.refresh and step > self.switch and (step - self.switch) % self.refresh == 0):
            self.set_targets(images_model)
        return self.active(images_model)
