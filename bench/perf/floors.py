"""The floors: each method's optimisation written as a minimal hand-written PyTorch loop, without ``methods`` code.

Same loss, priors, optimiser, schedule, signed gradients, noise, clamping and random draws as the
method, each written the cheapest way; every backward pass goes only into the optimised variables.
``(ours - floor) / floor`` is then the price of the shared components. A floor is optional: a
registered method without one is timed alone (``FLOORS``). GradInversion's floor and IG's batched-restarts
floor, which need a vmapped per-group gradient, are in ``bench.perf.floors_batched``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.perf.measure import Clock, RunResult
from bench.perf.rounds import SEED
from methods.base import draw
from methods.optimise import synchronise


def trainable_parameters(model: nn.Module) -> list[Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def image_box(observation: Any) -> tuple[Tensor, Tensor]:
    device = observation.device
    mean = torch.tensor(observation.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(observation.std, device=device).view(1, -1, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


def squared_distance(target: Sequence[Tensor], form: str) -> Callable[[Sequence[Tensor]], Tensor]:
    """sum over layers of ||g - g*||^2: one flat vector ("cat"), or per layer with no concatenation ("layers")."""
    target = [t.detach() for t in target]
    if form == "cat":
        flat = torch.cat([t.reshape(-1) for t in target])
        return lambda grads: (torch.cat([g.reshape(-1) for g in grads]) - flat).pow(2).sum()
    return lambda grads: torch.stack(torch._foreach_norm(torch._foreach_sub(list(grads), target))).square().sum()


def cosine_distance(target: Sequence[Tensor], form: str) -> Callable[[Sequence[Tensor]], Tensor]:
    """1 - cosine similarity of the whole concatenated gradient, in either form."""
    if form == "cat":
        flat = torch.cat([t.detach().reshape(-1) for t in target])
        norm = flat.norm()

        def cat_form(grads: Sequence[Tensor]) -> Tensor:
            g = torch.cat([x.reshape(-1) for x in grads])
            return 1 - (g @ flat) / (g.norm() * norm + 1e-12)

        return cat_form
    flats = [t.detach().reshape(-1) for t in target]
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(flats)))

    def layer_form(grads: Sequence[Tensor]) -> Tensor:
        dot = torch.stack([torch.dot(g.reshape(-1), t) for g, t in zip(grads, flats, strict=True)]).sum()
        g_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(list(grads))))
        return 1 - dot / (g_norm * norm + 1e-12)

    return layer_form


def total_variation(images: Tensor) -> Tensor:
    return (images[..., :, 1:] - images[..., :, :-1]).abs().mean() + (
        images[..., 1:, :] - images[..., :-1, :]
    ).abs().mean()


def finish(
    values: list[Tensor], start: float, clock: Clock, device: torch.device, iterations: int, evaluations: int
) -> RunResult:
    """Seconds per iteration since ``start`` (after a device sync) and the objectives, moved off the device once."""
    synchronise(device)
    seconds = clock() - start
    return RunResult(seconds / iterations, torch.stack(values).tolist(), evaluations)


def floor_dlg(
    observation: Any, attack: Any, iterations: int, *, seed: int = SEED, clock: Clock, form: str = "layers"
) -> RunResult:
    """DLG: L-BFGS over images and soft labels, euclidean gradient distance."""
    device, model = observation.device, observation.model
    generator = torch.Generator().manual_seed(seed)
    images = draw("randn", (observation.batch_size, *observation.image_shape), generator, device)
    logits = draw("randn", (observation.batch_size, observation.num_classes), generator, device)
    images.requires_grad_(True)
    logits.requires_grad_(True)
    params = trainable_parameters(model)
    distance = squared_distance(observation.gradients, form)
    optimiser = torch.optim.LBFGS([images, logits], lr=attack.lr, max_iter=attack.lbfgs_max_iter)
    evaluations = [0]

    def closure() -> Tensor:
        optimiser.zero_grad(set_to_none=True)
        soft = logits.softmax(dim=-1)
        loss = -(soft * F.log_softmax(model(images), dim=-1)).sum(dim=-1).mean()
        value = distance(torch.autograd.grad(loss, params, create_graph=True))
        value.backward(inputs=[images, logits])
        evaluations[0] += 1
        return value

    values = []
    start = clock()
    for _ in range(iterations):
        values.append(optimiser.step(closure).detach())
    return finish(values, start, clock, device, iterations, evaluations[0])


def floor_idlg(
    observation: Any,
    attack: Any,
    iterations: int,
    *,
    seed: int = SEED,
    clock: Clock,
    form: str = "layers",
    backward_into: str = "variables",
) -> RunResult:
    """iDLG: known (or inferred) labels, L-BFGS over images, euclidean gradient distance.

    ``backward_into="all"``: a plain ``backward()``, which also computes and accumulates the gradients of every
    model parameter (the ``backward_inputs`` experiment)."""
    device, model = observation.device, observation.model
    generator = torch.Generator().manual_seed(seed)
    images = draw("randn", (observation.batch_size, *observation.image_shape), generator, device)
    images.requires_grad_(True)
    labels = observation.labels
    params = trainable_parameters(model)
    distance = squared_distance(observation.gradients, form)
    line_search = getattr(attack, "line_search", "none")  # iDLG searches its step (docs/methods/idlg.md)
    optimiser = torch.optim.LBFGS(
        [images],
        lr=attack.lr,
        max_iter=attack.lbfgs_max_iter,
        line_search_fn=None if line_search == "none" else line_search,
    )
    evaluations = [0]

    def closure() -> Tensor:
        optimiser.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images), labels)
        value = distance(torch.autograd.grad(loss, params, create_graph=True))
        value.backward(inputs=[images] if backward_into == "variables" else None)
        evaluations[0] += 1
        return value

    values = []
    start = clock()
    for _ in range(iterations):
        values.append(optimiser.step(closure).detach())
    return finish(values, start, clock, device, iterations, evaluations[0])


def step_factor(iteration: int, iterations: int) -> float:
    return 0.1 ** sum(iteration >= m * iterations for m in (3 / 8, 5 / 8, 7 / 8))


def floor_ig(
    observation: Any,
    attack: Any,
    iterations: int,
    *,
    clock: Clock,
    seed: int = SEED,
    form: str = "layers",
    backward_into: str = "variables",
    channels_last: bool = False,
    compile_loss: bool = False,
    compile_model: bool = False,
) -> RunResult:
    """Inverting Gradients: cosine distance + TV, Adam on signed gradients, step decay, clamp to the box.

    ``backward_into="all"`` as in ``floor_idlg``; ``channels_last``, ``compile_loss``, ``compile_model``: the
    options the experiments try."""
    device, model = observation.device, observation.model
    if channels_last:
        model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    if compile_model:
        model = torch.compile(model)
    generator = torch.Generator().manual_seed(seed)
    images = draw("randn", (observation.batch_size, *observation.image_shape), generator, device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    images.requires_grad_(True)
    labels = observation.labels
    params = trainable_parameters(model)
    distance = cosine_distance(observation.gradients, form)
    tv_weight = attack.tv_weight
    low, high = image_box(observation)

    def terms(grads: list[Tensor], x: Tensor) -> Tensor:
        value = distance(grads)
        return value + tv_weight * total_variation(x) if tv_weight else value

    if compile_loss:
        terms = torch.compile(terms)
    optimiser = torch.optim.Adam([images], lr=attack.lr)
    values = []
    start = clock()
    for iteration in range(iterations):
        optimiser.param_groups[0]["lr"] = attack.lr * step_factor(iteration, iterations)
        optimiser.zero_grad(set_to_none=True)
        grads = torch.autograd.grad(F.cross_entropy(model(images), labels), params, create_graph=True)
        value = terms(list(grads), images)
        value.backward(inputs=[images] if backward_into == "variables" else None)
        images.grad.sign_()
        optimiser.step()
        with torch.no_grad():
            images.clamp_(low, high)
        values.append(value.detach())
    return finish(values, start, clock, device, iterations, iterations)


def warmup_cosine(iteration: int, iterations: int, warmup: int) -> float:
    if warmup and iteration < warmup:
        return (iteration + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (iteration - warmup) / max(iterations - warmup, 1)))


def sobel(unit: Tensor) -> Tensor:
    """Per-channel Sobel magnitude (kernels / 8, replicate padding), as AFGI's edge term uses it."""
    channels = unit.shape[1]
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=unit.device, dtype=unit.dtype) / 8
    kernel = torch.stack([kx, kx.T]).unsqueeze(1).repeat(channels, 1, 1, 1)
    out = F.conv2d(F.pad(unit, (1, 1, 1, 1), mode="replicate"), kernel, groups=channels)
    return torch.sqrt(out[:, 0::2].square() + out[:, 1::2].square() + 1e-6)


