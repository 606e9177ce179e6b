"""How much memory a gradient-matching iteration needs, and whether a batched schedule fits a budget.

GradInversion's candidates and IG's restarts can run side by side as one (G*B) tensor through one vmapped
pass (``methods.batched``) or one after another through the plain model. The batched schedule is faster on
small inputs but holds G graphs at once, and its elementary-op BatchNorm saves more per image than the
fused kernel. A method batches only when the predicted peak of the batched iteration fits its memory budget.

The prediction is measured, not guessed: ``fit`` runs one objective-and-backward step of the real
computation at three small sizes and fits ``peak(G, B) = base + G * per_group + G * B * per_image``
(parameter-sized per-group gradients, activation-sized per-image graphs). On CUDA the peak of each probe
is the allocator's ``max_memory_allocated``; elsewhere ``LiveBytes`` counts the bytes of every tensor
storage that the ops allocate and frees them when the storage dies, which is the allocator's view without
kernel-internal scratch space. docs/performance.md ("Memory at paper scale") compares the prediction with
measured peaks.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from methods.batched import GroupGradients
from methods.budget import metered
from methods.losses import GradientLoss
from methods.optimise import model_gradients, synchronise
from methods.priors import BatchNormStatistics

GIB = 2**30
CUDA_SHARE = 0.8  # of the device's free memory
HOST_SHARE = 0.5  # of the host's available memory: the rest is for the data, the metrics and other processes


class LiveBytes(TorchDispatchMode):
    """Live and peak bytes of the tensor storages that ops create inside this mode (any device)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _free(self, key: int, size: int) -> None:
        self.live -= size
        self._seen.discard(key)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if not isinstance(value, Tensor):
                continue
            storage = value.untyped_storage()
            key = storage._cdata
            if key in self._seen:  # a view, or an in-place result
                continue
            size = storage.nbytes()
            self._seen.add(key)
            self.live += size
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, key, size)
        return out


