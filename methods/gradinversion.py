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
the candidate axis of ``grad`` of a ``functional_call`` (``methods.batched``), which also
yields each candidate's BatchNorm-statistics prior from the statistics its
normalisation used. Ordinary autograd then differentiates the objective through
that pass with respect to the images.

When that batch is predicted not to fit ``memory_budget_gb`` (``methods.memory``), the candidates go one
after another through the plain model, with the BatchNorm-statistics prior from forward hooks
(``methods.priors.BatchNormStatistics``): each candidate's terms are backpropagated as soon as they are
computed, so only one candidate's graph is alive at a time. Same objective, same gradient, same step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from methods.base import Observation, ProgressCallback, Reconstruction, register_method
from methods.batched import GroupGradients, batch_norm_layers
from methods.labels import labels_for
from methods.losses import EuclideanLoss
from methods.matching import initial_images
from methods.memory import batched_fits
from methods.optimise import OptimiserConfig, ProgressHooks, model_gradients, optimise
from methods.options import option
from methods.priors import BatchNormStatistics, l2_norm, total_variation

NO_BATCHNORM_MESSAGE = (
    "gradinversion needs a model with BatchNorm layers for its BN-statistics prior; "
    "use model=convnet or model=resnet18, or set bn_weight=0"
)


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

    # signed in the quick profile: at quick budgets plain Adam stalls on trained models
    # (docs/methods/gradinversion.md)
    profiles: ClassVar[dict[str, dict]] = {
        "quick": {"iterations": 119, "group_size": 2, "signed": True},
        "paper": {"iterations": 20_000, "group_size": 4},
    }

    iterations: int = option(20_000, minimum=1, help="Adam steps")
    lr: float = option(0.1, above=0, help="Adam; linear warm-up, then cosine decay to zero")
    # IG's trick, not the paper's: at short budgets Adam's second-moment estimate stays inflated by the huge
    # gradients of the first iterations and the images stall
    signed: bool = option(False, help="Adam on signed gradients")
    warmup_fraction: float = option(0.05, minimum=0, below=1, help="warm-up length as a fraction of the budget")
    noise: float = option(0.2, minimum=0, help="Langevin-style noise after each step: std noise * current lr")
    # the gradient term is relative so that one weight fits untrained and trained models; the paper's weights
    # do not carry over to our small models and batches (docs/methods/gradinversion.md)
    gradient_scale: float = option(0.01, minimum=0, help="weight of ||g - g*||^2 / ||g*||^2")
    tv_weight: float = option(0.1, minimum=0, help="total variation of the model-space images")
    l2_weight: float = option(1e-6, minimum=0, help="mean squared pixel value (model space)")
    bn_weight: float = option(1e-4, minimum=0, help="BN-statistics prior: batch statistics vs running statistics")
    first_bn_scale: float = option(10.0, minimum=0, help="extra weight of the first BN layer in that prior")
    group_size: int = option(4, minimum=1, help="candidate batches from different random starts")
    group_weight: float = option(0.01, minimum=0, help="pull of each candidate towards the candidates' mean")
    output: Literal["consensus", "best"] = option(
        "consensus", help="the candidates' pixel-wise mean, or the candidate whose gradient matches best"
    )
    memory_budget_gb: float = option(
        0.0, minimum=0, help="vmap the candidates only if predicted to fit (GiB); 0: share of free memory"
    )
    label_strategy: str = option("yin", help="assumes distinct labels; yin's rule is wrong when a label repeats")

    def budget_iterations(self, evaluations: int) -> int:
        """Each iteration costs one evaluation per candidate, and so does the final scoring of the candidates."""
        return evaluations // self.group_size - 1

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
        distance_to_target = EuclideanLoss(observation.gradients)
        target_energy = distance_to_target.target_energy.clamp(
            min=torch.finfo(distance_to_target.target_energy.dtype).tiny
        )
        images = initial_images(observation, "randn", generator, count=groups).requires_grad_(True)
        low, high = observation.input_box()
        last_distance = torch.zeros(groups, device=observation.device)
        batched, memory = self._batched(observation, distance_to_target)
        if batched:
            group_gradients = GroupGradients(
                observation.model, bn_prior=self.bn_weight > 0, first_bn_scale=self.first_bn_scale
            )
        else:
            statistics = BatchNormStatistics(observation.model, self.first_bn_scale) if self.bn_weight > 0 else None

        def distances(candidates: Tensor) -> tuple[Tensor, Tensor]:
            """Every candidate's relative gradient distance and BN-statistics loss, each (G,), in one vmapped pass."""
            per_layer, prior = group_gradients(candidates, labels)
            return distance_to_target.per_group(per_layer) / target_energy, prior

        def candidate_terms(candidate: Tensor, create_graph: bool = True) -> tuple[Tensor, Tensor]:
            """One candidate's relative gradient distance and BN-statistics loss, through the plain model."""
            per_layer = model_gradients(observation.model, candidate, labels, create_graph=create_graph)
            prior = statistics.collect() if statistics is not None else candidate.new_zeros(())
            return distance_to_target(per_layer) / target_energy, prior

        def model_terms(candidates: Tensor) -> Tensor:
            if batched:
                distance, bn_loss = distances(candidates)
                last_distance.copy_(distance.detach())
                return self.gradient_scale * distance.sum() + self.bn_weight * bn_loss.sum()
            # one candidate's graph at a time: backpropagate its terms now, return their value without a graph
            values = []
            for group in range(groups):
                distance, bn_loss = candidate_terms(candidates[group])
                last_distance[group] = distance.detach()
                value = self.gradient_scale * distance + self.bn_weight * bn_loss
                value.backward(inputs=[images])
                values.append(value.detach())
            # attached to the images (a zero gradient), so the loop's backward works without image-wide terms too
            return torch.stack(values).sum() + 0 * images.sum()

        def objective() -> Tensor:
            candidates = images.view(groups, batch, *shape)
            # per-candidate terms are summed over candidates, so each candidate sees the objective of a lone run
            value = model_terms(candidates)
            if self.tv_weight:
                value = value + self.tv_weight * groups * total_variation(images)
            if self.l2_weight:
                value = value + self.l2_weight * groups * l2_norm(images)
            if self.group_weight and groups > 1:
                value = value + self.group_weight * group_consistency(candidates)
            return value

        def project() -> None:
            images.clamp_(low, high)

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
            final = images.detach().view(groups, batch, *shape)
            if batched:
                with torch.no_grad():
                    final_distance, _ = distances(final)
            else:
                final_distance = torch.stack([candidate_terms(c, create_graph=False)[0] for c in final])
        finally:
            if not batched and statistics is not None:
                statistics.close()
        best = int(final_distance.argmin())
        return Reconstruction(
            images=output_images(best),
            labels=labels,
            trace=trace,
            extras={
                "candidates": observation.denormalise(images.detach()).clamp(0, 1).view(groups, batch, *shape),
                "candidate_gradient_distance": final_distance.tolist(),
                "best_candidate": best,
                "batched_candidates": batched,
                **memory,
            },
        )

    def _batched(self, observation: Observation, distance: EuclideanLoss) -> tuple[bool, dict[str, float]]:
        """One vmapped pass over the candidates when there are several and it is predicted to fit the budget."""
        if self.group_size < 2:
            return False, {}
        return batched_fits(
            observation.model,
            observation.image_shape,
            observation.num_classes,
            distance,
            groups=self.group_size,
            batch=observation.batch_size,
            memory_budget_gb=self.memory_budget_gb,
            bn_prior=self.bn_weight > 0,
        )
