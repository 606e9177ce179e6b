"""Floors that need every group's gradient in one vmapped pass: GradInversion's candidates, IG's batched restarts.

BatchNorm is written with elementary ops (``elementary_bn_copy``) because torch.func's fused batch-norm
backward gives a wrong second derivative under ``vmap``; see ``methods.batched``.
"""

from __future__ import annotations

import copy
import functools
import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from bench.perf.floors import (
    Floor,
    finish,
    image_box,
    register_floor,
    step_factor,
    total_variation,
    trainable_parameters,
    warmup_cosine,
)
from bench.perf.measure import Clock, RunResult
from bench.perf.rounds import SEED
from methods.base import device_generator, draw
from methods.optimise import synchronise


def batch_norm_forward(
    self: nn.modules.batchnorm._BatchNorm, x: Tensor, *, terms: list[Tensor] | None, scale: float, recompute: bool
) -> Tensor:
    """BatchNorm from elementary ops (exact second derivatives under vmap); optionally records the BN prior.

    The prior's batch mean and variance are the ones the normalisation computes anyway; ``recompute``
    instead recomputes them from a reshaped copy of the input, as a forward hook has to.
    """
    dims = [0, *range(2, x.dim())]
    shape = (1, -1) + (1,) * (x.dim() - 2)
    batch_stats = self.training or self.running_mean is None
    if batch_stats or (terms is not None and not recompute):
        mean = x.mean(dims, keepdim=True)
        var = (x - mean).pow(2).mean(dims, keepdim=True)
    if terms is not None:
        if recompute:
            flat = x.reshape(1, x.shape[0], x.shape[1], -1).transpose(1, 2).flatten(2)
            stat_mean, stat_var = flat.mean(dim=2), flat.var(dim=2, unbiased=False)
        else:
            stat_mean, stat_var = mean.reshape(1, -1), var.reshape(1, -1)
        term = (stat_mean - self.running_mean).norm(dim=1) + (stat_var - self.running_var).norm(dim=1)
        terms.append(scale * term.sum())
    if not batch_stats:
        mean, var = self.running_mean.view(shape), self.running_var.view(shape)
    out = (x - mean) * torch.rsqrt(var + self.eps)
    if self.weight is not None:
        out = out * self.weight.view(shape) + self.bias.view(shape)
    return out


def elementary_bn_copy(
    model: nn.Module, *, terms: list[Tensor] | None = None, first_scale: float = 1.0, recompute: bool = False
) -> nn.Module:
    model = copy.deepcopy(model)
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for index, layer in enumerate(layers):
        forward = functools.partial(
            batch_norm_forward, terms=terms, scale=first_scale if index == 0 else 1.0, recompute=recompute
        )
        layer.forward = types.MethodType(lambda self, x, f=forward: f(self, x), layer)
    return model