def blur(unit: Tensor, sigma: float) -> Tensor:
    if sigma <= 0:
        return unit
    radius = min(max(1, int(round(3 * sigma))), unit.shape[-1] - 1, unit.shape[-2] - 1)
    x = torch.arange(-radius, radius + 1, dtype=unit.dtype, device=unit.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = unit.shape[1]
    out = F.pad(unit, (radius, radius, 0, 0), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    out = F.pad(out, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(out, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)


def floor_afgi(
    observation: Any, attack: Any, iterations: int, *, seed: int = SEED, clock: Clock, form: str = "layers"
) -> RunResult:
    """AFGI: cosine distance + staged VME (TV, then channel-mean and Sobel-edge targets read off the first
    stage's images), Adam on signed gradients, warm-up + cosine decay, clamping, init near the data mean."""
    device, model = observation.device, observation.model
    generator = torch.Generator().manual_seed(seed)
    shape = (observation.batch_size, *observation.image_shape)
    if attack.init == "mean":
        images = 0.1 * draw("randn", shape, generator, device)
    elif attack.init == "rand":
        mean_ = torch.tensor(observation.mean, device=device).view(1, -1, 1, 1)
        std_ = torch.tensor(observation.std, device=device).view(1, -1, 1, 1)
        images = (draw("rand", shape, generator, device) - mean_) / std_
    else:
        images = draw("randn", shape, generator, device)
    images.requires_grad_(True)
    labels = observation.labels
    params = trainable_parameters(model)
    distance = cosine_distance(observation.gradients, form)
    mean = torch.tensor(observation.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(observation.std, device=device).view(1, -1, 1, 1)
    low, high = image_box(observation)
    tv_w = attack.tv_weight if attack.use_tv else 0.0
    mean_w = attack.mean_weight if attack.use_mean else 0.0
    edge_w = attack.edge_weight if attack.use_edge else 0.0
    switch = int(round(attack.target_fraction * iterations))
    refresh = max(1, int(round(attack.refresh_fraction * iterations))) if attack.refresh_fraction > 0 else 0
    targets: dict[str, Tensor] = {}

    def prior(x: Tensor, step: int) -> Tensor:
        if step == 0:
            targets.clear()
        if step == switch or (refresh and step > switch and (step - switch) % refresh == 0):
            unit = (x.detach() * std + mean).clamp(0, 1)
            targets["mean"], targets["edge"] = unit.mean(dim=(-2, -1)), sobel(blur(unit, attack.edge_blur))
        total = x.new_zeros(())
        if tv_w > 0:
            total = total + tv_w * total_variation(x)
        if targets and (mean_w > 0 or edge_w > 0):
            unit = x * std + mean
            if mean_w > 0:
                total = total + mean_w * (unit.mean(dim=(-2, -1)) - targets["mean"]).square().mean()
            if edge_w > 0:
                total = total + edge_w * (sobel(unit) - targets["edge"]).square().mean()
        return total

    use_prior = bool(tv_w or mean_w or edge_w)
    optimiser = torch.optim.Adam([images], lr=attack.lr)
    values = []
    start = clock()
    for iteration in range(iterations):
        if attack.schedule == "cosine":
            factor = warmup_cosine(iteration, iterations, attack.warmup)
        elif attack.schedule == "step":
            factor = step_factor(iteration, iterations)
        else:
            factor = (iteration + 1) / attack.warmup if attack.warmup and iteration < attack.warmup else 1.0
        optimiser.param_groups[0]["lr"] = attack.lr * factor
        optimiser.zero_grad(set_to_none=True)
        grads = torch.autograd.grad(F.cross_entropy(model(images), labels), params, create_graph=True)
        value = distance(list(grads))
        if use_prior:
            value = value + prior(images, iteration)
        value.backward(inputs=[images])
        if attack.signed:
            images.grad.sign_()
        optimiser.step()
        with torch.no_grad():
            images.clamp_(low, high)
        values.append(value.detach())
    return finish(values, start, clock, device, iterations, iterations)


# the floor written with the shared code's implementation choices, to split ours - floor into
# loop machinery (ours vs mirror) and implementation choices (mirror vs floor)


@dataclass(frozen=True)
class Floor:
    """A method's floor: ``run(observation, attack, iterations, *, clock, seed, **options) -> RunResult``.

    ``mirror`` are the options that make it use the shared code's implementation choices, so that
    ours vs mirror is the loop machinery and mirror vs floor the implementation choices. ``bitwise``:
    the mirror computes our objectives bit for bit (tests/test_perf.py checks it over a whole trace).
    """

    run: Callable[..., RunResult]
    mirror: dict[str, str] = field(default_factory=dict)
    bitwise: bool = False


FLOORS: dict[str, Floor] = {}


def register_floor(method: str, floor: Floor) -> None:
    """Give the registered method ``method`` a floor; methods without one are timed alone."""
    if method in FLOORS and FLOORS[method] != floor:
        raise ValueError(f"method {method!r} already has a floor ({FLOORS[method].run.__qualname__})")
    FLOORS[method] = floor


register_floor("dlg", Floor(floor_dlg, {"form": "layers"}, bitwise=True))
register_floor("idlg", Floor(floor_idlg, {"form": "layers"}, bitwise=True))
register_floor("ig", Floor(floor_ig, {"form": "cat"}))
register_floor("afgi", Floor(floor_afgi, {"form": "cat"}))
