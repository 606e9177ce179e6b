"""Gradient-matching losses between a dummy batch's gradients and the exposed ones.

A loss is called with one gradient per trainable parameter and returns a scalar;
``per_group`` takes gradients with a leading group axis (G, *param.shape), as
``methods.batched.GroupGradients`` returns them, and returns one distance per group.
Neither loops over layers in Python where a fused form exists: the euclidean
distance is one ``torch._foreach_*`` expression over the layers, the cosine one
dot product of the concatenated gradient (docs/performance.md measures both forms).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, Protocol

import torch
from torch import Tensor

from methods.base import UnknownNameError

GradientLossName = Literal["euclidean", "cosine"]


class GradientLoss(Protocol):
    def __call__(self, dummy: Sequence[Tensor]) -> Tensor: ...

    def per_group(self, dummy: Sequence[Tensor]) -> Tensor: ...


def flatten(gradients: Sequence[Tensor]) -> Tensor:
    return torch.cat([g.reshape(-1) for g in gradients])


def flatten_groups(gradients: Sequence[Tensor]) -> Tensor:
    """(G, P): each group's gradients concatenated into one row."""
    return torch.cat([g.reshape(g.shape[0], -1) for g in gradients], dim=1)


class EuclideanLoss:
    """Squared L2 distance summed over all layers (Zhu et al. 2019, DLG)."""

    def __init__(self, target: Sequence[Tensor]) -> None:
        self.layers = [t.detach() for t in target]
        self.target = flatten(self.layers)
        self.target_energy = self.target.pow(2).sum()

    def __call__(self, dummy: Sequence[Tensor]) -> Tensor:
        # per-layer norms in one foreach call: no concatenated copy of every gradient per evaluation
        return torch.stack(torch._foreach_norm(torch._foreach_sub(list(dummy), self.layers))).square().sum()

    def per_group(self, dummy: Sequence[Tensor]) -> Tensor:
        return (flatten_groups(dummy) - self.target).pow(2).sum(dim=1)


class CosineLoss:
    """1 - cosine similarity of the concatenated gradients (Geiping et al. 2020)."""

    def __init__(self, target: Sequence[Tensor]) -> None:
        self.target = flatten(target).detach()
        self.target_norm = self.target.norm()

    def __call__(self, dummy: Sequence[Tensor]) -> Tensor:
        flat = flatten(dummy)
        return 1 - (flat @ self.target) / (flat.norm() * self.target_norm + 1e-12)

    def per_group(self, dummy: Sequence[Tensor]) -> Tensor:
        flat = flatten_groups(dummy)
        return 1 - (flat @ self.target) / (flat.norm(dim=1) * self.target_norm + 1e-12)


GRADIENT_LOSSES: dict[str, Callable[[Sequence[Tensor]], GradientLoss]] = {
    "euclidean": EuclideanLoss,
    "cosine": CosineLoss,
}


def build_gradient_loss(name: str, target: Sequence[Tensor]) -> GradientLoss:
    try:
        return GRADIENT_LOSSES[name](target)
    except KeyError:
        raise UnknownNameError(
            f"unknown gradient loss {name!r}; choose one of {', '.join(sorted(GRADIENT_LOSSES))}"
        ) from None
