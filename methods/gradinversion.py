"""GradInversion: Yin, Mallya, Vahdat, Alvarez, Kautz and Molchanov, "See through Gradients: Image Batch
Recovery via GradInversion", CVPR 2021.

What makes GradInversion itself:

* a euclidean gradient distance plus three image priors: total variation, the
  l2 norm of the image, and a BatchNorm-statistics prior that pulls every BN
  layer's batch mean and variance towards the layer's running statistics (the
  first layer weighted ``first_bn_scale`` times more);
* group consistency: ``group_size`` candidate batches, started from different
  random images, are optimised together and each is pulled towards their
  consensus. The paper registers the candidates to each other before averaging;
  we use the plain pixel-wise mean of the candidates as the consensus, the
  common simplification;
* Langevin-style Gaussian noise after each Adam step, a linear warm-up and a
  cosine decay of the learning rate;
* label restoration from the minima of the last layer's weight-gradient rows
  (the ``yin`` strategy), which assumes that no label occurs twice in the batch.

The candidates are one tensor of shape (G*B, C, H, W). Each candidate's gradient
(of its own mean cross-entropy over its B images, with its own BatchNorm batch
statistics in train mode) comes out of one pass of ``torch.func``: ``vmap`` over
the candidate axis of ``grad`` of a ``functional_call``. Ordinary autograd then
differentiates the objective through that pass with respect to the images.
"""

from __future__ import annotations

import copy
import types
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from methods.base import Observation, ProgressCallback, Reconstruction, register_method
from methods.labels import labels_for
from methods.losses import flatten
from methods.matching import initial_images
from methods.optimise import OptimiserConfig, ProgressHooks, optimise
from methods.priors import BatchNormStatistics, l2_norm, total_variation

NO_BATCHNORM_MESSAGE = (
    "gradinversion needs a model with BatchNorm layers for its BN-statistics prior; "
    "use model=convnet or model=resnet18, or set bn_weight=0"
)


