"""The shared loop's bookkeeping: backward only into the variables, objectives checked every few iterations,
an injectable trace clock. Speed is measured by ``python -m bench.perf``, not here."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from methods.optimise import DivergenceError, OptimiserConfig, model_gradients, optimise, trace_clock


def _matching_problem() -> tuple[nn.Module, tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.Tanh(), nn.Linear(5, 3))
    labels = torch.tensor([0, 2])
    target = tuple(g.detach() for g in model_gradients(model, torch.randn(2, 3, 2, 2), labels, create_graph=False))
    return model, target, labels, torch.randn(2, 3, 2, 2)


def _run(check_every: int, iterations: int = 7) -> tuple[list, nn.Module, torch.Tensor]:
    model, target, labels, start = _matching_problem()
    images = start.clone().requires_grad_(True)

    def objective() -> torch.Tensor:
        grads = model_gradients(model, images, labels)
        return sum(((g - t) ** 2).sum() for g, t in zip(grads, target, strict=True))

    config = OptimiserConfig(optimiser="adam", lr=0.05, iterations=iterations, signed=True, check_every=check_every)
    return optimise(objective, [images], config), model, images


def test_backward_leaves_the_model_parameters_alone_and_the_trace_does_not_depend_on_check_every():
    trace, model, images = _run(check_every=1)
    assert all(p.grad is None for p in model.parameters())  # nothing computed or accumulated for the model
    assert images.grad is not None
    batched_trace, _, batched_images = _run(check_every=3)
    assert [p.objective for p in batched_trace] == [p.objective for p in trace]
    assert [p.iteration for p in batched_trace] == list(range(1, 8))
    assert torch.equal(batched_images, images)


def test_divergence_found_at_a_check_names_the_first_bad_iteration():
    x = torch.zeros(1, requires_grad=True)
    calls = itertools.count()

    def objective() -> torch.Tensor:
        value = (x - 1).pow(2).sum()
        return value * float("nan") if next(calls) >= 3 else value

    with pytest.raises(DivergenceError, match="objective became nan at iteration 3"):
        optimise(objective, [x], OptimiserConfig(lr=0.1, iterations=20, check_every=10))


def test_trace_seconds_come_from_the_injected_clock():
    ticks = itertools.count()
    x = torch.zeros(1, requires_grad=True)
    with trace_clock(lambda: float(next(ticks))):
        trace = optimise(lambda: (x - 1).pow(2).sum(), [x], OptimiserConfig(lr=0.1, iterations=4, check_every=2))
    # one reading at the start, one per iteration, and one more after each check's device sync
    assert [p.seconds for p in trace] == [1.0, 3.0, 4.0, 6.0]


def test_check_every_must_be_positive():
    with pytest.raises(ValueError, match="check_every"):
        OptimiserConfig(check_every=0)


def test_vme_caches_its_constants_per_device_and_they_survive_inference_mode():
    # AFGI's VME keeps its normalisation statistics and Sobel kernels per device (no copy per iteration); a cache
    # first filled under inference mode must still serve an objective that is differentiated later
    from methods.vme import VME, VMETargets, sobel_edges

    images = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    with torch.inference_mode():
        sobel_edges(images)
        vme = VME(
            mean=(0.5,) * 3,
            std=(0.2,) * 3,
            tv_weight=0.1,
            mean_weight=1.0,
            edge_weight=1.0,
            targets=VMETargets.from_images(images),
        )
        vme(images)
    variable = images.clone().requires_grad_(True)
    vme(variable).backward()
    assert variable.grad is not None and bool(variable.grad.abs().sum() > 0)
    assert vme.unit(variable).dtype == torch.float64
