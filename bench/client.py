"""The FedSGD client: computes the update the attacker observes, and what crosses over."""

from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import Tensor, nn

from methods.base import Observation
from methods.optimise import model_gradients


def freeze_running_statistics(model: nn.Module) -> nn.Module:
    """Stop BatchNorm layers from updating their running statistics.

    In train mode the forward pass still normalises with batch statistics exactly
    as the client's did, but the buffers are never written, so dummy forward
    passes (also under ``torch.func.vmap``) leave the global model untouched.
    In eval mode the running statistics are used as usual.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.track_running_stats = False
    return model


def client_update(
    model: nn.Module,
    images_unit: Tensor,
    labels: Tensor,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    num_classes: int,
    mode: Literal["train", "eval"] = "train",
    labels_known: bool = False,
) -> Observation:
    """One client's FedSGD round: the gradient of the mean cross-entropy of its batch.

    Returns what the attacker sees: a copy of the global model (in the client's mode,
    with frozen BN statistics), the gradients and the public metadata; the labels
    only when the threat model grants them. The images never cross over.
    """
    attacker_model = freeze_running_statistics(copy.deepcopy(model)).train(mode == "train")
    for param in attacker_model.parameters():
        param.requires_grad_(True)
    client_model = freeze_running_statistics(copy.deepcopy(model)).train(mode == "train")
    shape = (1, len(mean), 1, 1)
    normalised = (images_unit - torch.tensor(mean, device=images_unit.device).view(shape)) / torch.tensor(
        std, device=images_unit.device
    ).view(shape)
    gradients = tuple(g.detach() for g in model_gradients(client_model, normalised, labels, create_graph=False))
    return Observation(
        model=attacker_model,
        gradients=gradients,
        batch_size=images_unit.shape[0],
        image_shape=tuple(images_unit.shape[1:]),
        num_classes=num_classes,
        mean=tuple(mean),
        std=tuple(std),
        labels=labels.clone() if labels_known else None,
    )
