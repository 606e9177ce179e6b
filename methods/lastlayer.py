"""The last layer's gradients, read the way every label strategy reads them (shared by methods.labels and LRB).

Notation of ``methods.labels``: the final ``nn.Linear`` has weight W (K, F) and bias b; under the mean
cross-entropy over B samples ``db_c = mean_i p_ic - n_c / B``. A FedAvg weight difference is read as the mean
gradient of its local steps (``methods.fedavg.averaged_gradient``, docs/fedavg.md), so every strategy has one rule.
"""

from __future__ import annotations

import torch
from torch import Tensor

from methods.base import Observation
from methods.fedavg import averaged_gradient


def last_layer_gradients(observation: Observation) -> tuple[Tensor, Tensor]:
    """The classifier's weight gradient (K, F) and bias gradient (K,): the last two exposed gradients (a FedAvg
    weight difference read as its local steps' mean gradient)."""
    grads = observation.gradients
    classes = observation.num_classes
    if len(grads) < 2:
        raise ValueError(
            f"need the gradients of a final nn.Linear with bias, but only {len(grads)} gradient(s) were exposed"
        )
    weight, bias = grads[-2], grads[-1]
    if weight.ndim != 2 or bias.ndim != 1 or weight.shape[0] != classes or bias.shape[0] != classes:
        raise ValueError(
            f"the last two gradients have shapes {tuple(weight.shape)} and {tuple(bias.shape)}; label inference "
            f"needs the model to end in nn.Linear(F, {classes}) with bias, i.e. shapes ({classes}, F) and ({classes},)"
        )
    weight, bias = averaged_gradient(observation, (weight, bias))
    return weight, bias


def last_layer_parameters(observation: Observation) -> tuple[Tensor, Tensor]:
    """The classifier's own weight and bias, matched to the gradients by ``model.parameters()`` order."""
    params = [p for p in observation.model.parameters() if p.requires_grad]
    weight, bias = params[-2].detach(), params[-1].detach()
    grad_w, grad_b = last_layer_gradients(observation)
    if weight.shape != grad_w.shape or bias.shape != grad_b.shape:
        raise ValueError("the model's last two trainable parameters are not the classifier the gradients belong to")
    return weight, bias


def precise_dtype(device: torch.device) -> torch.dtype:
    # counts come from differences of probabilities ~1/K; float64 keeps rounding out of the picture (MPS lacks it)
    return torch.float32 if device.type == "mps" else torch.float64


def precise(t: Tensor) -> Tensor:
    return t.detach().to(precise_dtype(t.device))


def multiset(counts: Tensor) -> Tensor:
    """Labels sorted by class, class c repeated counts[c] times."""
    classes = torch.arange(counts.numel(), device=counts.device)
    return torch.repeat_interleave(classes, counts.long())


def round_to_total(estimates: Tensor, total: int, present_mask: Tensor) -> Tensor:
    """Integer counts near ``estimates`` that sum to ``total`` (largest remainder method).

    Every present class keeps at least one sample; if more classes are present
    than ``total`` allows, only the ``total`` with the largest estimates count as present.
    """
    estimates = estimates.detach().to(torch.float64).cpu().clamp(min=0)
    present = present_mask.detach().cpu().bool().clone()
    if int(present.sum()) > total:
        keep = torch.topk(torch.where(present, estimates, torch.full_like(estimates, -1.0)), total).indices
        present = torch.zeros_like(present)
        present[keep] = True
    counts = estimates.floor()
    counts = torch.where(present, counts.clamp(min=1), counts)
    residual = estimates - counts
    floor = present.to(torch.float64)
    while int(counts.sum()) < total:
        c = int(residual.argmax())
        counts[c] += 1
        residual[c] -= 1
    while int(counts.sum()) > total:
        removable = counts > floor
        c = int(torch.where(removable, residual, torch.full_like(residual, float("inf"))).argmin())
        counts[c] -= 1
        residual[c] += 1
    return counts.long().to(present_mask.device)


def check_batch(observation: Observation) -> int:
    batch = observation.batch_size
    if batch < 1:
        raise ValueError(f"batch_size must be positive, got {batch}")
    return batch
