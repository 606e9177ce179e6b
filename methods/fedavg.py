"""FedAvg's local training, written once for the client that runs it and the attacker that simulates it.

A FedAvg client takes ``local_steps`` SGD steps of ``local_lr`` on mini-batches of its images and sends the
weight difference ``w_after - w_before`` (docs/fedavg.md). Inverting Gradients' multi-step variant (Geiping
et al. 2020, section 5) runs the same steps on dummy images inside its objective and matches the simulated
difference; ``torch.func`` makes every step differentiable with respect to the images, so the objective's
gradient flows back through the whole unrolled training run.

The attacker knows the hyper-parameters but not the client's shuffle. Since dummy images are free
variables, it takes the mini-batches in order (images 0..b-1, then b..2b-1, ...), and the same order again
in every epoch: exact for full-batch steps and at B = 1, an approximation otherwise (docs/fedavg.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad

from methods.base import Observation, UpdateDescription
from methods.budget import count_evaluations

UpdateFunction = Callable[[nn.Module, Tensor, Tensor], tuple[Tensor, ...]]
"""``update(model, images_model_space, labels)``: the update a client would send for these images, one tensor per
trainable parameter; differentiable with respect to the images."""


@dataclass(frozen=True)
class LocalTraining:
    """FedAvg's public hyper-parameters for a client of ``num_samples`` images."""

    local_steps: int
    local_lr: float
    local_batch_size: int
    num_samples: int

    def __post_init__(self) -> None:
        if self.local_steps < 1 or self.num_samples < 1 or self.local_lr <= 0:
            raise ValueError(f"local training needs steps >= 1, samples >= 1 and a positive lr, got {self}")
        if not 1 <= self.local_batch_size <= self.num_samples:
            raise ValueError(
                f"local_batch_size={self.local_batch_size} must lie in 1..{self.num_samples} (the client's images)"
            )

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.num_samples / self.local_batch_size)

    def describe(self) -> UpdateDescription:
        return UpdateDescription(
            kind="weight_difference",
            local_steps=self.local_steps,
            local_lr=self.local_lr,
            local_batch_size=self.local_batch_size,
            num_samples=self.num_samples,
        )

    @classmethod
    def of(cls, update: UpdateDescription) -> LocalTraining:
        return cls(update.local_steps, update.local_lr, update.local_batch_size, update.num_samples)


def minibatches(training: LocalTraining, epoch_order: Callable[[int], Tensor]) -> list[Tensor]:
    """The index tensor of each local step: epoch e visits ``epoch_order(e)`` in chunks of ``local_batch_size``
    (the last chunk of an epoch may be smaller, as a data loader without drop_last gives it)."""
    steps: list[Tensor] = []
    epoch = 0
    while len(steps) < training.local_steps:
        order = epoch_order(epoch)
        size = training.local_batch_size
        steps.extend(order[start : start + size] for start in range(0, len(order), size))
        epoch += 1
    return steps[: training.local_steps]


def sequential_minibatches(training: LocalTraining, device: torch.device | None = None) -> list[Tensor]:
    """The attacker's order: the dummy batch in index order, every epoch."""
    order = torch.arange(training.num_samples, device=device)
    return minibatches(training, lambda _epoch: order)


def shuffled_minibatches(training: LocalTraining, generator: torch.Generator) -> list[Tensor]:
    """The client's order: a fresh permutation of its images every epoch, drawn from ``generator`` only."""
    return minibatches(training, lambda _epoch: torch.randperm(training.num_samples, generator=generator))


def weight_difference(
    model: nn.Module, images: Tensor, labels: Tensor, steps: Sequence[Tensor], lr: float
) -> tuple[Tensor, ...]:
    """``w_after - w_before`` after one SGD step of ``lr`` on the mean cross-entropy of each mini-batch in ``steps``.

    One tensor per trainable parameter, in ``model.parameters()`` order; the model itself is not changed. The
    difference is accumulated directly (the weights of step k are ``w_before + difference``) rather than taken
    as ``w_after - w_before`` at the end: a float32 subtraction of two nearby weights would lose the small
    update's low bits, and with one step of lr 1 the difference is then exactly minus the gradient.
    """
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    start = {name: p.detach() for name, p in trainable}

    def loss(params: dict[str, Tensor], inputs: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(model, params, (inputs,)), targets)

    step_gradient = grad(loss)
    difference = {name: torch.zeros_like(p) for name, p in start.items()}
    for indices in steps:
        count_evaluations(1)  # each local step is one gradient of the model, as in FedSGD
        params = {name: start[name] + difference[name] for name in start}
        gradients = step_gradient(params, images[indices], labels[indices])
        difference = {name: difference[name] - lr * gradients[name] for name in start}
    return tuple(difference[name] for name, _ in trainable)


def simulated_update(observation: Observation) -> UpdateFunction | None:
    """What the attacker computes for dummy images to compare with the observation: None for a FedSGD gradient
    (``methods.matching``'s default, ``model_gradients``), else the weight difference of FedAvg's local steps
    replayed in ``sequential_minibatches`` order."""
    if not observation.is_weight_difference:
        return None
    assert observation.update is not None
    training = LocalTraining.of(observation.update)
    steps = sequential_minibatches(training, observation.device)

    def replay(model: nn.Module, images: Tensor, labels: Tensor) -> tuple[Tensor, ...]:
        return weight_difference(model, images, labels, steps, training.local_lr)

    return replay


def averaged_gradient(observation: Observation, tensors: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """``tensors`` of the observation's update read as a gradient of the mean cross-entropy.

    A weight difference becomes ``-difference / (local_lr * local_steps)``: the mean of the local steps'
    mini-batch gradients, which is the batch's gradient when every image is visited equally often and the
    model moves little (the label strategies' rule for FedAvg, docs/fedavg.md). Gradients pass through.
    """
    if not observation.is_weight_difference:
        return tuple(tensors)
    assert observation.update is not None
    scale = -1.0 / (observation.update.local_lr * observation.update.local_steps)
    return tuple(t * scale for t in tensors)