def _batch_norm_from_primitives(self: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
    """BatchNorm's forward written with elementary ops; never writes the running statistics.

    Same normalisation as ``nn.BatchNorm*`` (batch statistics in train mode or without
    running statistics, running statistics otherwise). We need it because torch.func's
    batching rule for the fused batch-norm backward gives a wrong *second-order*
    derivative in train mode under ``vmap`` (pytorch/functorch#534): differentiating
    vmapped per-candidate gradients with respect to the images would be off by ~1e-3
    relative. Built from elementary ops, every derivative is exact.
    """
    shape = (1, -1) + (1,) * (x.dim() - 2)
    if self.training or self.running_mean is None:
        dims = [0, *range(2, x.dim())]
        mean = x.mean(dims, keepdim=True)
        var = (x - mean).pow(2).mean(dims, keepdim=True)
    else:
        mean, var = self.running_mean.view(shape), self.running_var.view(shape)
    out = (x - mean) * torch.rsqrt(var + self.eps)
    if self.weight is not None:
        out = out * self.weight.view(shape) + self.bias.view(shape)
    return out


def batch_norm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class CandidateGradients:
    """Gradients of G candidate batches in one vmapped pass (and, optionally, their BN-statistics losses).

    Works on a private copy of ``model`` whose BatchNorm layers use an elementary-op
    forward (see ``_batch_norm_from_primitives``); the caller's model is not touched.
    Call with images (G, B, C, H, W) and labels (G, B); returns one gradient per
    trainable parameter, in ``model.parameters()`` order, each shaped (G, *param.shape),
    and the BN-statistics loss of each candidate, shaped (G,) (zeros without a prior).
    """

    def __init__(self, model: nn.Module, *, bn_prior: bool = False, first_bn_scale: float = 10.0) -> None:
        self.model = copy.deepcopy(model)
        for layer in batch_norm_layers(self.model):
            layer.forward = types.MethodType(_batch_norm_from_primitives, layer)
        trainable = [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]
        self.names = [name for name, _ in trainable]
        self.params = {name: p.detach() for name, p in trainable}
        # Inside vmap each call sees one candidate's batch, so groups=1 scores exactly that candidate's statistics.
        self.bn_statistics = BatchNormStatistics(self.model, first_layer_scale=first_bn_scale) if bn_prior else None
        self._batched = vmap(grad(self._loss, has_aux=True), in_dims=(None, 0, 0))

    def _loss(self, params: dict[str, Tensor], images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        loss = F.cross_entropy(functional_call(self.model, params, (images,)), labels)
        prior = self.bn_statistics.collect() if self.bn_statistics is not None else loss.new_zeros(())
        return loss, prior

    def __call__(self, images: Tensor, labels: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
        gradients, prior = self._batched(self.params, images, labels)
        return tuple(gradients[name] for name in self.names), prior

    def close(self) -> None:
        if self.bn_statistics is not None:
            self.bn_statistics.close()


def group_consistency(candidates: Tensor) -> Tensor:
    """Sum over candidates (G, B, C, H, W) of the mean squared distance to their pixel-wise mean."""
    consensus = candidates.mean(dim=0, keepdim=True)
    return (candidates - consensus).pow(2).flatten(1).mean(dim=1).sum()


@register_method()
@dataclass
class GradInversion:
    name: ClassVar[str] = "gradinversion"
    paper: ClassVar[str] = (
        "Yin, Mallya, Vahdat, Alvarez, Kautz, Molchanov. See through Gradients: Image Batch Recovery "
        "via GradInversion. CVPR 2021"
    )

    iterations: int = 20_000
    lr: float = 0.1
    # Adam on the sign of the gradient (IG's trick, not the paper's): at short budgets Adam's second-moment
    # estimate stays inflated by the huge gradients of the first iterations and the images stall
    signed: bool = False
    # linear warm-up over this fraction of the budget, then cosine decay to zero
    warmup_fraction: float = 0.05
    # Langevin-style exploration: Gaussian noise of std noise * (current lr) added after each step
    noise: float = 0.2
    # weights of the objective's terms; the gradient term is ||g - g*||^2 / ||g*||^2 (relative, so that one
    # weight fits untrained and trained models). The paper's weights do not carry over to our small models
    # and batches (docs/methods/gradinversion.md); these were measured on convnet/crops.
    gradient_scale: float = 0.01
    tv_weight: float = 0.1
    l2_weight: float = 1e-6
    bn_weight: float = 1e-4
    first_bn_scale: float = 10.0
    # G candidate batches from different random starts, each pulled towards their mean
    group_size: int = 4
    group_weight: float = 0.01
    # what to return: the candidates' pixel-wise mean, or the candidate whose gradient matches best
    output: Literal["consensus", "best"] = "consensus"
    label_strategy: str = "yin"

    def __post_init__(self) -> None:
        if self.group_size < 1:
            raise ValueError(f"group_size must be at least 1, got {self.group_size}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must lie in [0, 1), got {self.warmup_fraction}")
        if self.output not in ("consensus", "best"):
            raise ValueError(f"output must be 'consensus' or 'best', got {self.output!r}")
        weights = ("gradient_scale", "tv_weight", "l2_weight", "bn_weight", "first_bn_scale", "group_weight", "noise")
        for field_name in weights:
            if getattr(self, field_name) < 0:
                raise ValueError(f"{field_name} must be non-negative, got {getattr(self, field_name)}")

    def reconstruct(
        self,
        observation: Observation,
        *,
        generator: torch.Generator,
        callback: ProgressCallback | None = None,
        callback_every: int = 0,
        progress: bool = False,
    ) -> Reconstruction:
        if self.bn_weight > 0:
            layers = batch_norm_layers(observation.model)
            if not layers:
                raise ValueError(NO_BATCHNORM_MESSAGE)
            if any(layer.running_mean is None or layer.running_var is None for layer in layers):
                raise ValueError(
                    "gradinversion's BN-statistics prior needs running statistics in every BatchNorm layer, "
                    "but this model's BatchNorm layers were built without them; set bn_weight=0"
                )
        labels = labels_for(observation, self.label_strategy)

        groups, batch, shape = self.group_size, observation.batch_size, observation.image_shape
        candidate_labels = labels.expand(groups, batch)
        target = flatten(observation.gradients).detach()
        target_energy = target.pow(2).sum().clamp(min=torch.finfo(target.dtype).tiny)
        gradients = CandidateGradients(
            observation.model, bn_prior=self.bn_weight > 0, first_bn_scale=self.first_bn_scale
        )
        images = initial_images(observation, "randn", generator, count=groups).requires_grad_(True)
        low, high = observation.input_box()
        last_distance = torch.zeros(groups, device=observation.device)

        def distances(candidates: Tensor) -> tuple[Tensor, Tensor]:
            per_layer, prior = gradients(candidates, candidate_labels)
            flat = torch.cat([g.reshape(groups, -1) for g in per_layer], dim=1)
            return (flat - target).pow(2).sum(dim=1) / target_energy, prior

        def objective() -> Tensor:
            candidates = images.view(groups, batch, *shape)
            distance, bn_loss = distances(candidates)
            last_distance.copy_(distance.detach())
            # per-candidate terms are summed over candidates, so each candidate sees the objective of a lone run
            value = self.gradient_scale * distance.sum()
            if self.bn_weight:
                value = value + self.bn_weight * bn_loss.sum()
            if self.tv_weight:
                value = value + self.tv_weight * groups * total_variation(images)
            if self.l2_weight:
                value = value + self.l2_weight * groups * l2_norm(images)
            if self.group_weight and groups > 1:
                value = value + self.group_weight * group_consistency(candidates)
            return value

        def project() -> None:
            images.copy_(torch.max(torch.min(images, high), low))

        def output_images(best: int | None = None) -> Tensor:
            candidates = images.detach().view(groups, batch, *shape)
            chosen = candidates.mean(dim=0) if self.output == "consensus" else candidates[best]
            return observation.denormalise(chosen).clamp(0, 1)

        config = OptimiserConfig(
            optimiser="adam",
            lr=self.lr,
            iterations=self.iterations,
            signed=self.signed,
            schedule="cosine",
            warmup=int(self.warmup_fraction * self.iterations),
            noise=self.noise,
        )
        try:
            trace = optimise(
                objective,
                [images],
                config,
                project=project,
                snapshot=lambda: output_images(int(last_distance.argmin())),
                hooks=ProgressHooks(callback, callback_every, progress, self.name),
                generator=generator,
            )
            # the last objective was evaluated before the last step (and noise); score the final candidates
            with torch.no_grad():
                final_distance, _ = distances(images.detach().view(groups, batch, *shape))
        finally:
            gradients.close()
        best = int(final_distance.argmin())
        return Reconstruction(
            images=output_images(best),
            labels=labels,
            trace=trace,
            extras={
                "candidates": observation.denormalise(images.detach()).clamp(0, 1).view(groups, batch, *shape),
                "candidate_gradient_distance": final_distance.tolist(),
                "best_candidate": best,
            },
        )