def floor_gradinversion(
    observation: Any,
    attack: Any,
    iterations: int,
    *,
    clock: Clock,
    seed: int = SEED,
    form: str = "layers",
    candidates: str = "vmap",
    bn_stats: str = "reuse",
) -> RunResult:
    """GradInversion: G candidates, relative euclidean distance + BN/TV/l2/group priors, Adam, warm-up + cosine,
    Langevin noise, clamping. ``candidates="vmap"`` computes every candidate's gradient in one vmapped pass;
    ``"loop"`` with one ``autograd.grad`` per candidate."""
    device = observation.device
    groups, batch, shape = attack.group_size, observation.batch_size, observation.image_shape
    generator = torch.Generator().manual_seed(seed)
    terms: list[Tensor] = []
    use_prior = attack.bn_weight > 0
    model = elementary_bn_copy(
        observation.model,
        terms=terms if use_prior else None,
        first_scale=attack.first_bn_scale,
        recompute=bn_stats == "recompute",
    )
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    live_params = trainable_parameters(model)
    labels = observation.labels
    target = [g.detach() for g in observation.gradients]
    energy = torch.stack(torch._foreach_norm(target)).square().sum().clamp(min=torch.finfo(target[0].dtype).tiny)
    target_flat = torch.cat([t.reshape(-1) for t in target]) if form == "cat" else None

    def candidate_loss(p: dict[str, Tensor], x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        terms.clear()
        loss = F.cross_entropy(functional_call(model, p, (x,)), y)
        prior = torch.stack(terms).sum() if use_prior else loss.new_zeros(())
        terms.clear()
        return loss, prior

    batched = vmap(grad(candidate_loss, has_aux=True), in_dims=(None, 0, None))

    def per_candidate(images: Tensor) -> tuple[list[Tensor], Tensor]:
        if candidates == "vmap":
            grads, prior = batched(params, images, labels)
            return [grads[n] for n in names], prior
        per_layer: list[list[Tensor]] = [[] for _ in names]
        priors = []
        for g in range(groups):
            terms.clear()
            loss = F.cross_entropy(model(images[g]), labels)
            priors.append(torch.stack(terms).sum() if use_prior else loss.new_zeros(()))
            for layer, gradient in zip(
                per_layer, torch.autograd.grad(loss, live_params, create_graph=True), strict=True
            ):
                layer.append(gradient)
        terms.clear()
        return [torch.stack(layer) for layer in per_layer], torch.stack(priors)

    def distances(per_layer: list[Tensor]) -> Tensor:
        if form == "cat":
            flat = torch.cat([g.reshape(groups, -1) for g in per_layer], dim=1)
            return (flat - target_flat).pow(2).sum(dim=1) / energy
        per_layer_distance = [(g - t).pow(2).reshape(groups, -1).sum(1) for g, t in zip(per_layer, target, strict=True)]
        return torch.stack(per_layer_distance).sum(0) / energy

    images = draw("randn", (groups * batch, *shape), generator, device).requires_grad_(True)
    noise_generator = device_generator(generator, device)
    low, high = image_box(observation)
    warmup = int(attack.warmup_fraction * iterations)
    optimiser = torch.optim.Adam([images], lr=attack.lr)
    values = []
    start = clock()
    for iteration in range(iterations):
        optimiser.param_groups[0]["lr"] = attack.lr * warmup_cosine(iteration, iterations, warmup)
        optimiser.zero_grad(set_to_none=True)
        group = images.view(groups, batch, *shape)
        per_layer, prior = per_candidate(group)
        value = attack.gradient_scale * distances(per_layer).sum()
        if attack.bn_weight:
            value = value + attack.bn_weight * prior.sum()
        if attack.tv_weight:
            value = value + attack.tv_weight * groups * total_variation(images)
        if attack.l2_weight:
            value = value + attack.l2_weight * groups * images.pow(2).mean()
        if attack.group_weight and groups > 1:
            consensus = group.mean(dim=0, keepdim=True)
            value = value + attack.group_weight * (group - consensus).pow(2).flatten(1).mean(dim=1).sum()
        value.backward(inputs=[images])
        if getattr(attack, "signed", False):
            images.grad.sign_()
        optimiser.step()
        with torch.no_grad():
            if attack.noise:
                lr_next = attack.lr * warmup_cosine(iteration + 1, iterations, warmup)
                noise = torch.randn(images.shape, generator=noise_generator, device=device, dtype=images.dtype)
                images.add_(noise, alpha=attack.noise * lr_next)
            images.clamp_(low, high)
        values.append(value.detach())
    return finish(values, start, clock, device, iterations, iterations)


def floor_ig_batched(
    observation: Any, attack: Any, iterations: int, restarts: int, *, seed: int = SEED, clock: Clock
) -> RunResult:
    """IG with ``restarts`` runs as one (R, B, C, H, W) tensor: vmap over restarts of the per-restart gradient.

    Adam, the sign and the clamp are elementwise, so the stacked optimisation is exactly R independent runs;
    the objective is the sum of the R objectives. Inits are drawn restart by restart, as the sequential loop does.
    """
    device = observation.device
    batch, shape = observation.batch_size, observation.image_shape
    generator = torch.Generator().manual_seed(seed)
    model = elementary_bn_copy(observation.model)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    labels = observation.labels
    target = [g.detach().reshape(-1) for g in observation.gradients]
    target_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(target)))
    batched = vmap(grad(lambda p, x, y: F.cross_entropy(functional_call(model, p, (x,)), y)), in_dims=(None, 0, None))
    inits = [draw("randn", (batch, *shape), generator, device) for _ in range(restarts)]
    images = torch.stack(inits).requires_grad_(True)
    low, high = image_box(observation)
    optimiser = torch.optim.Adam([images], lr=attack.lr)
    values = []
    start = clock()
    for iteration in range(iterations):
        optimiser.param_groups[0]["lr"] = attack.lr * step_factor(iteration, iterations)
        optimiser.zero_grad(set_to_none=True)
        grads = batched(params, images, labels)
        flats = [grads[n].reshape(restarts, -1) for n in names]
        dot = torch.stack([g @ t for g, t in zip(flats, target, strict=True)]).sum(0)
        g_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, dim=1) for g in flats]), dim=0)
        value = 1 - dot / (g_norm * target_norm + 1e-12)
        if attack.tv_weight:
            dx = (images[..., :, 1:] - images[..., :, :-1]).abs().flatten(1).mean(1)
            dy = (images[..., 1:, :] - images[..., :-1, :]).abs().flatten(1).mean(1)
            value = value + attack.tv_weight * (dx + dy)
        value.sum().backward(inputs=[images])
        images.grad.sign_()
        optimiser.step()
        with torch.no_grad():
            images.clamp_(low.unsqueeze(0), high.unsqueeze(0))
        values.append(value.detach())
    synchronise(device)
    seconds = clock() - start
    per_restart = torch.stack(values).T.tolist()  # (R, iterations)
    return RunResult(seconds / iterations, per_restart[0], iterations, extra={"per_restart": per_restart})


register_floor("gradinversion", Floor(floor_gradinversion, {"form": "layers", "bn_stats": "reuse"}, bitwise=True))