def peak_bytes(step: Callable[[], None], device: torch.device) -> int:
    """Peak bytes allocated while ``step`` runs, above what was allocated before it.

    The probe's gradient passes are the harness's measurement, not the attack's work: a meter of their own keeps
    them out of the attack's gradient evaluations (and so out of its budget).
    """
    with metered():
        if device.type == "cuda":
            synchronise(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            step()
            synchronise(device)
            return torch.cuda.max_memory_allocated(device) - before
        with LiveBytes() as counter:
            step()
        return counter.peak


def available_bytes(device: torch.device) -> int:
    """The default budget: a share of the device's free memory (CUDA) or of the host's available memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(CUDA_SHARE * free)
    try:
        with open("/proc/meminfo") as handle:
            fields = dict(line.split(":", 1) for line in handle)
        return int(HOST_SHARE * int(fields["MemAvailable"].split()[0]) * 1024)
    except (OSError, KeyError, ValueError):
        return 8 * GIB  # no /proc (not Linux): a laptop's share


def budget_bytes(memory_budget_gb: float, device: torch.device) -> int:
    """``memory_budget_gb`` GiB, or the default budget of ``available_bytes`` when it is 0."""
    return int(memory_budget_gb * GIB) if memory_budget_gb > 0 else available_bytes(device)


@dataclass(frozen=True)
class MemoryModel:
    """Peak bytes of one iteration over G groups of B images: base + G * per_group + G * B * per_image.

    With ``groups_at_once`` false (the groups one after another) only one group's graph is alive: G counts as 1.
    """

    base: float
    per_group: float
    per_image: float
    groups_at_once: bool = True

    def bytes(self, groups: int, batch: int) -> float:
        alive = groups if self.groups_at_once else 1
        return self.base + alive * self.per_group + alive * batch * self.per_image


ProbeStep = Callable[[int, int], None]
"""Runs one objective-and-backward step over ``groups`` groups of ``batch`` random images."""

PROBE_BATCH = 2  # BatchNorm in train mode needs two values per channel, even after global pooling


def fit(step: ProbeStep, device: torch.device, *, groups_at_once: bool = True) -> MemoryModel:
    """Fit ``MemoryModel`` to the measured peaks of ``step`` at (1, 2), (1, 4) and (2, 2) groups x images.

    Groups one after another (``groups_at_once`` false) need no third probe: their peak is one group's.
    """
    small = peak_bytes(lambda: step(1, PROBE_BATCH), device)
    wider = peak_bytes(lambda: step(1, 2 * PROBE_BATCH), device)
    per_image = max(wider - small, 0) / PROBE_BATCH
    per_group = 0.0
    if groups_at_once:
        deeper = peak_bytes(lambda: step(2, PROBE_BATCH), device)
        per_group = max(deeper - small - PROBE_BATCH * per_image, 0)
    base = max(small - per_group - PROBE_BATCH * per_image, 0)
    return MemoryModel(float(base), float(per_group), float(per_image), groups_at_once)


def matching_probe(
    model: nn.Module,
    image_shape: tuple[int, int, int],
    num_classes: int,
    distance: GradientLoss,
    *,
    batched: bool,
    bn_prior: bool = False,
) -> ProbeStep:
    """One gradient-matching step as a method runs it: vmapped over the groups (``batched``) or one group at a time.

    ``bn_prior`` adds the BatchNorm-statistics prior (from the vmapped pass, or ``BatchNormStatistics`` hooks).
    """
    parameter = next(model.parameters())
    device, dtype = parameter.device, parameter.dtype
    generator = torch.Generator().manual_seed(0)

    def step(groups: int, batch: int) -> None:
        labels = torch.arange(batch, device=device) % num_classes
        images = torch.randn(groups, batch, *image_shape, generator=generator, dtype=dtype).to(device)
        images.requires_grad_(True)
        if batched:
            gradients, prior = GroupGradients(model, bn_prior=bn_prior)(images, labels)
            value = distance.per_group(gradients).sum() + prior.sum()
            value.backward(inputs=[images])
            return
        statistics = BatchNormStatistics(model) if bn_prior else None
        try:
            for group in range(groups):
                value = distance(model_gradients(model, images[group], labels))
                if statistics is not None:
                    value = value + statistics.collect()
                value.backward(inputs=[images])
        finally:
            if statistics is not None:
                statistics.close()

    return step


def optimiser_state_bytes(images: int, image_shape: tuple[int, int, int], element_size: int) -> int:
    """The images, their gradient and Adam's two moments: held for the whole run, whichever schedule."""
    return 4 * images * element_size * image_shape[0] * image_shape[1] * image_shape[2]


_estimates: dict[tuple, MemoryModel] = {}


def _architecture(model: nn.Module) -> tuple:
    """What the memory of a pass depends on besides the input: the layers and their parameter shapes and types."""
    return tuple((name, tuple(p.shape), p.dtype, p.requires_grad) for name, p in model.named_parameters()) + tuple(
        (name, type(m).__name__, m.training) for name, m in model.named_modules()
    )


def batched_fits(
    model: nn.Module,
    image_shape: tuple[int, int, int],
    num_classes: int,
    distance: GradientLoss,
    *,
    groups: int,
    batch: int,
    memory_budget_gb: float,
    bn_prior: bool = False,
) -> tuple[bool, dict[str, float]]:
    """Whether the batched (vmapped) schedule of ``groups`` x ``batch`` images is predicted to fit the budget.

    Returns the decision and what it rests on (GiB), for the reconstruction's extras.
    """
    device = next(model.parameters()).device
    key = (_architecture(model), image_shape, num_classes, type(distance).__name__, bn_prior, device)
    if key not in _estimates:  # once per process and architecture: the probe costs three steps
        probe = matching_probe(model, image_shape, num_classes, distance, batched=True, bn_prior=bn_prior)
        _estimates[key] = fit(probe, device)
    estimate = _estimates[key]
    element = next(model.parameters()).element_size()
    predicted = estimate.bytes(groups, batch) + optimiser_state_bytes(groups * batch, image_shape, element)
    budget = budget_bytes(memory_budget_gb, device)
    return predicted <= budget, {"predicted_batched_gb": predicted / GIB, "memory_budget_gb": budget / GIB}
