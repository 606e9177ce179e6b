"""Gradient-matching losses between a dummy batch's gradients and the exposed ones.

Each loss flattens the gradient tuple into one vector once, so the distance is a
handful of fused ops over all layers rather than a Python loop per layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

from methods.base import UnknownNameError

GradientLossName = Literal["euclidean", "cosine"]


def flatten(gradients: Sequence[Tensor]) -> Tensor:
    return torch.cat([g.reshape(-1) for g in gradients])


class EuclideanLoss:
    """Squared L2 distance summed over all layers (Zhu et al. 2019, DLG)."""

    def __init__(self, target: Sequence[Tensor]) -> None:
        self.target = flatten(target).detach()

    def __call__(self, dummy: Sequence[Tensor]) -> Tensor:
        return (flatten(dummy) - self.target).pow(2).sum()


class CosineLoss:
    """1 - cosine similarity of the concatenated gradients (Geiping et al. 2020)."""

    def __init__(self, target: Sequence[Tensor]) -> None:
        self.target = flatten(target).detach()
        self.target_norm = self.target.norm()

    def __call__(self, dummy: Sequence[Tensor]) -> Tensor:
        flat = flatten(dummy)
        return 1 - (flat @ self.target) / (flat.norm() * self.target_norm + 1e-12)


GRADIENT_LOSSES: dict[str, Callable[[Sequence[Tensor]], Callable[[Sequence[Tensor]], Tensor]]] = {
    "euclidean": EuclideanLoss,
    "cosine": CosineLoss,
}


def build_gradient_loss(name: str, target: Sequence[Tensor]) -> Callable[[Sequence[Tensor]], Tensor]:
    try:
        return GRADIENT_LOSSES[name](target)
    except KeyError:
        raise UnknownNameError(
            f"unknown gradient loss {name!r}; choose one of {', '.join(sorted(GRADIENT_LOSSES))}"
        ) from None
