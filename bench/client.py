"""The FedSGD client: computes the update the attacker observes, and what crosses over."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from bench.defences import ClientBatch, Defence, cosine, describe
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


@dataclass(frozen=True)
class ClientRound:
    """A round as the harness sees it: what crossed over, and what the defence cost (never shown to the attacker)."""

    observation: Observation
    undefended: tuple[Tensor, ...]
    # cosine similarity of the defended to the undefended update (1 without a defence)
    update_cosine: float


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
    defence: Defence | None = None,
    defence_generator: torch.Generator | None = None,
) -> Observation:
    """One client's FedSGD round: the gradient of the mean cross-entropy of its batch.

    Returns what the attacker sees: a copy of the global model (in the client's mode,
    with frozen BN statistics), the gradients (after ``defence``, if any) and the public
    metadata; the labels only when the threat model grants them. The images never cross over.
    """
    return client_round(
        model,
        images_unit,
        labels,
        mean=mean,
        std=std,
        num_classes=num_classes,
        mode=mode,
        labels_known=labels_known,
        defence=defence,
        defence_generator=defence_generator,
    ).observation


def client_round(
    model: nn.Module,
    images_unit: Tensor,
    labels: Tensor,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    num_classes: int,
    mode: Literal["train", "eval"] = "train",
    labels_known: bool = False,
    defence: Defence | None = None,
    defence_generator: torch.Generator | None = None,
) -> ClientRound:
    """``client_update`` that also returns the undefended update and the defence's utility cost.

    ``defence_generator`` (CPU) is the defence's only source of randomness; the runner seeds it from
    the trial seed.
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
    undefended, description = gradients, None
    if defence is not None:
        if defence_generator is None:
            raise ValueError("a defence needs defence_generator, a torch.Generator seeded from the trial seed")
        batch = ClientBatch(model=client_model, inputs=normalised, labels=labels, gradients=gradients)
        gradients = tuple(g.detach() for g in defence.apply(batch, defence_generator))
        description = describe(defence)
    observation = Observation(
        model=attacker_model,
        gradients=gradients,
        batch_size=images_unit.shape[0],
        image_shape=tuple(images_unit.shape[1:]),
        num_classes=num_classes,
        mean=tuple(mean),
        std=tuple(std),
        labels=labels.clone() if labels_known else None,
        defence=description,
    )
    return ClientRound(observation, undefended, cosine(gradients, undefended) if defence is not None else 1.0)
