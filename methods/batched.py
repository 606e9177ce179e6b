"""Gradients of several independent dummy batches in one vmapped pass.

GradInversion's candidate batches and Inverting Gradients' restarts are G
independent optimisations of G batches of B images. Stacking them into one
(G, B, C, H, W) tensor and computing each batch's model gradient with
``torch.func`` (``vmap`` over the group axis of ``grad`` of a ``functional_call``)
costs less than G separate runs (docs/performance.md); ordinary autograd then
differentiates the objective through that pass with respect to the images.
"""

from __future__ import annotations

import copy
import functools
import types

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from methods.budget import count_evaluations

BatchNorm = nn.modules.batchnorm._BatchNorm


def batch_norm_layers(model: nn.Module) -> list[BatchNorm]:
    return [m for m in model.modules() if isinstance(m, BatchNorm)]


def _batch_norm_from_primitives(
    layer: BatchNorm, x: Tensor, *, statistics_sink: list[Tensor] | None = None, prior_scale: float = 1.0
) -> Tensor:
    """BatchNorm's forward written with elementary ops; never writes the running statistics.

    Same normalisation as ``nn.BatchNorm*`` (batch statistics in train mode or without
    running statistics, running statistics otherwise). We need it because torch.func's
    batching rule for the fused batch-norm backward gives a wrong *second-order*
    derivative in train mode under ``vmap`` (pytorch/functorch#534): differentiating
    vmapped per-batch gradients with respect to the images would be off by ~1e-3
    relative. Built from elementary ops, every derivative is exact.

    With a ``statistics_sink`` the layer also appends its term of the BatchNorm-statistics
    prior (Yin et al. 2021, eq. 6; the same loss as ``methods.priors.BatchNormStatistics``)
    computed from the batch mean and variance it has just used, instead of a hook
    recomputing them from a copy of the input (11% of a GradInversion iteration).
    """
    shape = (1, -1) + (1,) * (x.dim() - 2)
    batch_statistics = layer.training or layer.running_mean is None
    if batch_statistics or statistics_sink is not None:
        dims = [0, *range(2, x.dim())]
        mean = x.mean(dims, keepdim=True)
        var = (x - mean).pow(2).mean(dims, keepdim=True)
    if statistics_sink is not None:
        term = (mean.reshape(-1) - layer.running_mean).norm() + (var.reshape(-1) - layer.running_var).norm()
        statistics_sink.append(prior_scale * term)
    if not batch_statistics:
        mean, var = layer.running_mean.view(shape), layer.running_var.view(shape)
    out = (x - mean) * torch.rsqrt(var + layer.eps)
    if layer.weight is not None:
        out = out * layer.weight.view(shape) + layer.bias.view(shape)
    return out


class GroupGradients:
    """Model gradients of G batches in one vmapped pass, and optionally their BatchNorm-statistics losses.

    Works on a private copy of ``model`` whose BatchNorm layers use an elementary-op
    forward (see ``_batch_norm_from_primitives``); the caller's model is not touched.
    Call with images (G, B, C, H, W) and class-index labels (B,) shared by every batch;
    returns one gradient per trainable parameter, in ``model.parameters()`` order, each
    shaped (G, *param.shape) (the gradient of that batch's mean cross-entropy, with its own
    BatchNorm batch statistics in train mode), and each batch's BatchNorm-statistics loss,
    shaped (G,) (zeros without the prior). ``first_bn_scale`` weights the first BN layer's term.
    With the prior, every BatchNorm layer needs running statistics; the calling method checks that
    and says which of its options to change.
    """

    def __init__(self, model: nn.Module, *, bn_prior: bool = False, first_bn_scale: float = 10.0) -> None:
        self.model = copy.deepcopy(model)
        layers = batch_norm_layers(self.model)
        self._terms: list[Tensor] | None = [] if bn_prior else None
        for index, layer in enumerate(layers):
            layer.forward = types.MethodType(
                functools.partial(
                    _batch_norm_from_primitives,
                    statistics_sink=self._terms,
                    prior_scale=first_bn_scale if index == 0 else 1.0,
                ),
                layer,
            )
        trainable = [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]
        self.names = [name for name, _ in trainable]
        self.params = {name: p.detach() for name, p in trainable}
        self._batched = vmap(grad(self._loss, has_aux=True), in_dims=(None, 0, None))

    def _loss(self, params: dict[str, Tensor], images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        loss = F.cross_entropy(functional_call(self.model, params, (images,)), labels)
        if self._terms is None:
            return loss, loss.new_zeros(())
        # inside vmap each call sees one batch, so the recorded terms are that batch's own statistics
        prior = torch.stack(self._terms).sum()
        self._terms.clear()
        return loss, prior

    def __call__(self, images: Tensor, labels: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
        count_evaluations(images.shape[0])  # G batches: G gradient evaluations in one pass
        if self._terms is not None:
            self._terms.clear()
        gradients, prior = self._batched(self.params, images, labels)
        return tuple(gradients[name] for name in self.names), prior
