"""Gradient-matching losses between a dummy batch's gradients and the exposed ones.

A loss is called with one gradient per trainable parameter and returns a scalar;
``per_group`` takes gradients with a leading group axis (G, *param.shape), as
``methods.batched.GroupGradients`` returns them, and returns one distance per group.
The single-batch forms loop over no layers in Python: the euclidean distance is
one ``torch._foreach_*`` expression over the layers, the cosine one dot product of
the concatenated gradient. The per-group forms do loop over layers: with a group
axis there is no foreach reduction per group, and one small reduction per layer
measured 2-5% faster per GradInversion iteration than concatenating G copies of
every gradient first, or than a foreach norm over per-group slices
(docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, Protocol

import torch
from torch import Tensor

from methods.registry import Registry

GradientLossName = Literal["euclidean", "cosine"]


class GradientLoss(Protocol):
    def __call__(self, dummy: Sequence[Tensor]) -> Tensor: ...

    def per_group(self, dummy: Sequence[Tensor]) -> Tensor: ...


def flatten(gradients: Sequence[Tensor]) -> Tensor:
    return torch.cat([g.reshape(-1) for g in gradients])


class EuclideanLoss:
    """Squared L2 distance summed over all layers (Zhu et al. 2019, DLG)."""

    def __init__(self, target: Sequence[Tensor]) -> None:
        self.layers = [t.detach() for t in target]
        self.target_energy = torch.stack(torch._foreach_norm(self.layers)).square().sum()

    def __call__(self, dummy: Sequence[Tensor]) -> Tensor:
        # per-layer norms in one foreach call: no concatenated copy of every gradient per evaluation
        return torch.stack(torch._foreach_norm(torch._foreach_sub(list(dummy), self.layers))).square().sum()

    def per_group(self, dummy: Sequence[Tensor]) -> Tensor:
        groups = dummy[0].shape[0]
        per_layer = [(g - t).pow(2).reshape(groups, -1).sum(dim=1) for g, t in zip(dummy, self.layers, strict=True)]
        return torch.stack(per_layer).sum(dim=0)


class CosineLoss:
    """1 - cosine similarity of the concatenated gradients (Geiping et al. 2020)."""

    def __init__(self, target: Sequence[Tensor]) -> None:
        self.layers = [t.detach().reshape(-1) for t in target]
        self.target = flatten(self.layers)
        self.target_norm = self.target.norm()

    def __call__(self, dummy: Sequence[Tensor]) -> Tensor:
        flat = flatten(dummy)
        return 1 - (flat @ self.target) / (flat.norm() * self.target_norm + 1e-12)

    def per_group(self, dummy: Sequence[Tensor]) -> Tensor:
        groups = dummy[0].shape[0]
        rows = [g.reshape(groups, -1) for g in dummy]
        dot = torch.stack([row @ t for row, t in zip(rows, self.layers, strict=True)]).sum(dim=0)
        norm = torch.stack([row.pow(2).sum(dim=1) for row in rows]).sum(dim=0).sqrt()
        return 1 - dot / (norm * self.target_norm + 1e-12)


GRADIENT_LOSSES: Registry[Callable[[Sequence[Tensor]], GradientLoss]] = Registry("gradient loss")
GRADIENT_LOSSES.add("euclidean", EuclideanLoss)
GRADIENT_LOSSES.add("cosine", CosineLoss)


def build_gradient_loss(name: str, target: Sequence[Tensor]) -> GradientLoss:
    return GRADIENT_LOSSES.get(name)(target)
