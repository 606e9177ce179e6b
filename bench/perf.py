"""How fast is the harness? ``python -m bench.perf`` times every attack against a hand-written floor.

For each method x model x batch size it measures, on the default data (``crops``, 32x32, K = 1000):

* **ours**: seconds per iteration of the method's own ``reconstruct`` (from its trace, which is what
  ``bench.run`` reports as ``seconds_per_iteration``), and its one-off setup (call time minus trace);
* **floor**: the same optimisation written inline here as a minimal PyTorch loop with the identical math
  (loss, priors, optimiser, schedule, signed gradients, noise, clamping, same random draws), using no
  ``methods`` code, so that ``(ours - floor) / floor`` is the price of the shared components;
* **peak memory** of the attack (CPU: the peak resident set size of a forked child process that runs the
  cell, read from ``/proc/self/status`` after resetting the high-water mark; CUDA: ``max_memory_allocated``);
* the **harness's own work per trial** (sampling, model, client update, progress scoring, metrics,
  records) with the functions ``bench.run`` calls, as a share of a quick-profile trial.

A **mirror** floor, written with the shared code's implementation choices (``MIRRORS``: the cosine
distance over one ``torch.cat``), splits ours - floor into loop machinery and implementation choices.

Ours, floor and mirror run interleaved (rotating order) in the same process from the same seed, after a
warm-up, and the overhead is the median of the paired ratios. On CPU with one thread the clock is the
process CPU time (``--clock cpu``), so other jobs holding the core do not count. Experiments then
measure single design choices with the same A/B machinery: glibc malloc tuning (fresh processes), the
loop machinery on a trivial objective, gradient-distance form (one ``torch.cat`` vs per-layer),
BatchNorm-statistics reuse, GradInversion's vmapped candidates vs separate runs, IG restarts run
sequentially vs batched with ``torch.func.vmap``, channels-last, and ``torch.compile``.

Every tensor is created on ``observation.device``; ``--device cuda`` runs the same grid on a GPU.
See docs/performance.md for the results and what they mean.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import importlib
import inspect
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
import types
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from bench.system import tune_malloc

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF = REPO_ROOT / "conf"
METHODS = ("dlg", "idlg", "ig", "gradinversion", "afgi")
MODELS = ("lenet", "convnet", "resnet18")
BATCH_SIZES = (1, 8, 48)
EXPERIMENTS = (
    "malloc",
    "loop_machinery",
    "loss_form",
    "bn_stats",
    "candidates",
    "restarts",
    "channels_last",
    "compile",
)
SEED = 0
SCHEMA_VERSION = 1
MISSING_METHOD = "not measured: method not yet present"

# filled by main() before any cell runs; forked children inherit it
_DATASET: Any = None


# ----------------------------------------------------------------------------------------------------
# clocks and memory


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_status() -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) of this process in MiB, from /proc (Linux)."""
    values: dict[str, float] = {}
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    values[key] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return values


def _reset_peak_rss() -> bool:
    """Reset this process's peak-RSS high-water mark (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory of the code inside ``with``: CUDA allocator peak, or this process's peak RSS on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.result: dict[str, Any] = {}

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            _sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._reset = _reset_peak_rss()
            self._base = _proc_status().get("VmRSS", math.nan)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            _sync(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
            self.result = {
                "measure": "cuda max_memory_allocated",
                "peak_mb": peak,
                "increase_mb": peak - self._base / 2**20,
            }
        else:
            peak = _proc_status().get("VmHWM", math.nan)
            self.result = {
                "measure": "peak RSS of the process (VmHWM" + (", reset before the run)" if self._reset else ")"),
                "peak_mb": peak,
                "increase_mb": peak - self._base,
            }


# glibc mallopt parameters
def _minor_faults() -> int:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    except (ImportError, OSError):
        return 0


_CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
_clock_kind = "wall"


def _clock() -> float:
    """The attack clock: process CPU time ("cpu") or wall time ("wall"); see use_clock."""
    return _CLOCKS[_clock_kind]()


def use_clock(kind: str) -> None:
    """Time ours and the floor with ``kind``: "cpu" (CPU time of this process) or "wall".

    On a shared machine the wall clock also counts the time other processes hold the core, which
    swamps a 3% difference; process CPU time does not. For "cpu" the clock that methods.optimise
    reads for the trace is pointed at the same source, so ours is still timed by its own trace.
    """
    global _clock_kind
    _clock_kind = kind


def _median(values: Sequence[float]) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(values) if values else math.nan


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> tuple[float, Any]:
    """Median wall seconds of ``fn`` over ``repeats`` calls (after one untimed call), and its last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        result = fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return _median(times), result


# ----------------------------------------------------------------------------------------------------
# the round a trial attacks, built with the functions bench.run uses


def load_default_dataset() -> Any:
    from omegaconf import OmegaConf

    from bench import records
    from bench.run import _dataset

    spec = OmegaConf.to_container(OmegaConf.load(CONF / "dataset" / "crops.yaml"), resolve=True)
    return _dataset(records.canonical_json(spec))


def _model_options(name: str) -> dict[str, Any]:
    from omegaconf import OmegaConf

    path = CONF / "model" / f"{name}.yaml"
    if not path.is_file():
        return {}
    spec = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    return {k: v for k, v in spec.items() if k not in ("name", "state")}


@dataclasses.dataclass
class Round:
    observation: Any
    truth: Tensor
    true_labels: Tensor
    dup_ratio: float
    seconds: dict[str, float]


def draw_round(dataset: Any, model_name: str, batch_size: int, device: torch.device, seed: int = SEED) -> Round:
    """data -> model -> client update, as ``bench.run._draw_round`` does (dup_ratio=least, labels known)."""
    from bench.client import client_update
    from bench.models import prepare_model
    from bench.run import _resolve_dup_ratio
    from bench.sampler import sample_batch

    seconds: dict[str, float] = {}
    start = time.perf_counter()
    dup_ratio = _resolve_dup_ratio(SimpleNamespace(dup_ratio="least", batch_size=batch_size), dataset)
    indices = sample_batch(dataset.labels, dataset.num_classes, batch_size, dup_ratio, seed)
    truth, true_labels = dataset.batch(indices)
    truth, true_labels = truth.to(device), true_labels.to(device)
    _sync(device)
    seconds["sampling"] = time.perf_counter() - start
    start = time.perf_counter()
    model = prepare_model(
        model_name,
        state="untrained",
        num_classes=dataset.num_classes,
        image_shape=dataset.image_shape,
        seed=seed,
        mean=dataset.mean,
        std=dataset.std,
        **_model_options(model_name),
    ).to(device)
    _sync(device)
    seconds["model"] = time.perf_counter() - start
    start = time.perf_counter()
    observation = client_update(
        model,
        truth,
        true_labels,
        mean=dataset.mean,
        std=dataset.std,
        num_classes=dataset.num_classes,
        mode="train",
        labels_known=True,
    )
    _sync(device)
    seconds["client_update"] = time.perf_counter() - start
    return Round(observation, truth, true_labels, float(dup_ratio), seconds)


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


# ----------------------------------------------------------------------------------------------------
# the methods as configured for a run


def method_class(name: str) -> type | None:
    """The registered class of method ``name`` (importing ``methods.<name>``), or None if it does not exist."""
    try:
        importlib.import_module(f"methods.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"methods.{name}":
            raise
    from methods.base import UnknownNameError, get_method_class

    try:
        return get_method_class(name)
    except UnknownNameError:
        return None


def method_config(name: str) -> tuple[dict[str, Any], int | None]:
    """The method's quick-profile keyword config (conf/method/<name>.yaml) and that profile's iterations."""
    from omegaconf import OmegaConf

    path = CONF / "method" / f"{name}.yaml"
    if not path.is_file():
        return {}, None
    spec = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    params = {**(spec.get("params") or {}), **((spec.get("profiles") or {}).get("quick") or {})}
    return params, params.pop("iterations", None)


def build_attack(name: str, *, iterations: int, model_has_bn: bool, lbfgs_max_iter: int, **overrides: Any) -> Any:
    """The attack with its quick-profile config, ``iterations``, one IG restart and the perf overrides."""
    cls = method_class(name)
    if cls is None:
        raise LookupError(MISSING_METHOD)
    params, _ = method_config(name)
    known = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else None
    params["iterations"] = iterations
    if known is None or "lbfgs_max_iter" in known:
        params["lbfgs_max_iter"] = lbfgs_max_iter
    if known is None or "restarts" in known:
        params["restarts"] = 1
    if not model_has_bn and (known is None or "bn_weight" in known):
        params["bn_weight"] = 0.0  # GradInversion's BN prior needs BatchNorm layers (LeNet has none)
    params.update(overrides)
    if known is not None:
        params = {k: v for k, v in params.items() if k in known}
    return cls(**params)


def profile_iterations(name: str) -> int | None:
    _, iterations = method_config(name)
    if iterations is not None:
        return int(iterations)
    cls = method_class(name)
    if cls is not None and dataclasses.is_dataclass(cls):
        fields = {f.name: f.default for f in dataclasses.fields(cls)}
        if isinstance(fields.get("iterations"), int):
            return fields["iterations"]
    return None


@dataclasses.dataclass
class RunResult:
    """One timed optimisation: seconds per iteration, objective per iteration, objective evaluations."""

    seconds_per_iteration: float
    objectives: list[float]
    evaluations: int = 0
    call_seconds: float = math.nan
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def run_ours(attack: Any, observation: Any, seed: int = SEED) -> RunResult:
    device = observation.device
    generator = torch.Generator(device=device).manual_seed(seed)
    _sync(device)
    from methods.optimise import trace_clock

    start = _clock()
    with trace_clock(_CLOCKS[_clock_kind]):
        result = attack.reconstruct(observation, generator=generator)
    _sync(device)
    call = _clock() - start
    trace = result.trace
    per_iteration = trace[-1].seconds / trace[-1].iteration if trace else math.nan
    return RunResult(per_iteration, [p.objective for p in trace], call_seconds=call)


# ----------------------------------------------------------------------------------------------------
# the floors: the same math as a minimal hand-written loop (no methods/ code)


def _trainable(model: nn.Module) -> list[Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def _box(observation: Any) -> tuple[Tensor, Tensor]:
    device = observation.device
    mean = torch.tensor(observation.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(observation.std, device=device).view(1, -1, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


def _squared_distance(target: Sequence[Tensor], form: str) -> Callable[[Sequence[Tensor]], Tensor]:
    """sum over layers of ||g - g*||^2: one flat vector ("cat"), or per layer with no concatenation ("layers")."""
    target = [t.detach() for t in target]
    if form == "cat":
        flat = torch.cat([t.reshape(-1) for t in target])
        return lambda grads: (torch.cat([g.reshape(-1) for g in grads]) - flat).pow(2).sum()
    return lambda grads: torch.stack(torch._foreach_norm(torch._foreach_sub(list(grads), target))).square().sum()


def _cosine_distance(target: Sequence[Tensor], form: str) -> Callable[[Sequence[Tensor]], Tensor]:
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


def _tv(images: Tensor) -> Tensor:
    return (images[..., :, 1:] - images[..., :, :-1]).abs().mean() + (
        images[..., 1:, :] - images[..., :-1, :]
    ).abs().mean()


def _finish(values: list[Tensor], start: float, device: torch.device, iterations: int, evaluations: int) -> RunResult:
    _sync(device)
    seconds = _clock() - start
    return RunResult(seconds / iterations, torch.stack(values).tolist(), evaluations)


def floor_dlg(observation: Any, attack: Any, iterations: int, *, seed: int = SEED, form: str = "layers") -> RunResult:
    """DLG: L-BFGS over images and soft labels, euclidean gradient distance."""
    device, model = observation.device, observation.model
    generator = torch.Generator(device=device).manual_seed(seed)
    images = torch.randn((observation.batch_size, *observation.image_shape), generator=generator, device=device)
    logits = torch.randn((observation.batch_size, observation.num_classes), generator=generator, device=device)
    images.requires_grad_(True)
    logits.requires_grad_(True)
    params = _trainable(model)
    distance = _squared_distance(observation.gradients, form)
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
    start = _clock()
    for _ in range(iterations):
        values.append(optimiser.step(closure).detach())
    return _finish(values, start, device, iterations, evaluations[0])


def floor_idlg(observation: Any, attack: Any, iterations: int, *, seed: int = SEED, form: str = "layers") -> RunResult:
    """iDLG: known (or inferred) labels, L-BFGS over images, euclidean gradient distance."""
    device, model = observation.device, observation.model
    generator = torch.Generator(device=device).manual_seed(seed)
    images = torch.randn((observation.batch_size, *observation.image_shape), generator=generator, device=device)
    images.requires_grad_(True)
    labels = observation.labels
    params = _trainable(model)
    distance = _squared_distance(observation.gradients, form)
    optimiser = torch.optim.LBFGS([images], lr=attack.lr, max_iter=attack.lbfgs_max_iter)
    evaluations = [0]

    def closure() -> Tensor:
        optimiser.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images), labels)
        value = distance(torch.autograd.grad(loss, params, create_graph=True))
        value.backward(inputs=[images])
        evaluations[0] += 1
        return value

    values = []
    start = _clock()
    for _ in range(iterations):
        values.append(optimiser.step(closure).detach())
    return _finish(values, start, device, iterations, evaluations[0])


def _step_factor(iteration: int, iterations: int) -> float:
    return 0.1 ** sum(iteration >= m * iterations for m in (3 / 8, 5 / 8, 7 / 8))


def floor_ig(
    observation: Any,
    attack: Any,
    iterations: int,
    *,
    seed: int = SEED,
    form: str = "layers",
    channels_last: bool = False,
    compile_loss: bool = False,
    compile_model: bool = False,
) -> RunResult:
    """Inverting Gradients: cosine distance + TV, Adam on signed gradients, step decay, clamp to the box."""
    device, model = observation.device, observation.model
    if channels_last:
        model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    if compile_model:
        model = torch.compile(model)
    generator = torch.Generator(device=device).manual_seed(seed)
    images = torch.randn((observation.batch_size, *observation.image_shape), generator=generator, device=device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    images.requires_grad_(True)
    labels = observation.labels
    params = _trainable(model)
    distance = _cosine_distance(observation.gradients, form)
    tv_weight = attack.tv_weight
    low, high = _box(observation)

    def terms(grads: list[Tensor], x: Tensor) -> Tensor:
        value = distance(grads)
        return value + tv_weight * _tv(x) if tv_weight else value

    if compile_loss:
        terms = torch.compile(terms)
    optimiser = torch.optim.Adam([images], lr=attack.lr)
    values = []
    start = _clock()
    for iteration in range(iterations):
        optimiser.param_groups[0]["lr"] = attack.lr * _step_factor(iteration, iterations)
        optimiser.zero_grad(set_to_none=True)
        grads = torch.autograd.grad(F.cross_entropy(model(images), labels), params, create_graph=True)
        value = terms(list(grads), images)
        value.backward(inputs=[images])
        images.grad.sign_()
        optimiser.step()
        with torch.no_grad():
            images.clamp_(low, high)
        values.append(value.detach())
    return _finish(values, start, device, iterations, iterations)


def _batch_norm_forward(
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


def _elementary_bn_copy(
    model: nn.Module, *, terms: list[Tensor] | None = None, first_scale: float = 1.0, recompute: bool = False
) -> nn.Module:
    model = copy.deepcopy(model)
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for index, layer in enumerate(layers):
        forward = functools.partial(
            _batch_norm_forward, terms=terms, scale=first_scale if index == 0 else 1.0, recompute=recompute
        )
        layer.forward = types.MethodType(lambda self, x, f=forward: f(self, x), layer)
    return model


def _warmup_cosine(iteration: int, iterations: int, warmup: int) -> float:
    if warmup and iteration < warmup:
        return (iteration + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (iteration - warmup) / max(iterations - warmup, 1)))


def floor_gradinversion(
    observation: Any,
    attack: Any,
    iterations: int,
    *,
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
    generator = torch.Generator(device=device).manual_seed(seed)
    terms: list[Tensor] = []
    use_prior = attack.bn_weight > 0
    model = _elementary_bn_copy(
        observation.model,
        terms=terms if use_prior else None,
        first_scale=attack.first_bn_scale,
        recompute=bn_stats == "recompute",
    )
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    live_params = _trainable(model)
    labels = observation.labels
    target = [g.detach() for g in observation.gradients]
    energy = torch.stack([t.pow(2).sum() for t in target]).sum().clamp(min=torch.finfo(target[0].dtype).tiny)
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

    images = torch.randn((groups * batch, *shape), generator=generator, device=device).requires_grad_(True)
    low, high = _box(observation)
    warmup = int(attack.warmup_fraction * iterations)
    optimiser = torch.optim.Adam([images], lr=attack.lr)
    values = []
    start = _clock()
    for iteration in range(iterations):
        optimiser.param_groups[0]["lr"] = attack.lr * _warmup_cosine(iteration, iterations, warmup)
        optimiser.zero_grad(set_to_none=True)
        group = images.view(groups, batch, *shape)
        per_layer, prior = per_candidate(group)
        value = attack.gradient_scale * distances(per_layer).sum()
        if attack.bn_weight:
            value = value + attack.bn_weight * prior.sum()
        if attack.tv_weight:
            value = value + attack.tv_weight * groups * _tv(images)
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
                lr_next = attack.lr * _warmup_cosine(iteration + 1, iterations, warmup)
                noise = torch.randn(images.shape, generator=generator, device=device, dtype=images.dtype)
                images.add_(noise, alpha=attack.noise * lr_next)
            images.clamp_(low, high)
        values.append(value.detach())
    return _finish(values, start, device, iterations, iterations)


def floor_ig_batched(observation: Any, attack: Any, iterations: int, restarts: int, *, seed: int = SEED) -> RunResult:
    """IG with ``restarts`` runs as one (R, B, C, H, W) tensor: vmap over restarts of the per-restart gradient.

    Adam, the sign and the clamp are elementwise, so the stacked optimisation is exactly R independent runs;
    the objective is the sum of the R objectives. Inits are drawn restart by restart, as the sequential loop does.
    """
    device = observation.device
    batch, shape = observation.batch_size, observation.image_shape
    generator = torch.Generator(device=device).manual_seed(seed)
    model = _elementary_bn_copy(observation.model)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    labels = observation.labels
    target = [g.detach().reshape(-1) for g in observation.gradients]
    target_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(target)))
    batched = vmap(grad(lambda p, x, y: F.cross_entropy(functional_call(model, p, (x,)), y)), in_dims=(None, 0, None))
    inits = [torch.randn((batch, *shape), generator=generator, device=device) for _ in range(restarts)]
    images = torch.stack(inits).requires_grad_(True)
    low, high = _box(observation)
    optimiser = torch.optim.Adam([images], lr=attack.lr)
    values = []
    start = _clock()
    for iteration in range(iterations):
        optimiser.param_groups[0]["lr"] = attack.lr * _step_factor(iteration, iterations)
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
    _sync(device)
    seconds = _clock() - start
    per_restart = torch.stack(values).T.tolist()  # (R, iterations)
    return RunResult(seconds / iterations, per_restart[0], iterations, extra={"per_restart": per_restart})


def _sobel(unit: Tensor) -> Tensor:
    """Per-channel Sobel magnitude (kernels / 8, replicate padding), as AFGI's edge term uses it."""
    channels = unit.shape[1]
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=unit.device, dtype=unit.dtype) / 8
    kernel = torch.stack([kx, kx.T]).unsqueeze(1).repeat(channels, 1, 1, 1)
    out = F.conv2d(F.pad(unit, (1, 1, 1, 1), mode="replicate"), kernel, groups=channels)
    return torch.sqrt(out[:, 0::2].square() + out[:, 1::2].square() + 1e-6)


def _blur(unit: Tensor, sigma: float) -> Tensor:
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


def floor_afgi(observation: Any, attack: Any, iterations: int, *, seed: int = SEED, form: str = "layers") -> RunResult:
    """AFGI: cosine distance + staged VME (TV, then channel-mean and Sobel-edge targets read off the first
    stage's images), Adam on signed gradients, warm-up + cosine decay, clamping, init near the data mean."""
    device, model = observation.device, observation.model
    generator = torch.Generator(device=device).manual_seed(seed)
    shape = (observation.batch_size, *observation.image_shape)
    if attack.init == "mean":
        images = 0.1 * torch.randn(shape, generator=generator, device=device)
    elif attack.init == "rand":
        mean_ = torch.tensor(observation.mean, device=device).view(1, -1, 1, 1)
        std_ = torch.tensor(observation.std, device=device).view(1, -1, 1, 1)
        images = (torch.rand(shape, generator=generator, device=device) - mean_) / std_
    else:
        images = torch.randn(shape, generator=generator, device=device)
    images.requires_grad_(True)
    labels = observation.labels
    params = _trainable(model)
    distance = _cosine_distance(observation.gradients, form)
    mean = torch.tensor(observation.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(observation.std, device=device).view(1, -1, 1, 1)
    low, high = _box(observation)
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
            targets["mean"], targets["edge"] = unit.mean(dim=(-2, -1)), _sobel(_blur(unit, attack.edge_blur))
        total = x.new_zeros(())
        if tv_w > 0:
            total = total + tv_w * _tv(x)
        if targets and (mean_w > 0 or edge_w > 0):
            unit = x * std + mean
            if mean_w > 0:
                total = total + mean_w * (unit.mean(dim=(-2, -1)) - targets["mean"]).square().mean()
            if edge_w > 0:
                total = total + edge_w * (_sobel(unit) - targets["edge"]).square().mean()
        return total

    use_prior = bool(tv_w or mean_w or edge_w)
    optimiser = torch.optim.Adam([images], lr=attack.lr)
    values = []
    start = _clock()
    for iteration in range(iterations):
        if attack.schedule == "cosine":
            factor = _warmup_cosine(iteration, iterations, attack.warmup)
        elif attack.schedule == "step":
            factor = _step_factor(iteration, iterations)
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
    return _finish(values, start, device, iterations, iterations)


# the floor written with the shared code's implementation choices, to split ours - floor into
# loop machinery (ours vs mirror) and implementation choices (mirror vs floor)
MIRRORS: dict[str, dict[str, str]] = {
    "dlg": {"form": "layers"},
    "idlg": {"form": "layers"},
    "gradinversion": {"form": "layers", "bn_stats": "reuse"},
}

FLOORS: dict[str, Callable[..., RunResult]] = {
    "dlg": floor_dlg,
    "idlg": floor_idlg,
    "ig": floor_ig,
    "gradinversion": floor_gradinversion,
    "afgi": floor_afgi,
}


def _relative(a: float, b: float) -> float:
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def first_objectives(method: str, model: str, batch_size: int, device: str = "cpu", iterations: int = 1) -> dict:
    """Ours and the floor from the same seed: their objective values, for checking the floor's math."""
    device_ = torch.device(device)
    dataset = _DATASET if _DATASET is not None else load_default_dataset()
    observation = draw_round(dataset, model, batch_size, device_).observation
    attack = build_attack(
        method, iterations=iterations, model_has_bn=has_batch_norm(observation.model), lbfgs_max_iter=2
    )
    ours = run_ours(attack, observation)
    floor = FLOORS[method](observation, attack, iterations)
    return {"ours": ours.objectives, "floor": floor.objectives}


# ----------------------------------------------------------------------------------------------------
# one cell: method x model x batch size


def _paired(ours: list[float], floor: list[float]) -> dict[str, float]:
    ratios = [o / f - 1 for o, f in zip(ours, floor, strict=True) if f > 0]
    return {
        "ours_s_per_iter": _median(ours),
        "floor_s_per_iter": _median(floor),
        "overhead_pct": 100 * _median(ratios) if ratios else math.nan,
        "overhead_min_pct": 100 * min(ratios) if ratios else math.nan,
        "overhead_max_pct": 100 * max(ratios) if ratios else math.nan,
    }


def _label_strategy(attack: Any, batch_size: int) -> str | None:
    if getattr(attack, "lrb", False):  # AFGI's Label Recovery Block
        return "lrb"
    single = getattr(attack, "label_strategy", None)
    many = getattr(attack, "batch_label_strategy", None)
    if batch_size > 1 and many is not None:
        return many
    return single


def run_cell(method: str, model: str, batch_size: int, args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    cell: dict[str, Any] = {"method": method, "model": model, "batch_size": batch_size}
    if method_class(method) is None:
        return cell | {"status": "missing", "reason": MISSING_METHOD}
    rnd = draw_round(_DATASET, model, batch_size, device)
    observation = rnd.observation
    has_bn = has_batch_norm(observation.model)
    cell["dup_ratio"] = rnd.dup_ratio
    cell["round_seconds"] = rnd.seconds

    def attack_with(iterations: int) -> Any:
        return build_attack(method, iterations=iterations, model_has_bn=has_bn, lbfgs_max_iter=args.lbfgs_max_iter)

    probe = attack_with(1)
    cell["config"] = {k: v for k, v in dataclasses.asdict(probe).items()} if dataclasses.is_dataclass(probe) else {}
    if method == "gradinversion" and not has_bn:
        cell["note"] = "bn_weight=0: the model has no BatchNorm layers"
    floor_fn = FLOORS.get(method)
    floor_options: dict[str, Any] = {}
    if method == "ig":  # options tried on the IG floor (the experiments measure them on their own)
        floor_options = {"channels_last": args.channels_last, "compile_loss": args.compile_loss}
        if args.channels_last or args.compile_loss:
            cell["floor_options"] = floor_options

    # warm-up of ours (1 iteration), which also gives the peak memory and the cost estimate
    with PeakMemory(device) as memory:
        warm = run_ours(probe, observation)
    cell["memory"] = memory.result
    estimate = warm.seconds_per_iteration
    cell["first_objective_ours"] = warm.objectives[0]
    floor_warm = None
    if floor_fn is not None:
        floor_warm = floor_fn(observation, probe, 1, **floor_options)
        cell["first_objective_floor"] = floor_warm.objectives[0]
        cell["first_objective_rel_diff"] = _relative(warm.objectives[0], floor_warm.objectives[0])
        cell["evaluations_per_iteration"] = floor_warm.evaluations
        estimate = max(estimate, floor_warm.seconds_per_iteration)

    heavy = args.iterations is None and estimate > args.heavy_seconds
    if args.iterations is not None:
        iterations = args.iterations
    elif heavy:
        iterations = 1
    else:
        iterations = int(min(max(math.ceil(args.target_seconds / max(estimate, 1e-6)), 2), args.max_iterations))
    # heavy cells (ResNet-18 at B=48 ...): after the warm-up pair, three 1-iteration pairs and no mirror; more
    # would take minutes (one pair alone once read +15% for a cell that 3 pairs of 2 iterations put at -0.9%)
    repeats = min(3, args.repeats) if heavy else args.repeats
    cell.update(iterations=iterations, heavy=heavy)

    times: dict[str, list[float]] = {"ours": [], "floor": [], "mirror": []}
    setups: list[float] = []
    ours_faults: list[float] = []
    last: dict[str, RunResult] = {}
    attack = attack_with(iterations)
    mirror = MIRRORS.get(method, {"form": "cat"})
    runners = ["ours"]
    if floor_fn is not None:
        runners.append("floor")
        if args.mirror and not heavy:
            runners.append("mirror")
    for r in range(repeats):
        order = runners[r % len(runners) :] + runners[: r % len(runners)]
        if r % 2:
            order.reverse()
        for who in order:
            if who == "ours":
                faults = _minor_faults()
                result = run_ours(attack, observation)
                ours_faults.append((_minor_faults() - faults) / iterations)
                setups.append(result.call_seconds - result.seconds_per_iteration * iterations)
            elif who == "floor":
                result = floor_fn(observation, attack, iterations, **floor_options)
            else:
                result = floor_fn(observation, attack, iterations, **mirror)
            times[who].append(result.seconds_per_iteration)
            last[who] = result
    cell["repeats"] = repeats
    cell["ours_setup_s"] = _median(setups)
    cell["ours_minor_faults_per_iter"] = _median(ours_faults)
    if floor_fn is not None:
        cell.update(_paired(times["ours"], times["floor"]))
        if times["mirror"]:
            mirrored = _paired(times["ours"], times["mirror"])
            form = _paired(times["mirror"], times["floor"])
            cell["mirror"] = mirror
            cell["mirror_s_per_iter"] = mirrored["floor_s_per_iter"]
            cell["loop_overhead_pct"] = mirrored["overhead_pct"]
            cell["implementation_cost_pct"] = form["overhead_pct"]
        if "ours" in last and "floor" in last:
            pairs = zip(last["ours"].objectives, last["floor"].objectives, strict=False)
            cell["trajectory_max_rel_diff"] = max(_relative(a, b) for a, b in pairs)
    else:
        cell.update(ours_s_per_iter=_median(times["ours"]), floor_s_per_iter=math.nan, overhead_pct=math.nan)
        cell["note"] = (cell.get("note", "") + "; " if cell.get("note") else "") + "no floor written for this method"
    ours_times, floor_times = times["ours"], times["floor"]
    cell["mirror_s_per_iter_samples"] = times["mirror"]
    cell["ours_s_per_iter_samples"] = ours_times
    cell["floor_s_per_iter_samples"] = floor_times

    # one-off label inference of a real trial (the timing above used known labels)
    strategy = _label_strategy(probe, batch_size)
    if strategy is not None:
        from methods.base import NotApplicableError
        from methods.labels import infer_labels

        hidden = dataclasses.replace(observation, labels=None)
        try:
            seconds, _ = _timed(lambda: infer_labels(strategy, hidden), device, 3)
            cell["label_inference"] = {"strategy": strategy, "seconds": seconds}
        except NotApplicableError as error:
            cell["label_inference"] = {"strategy": strategy, "seconds": 0.0, "not_applicable": str(error)}
    cell["status"] = "ok"
    return cell


# ----------------------------------------------------------------------------------------------------
# the harness's own work per trial


def run_harness(model: str, batch_size: int, args: argparse.Namespace) -> dict[str, Any]:
    """Time each harness piece of a trial with the functions bench.run uses (median of a few calls)."""
    from bench import records
    from bench.client import client_update
    from bench.metrics import LPIPSScorer, match, psnr, score
    from bench.models import prepare_model
    from bench.run import _resolve_dup_ratio, _save_images, _thin
    from bench.sampler import sample_batch

    device = torch.device(args.device)
    dataset = _DATASET
    repeats = 3
    pieces: dict[str, float] = {}

    def sampling() -> tuple[Tensor, Tensor]:
        ratio = _resolve_dup_ratio(SimpleNamespace(dup_ratio="least", batch_size=batch_size), dataset)
        indices = sample_batch(dataset.labels, dataset.num_classes, batch_size, ratio, SEED)
        truth, labels = dataset.batch(indices)
        return truth.to(device), labels.to(device)

    pieces["sampling"], (truth, labels) = _timed(sampling, device, repeats)

    def build() -> nn.Module:
        return prepare_model(
            model,
            state="untrained",
            num_classes=dataset.num_classes,
            image_shape=dataset.image_shape,
            seed=SEED,
            mean=dataset.mean,
            std=dataset.std,
            **_model_options(model),
        ).to(device)

    pieces["model"], network = _timed(build, device, repeats)

    def client() -> Any:
        return client_update(
            network, truth, labels, mean=dataset.mean, std=dataset.std, num_classes=dataset.num_classes
        )

    pieces["client_update"], observation = _timed(client, device, repeats)

    generator = torch.Generator(device=device).manual_seed(SEED)
    model_space = torch.randn(truth.shape, generator=generator, device=device)

    def progress_call() -> float:
        # the method's snapshot, then bench.run's on_progress (optimise calls both under no_grad)
        with torch.no_grad():
            images = observation.denormalise(model_space).clamp(0, 1)
            order = match(images, truth)
            return float(psnr(images[order], truth).mean())

    pieces["progress_call"], _ = _timed(progress_call, device, 10)

    reconstruction = torch.rand(truth.shape, generator=generator, device=device)
    lpips = LPIPSScorer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pieces["metrics"], scores = _timed(lambda: score(reconstruction, truth, labels, labels, lpips), device, repeats)
    lpips_active = math.isfinite(scores.lpips)
    pieces["lpips"] = 0.0  # inside "metrics" when the AlexNet weights are on disk
    lpips_note = "included in metrics"
    if not lpips_active:
        # without the weights score() returns NaN at no cost; time the same network with random weights instead
        try:
            import lpips as lpips_package

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                stand_in = lpips_package.LPIPS(net="alex", pnet_rand=True, verbose=False).eval().to(device)

            def lpips_call() -> Tensor:
                with torch.inference_mode():
                    return stand_in(reconstruction * 2 - 1, truth * 2 - 1)

            pieces["lpips"], _ = _timed(lpips_call, device, repeats)
            lpips_note = "AlexNet weights absent: timed LPIPS with a random-weight AlexNet (same cost)"
        except Exception as error:  # lpips missing or broken: report, do not fail the benchmark
            lpips_note = f"not timed ({type(error).__name__}: {error})"

    trace = [[i, 0.01 * i, 1.0 / i] for i in range(1, 501)]
    record = {
        "record_version": records.RECORD_VERSION,
        "key": "0" * 16,
        "status": "ok",
        "config": {"model": model, "batch_size": batch_size},
        "psnr": scores.psnr,
        "ssim": scores.ssim,
        "lpips": scores.lpips,
        "per_image_psnr": scores.per_image_psnr,
        "true_labels": labels.tolist(),
        "predicted_labels": labels.tolist(),
        "trace": _thin(trace),
        "progress": [[i, 0.01 * i, 10.0] for i in range(25, 501, 25)],
    }
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)

        def write() -> None:
            records.write_atomic(records.record_path(out, "0" * 16), records.canonical_json(record) + "\n")

        def images() -> None:
            _save_images(out, "0" * 16, truth, reconstruction[torch.tensor(scores.order)], 8)

        pieces["records"], _ = _timed(write, device, repeats)
        pieces["images"], _ = _timed(images, device, repeats)
    return {
        "model": model,
        "batch_size": batch_size,
        "seconds": pieces,
        "lpips_active": lpips_active,
        "lpips_note": lpips_note,
    }


def trial_share(cell: dict[str, Any], harness: dict[str, Any], score_every: int) -> dict[str, Any] | None:
    """A quick-profile trial of this cell: attack (setup, label inference, iterations) plus harness pieces."""
    iterations = profile_iterations(cell["method"])
    if cell.get("status") != "ok" or iterations is None or not math.isfinite(cell.get("ours_s_per_iter", math.nan)):
        return None
    seconds = harness["seconds"]
    labels = (cell.get("label_inference") or {}).get("seconds", 0.0)
    setup = cell.get("ours_setup_s", 0.0)
    attack = iterations * cell["ours_s_per_iter"] + (setup if math.isfinite(setup) else 0.0) + labels
    calls = math.ceil(iterations / score_every) if score_every else 0
    parts = {
        "sampling": seconds["sampling"],
        "model": seconds["model"],
        "client_update": seconds["client_update"],
        "attack": attack,
        "progress_scoring": calls * seconds["progress_call"],
        "metrics": seconds["metrics"],
        "lpips": seconds.get("lpips", 0.0),
        "records": seconds["records"],
        "images": seconds["images"],
    }
    total = sum(parts.values())
    return {
        "method": cell["method"],
        "model": cell["model"],
        "batch_size": cell["batch_size"],
        "profile_iterations": iterations,
        "progress_calls": calls,
        "trial_s": total,
        "seconds": parts,
        "pct": {k: 100 * v / total for k, v in parts.items()},
        "harness_pct": 100 * (total - attack) / total,
    }


# ----------------------------------------------------------------------------------------------------
# experiments: one design choice at a time, A/B interleaved


def _ab(a: Callable[[], RunResult], b: Callable[[], RunResult], pairs: int, *, warmup: bool = True) -> dict[str, Any]:
    """Interleave A and B (ABBA...), return median seconds per iteration and the median paired ratio b/a."""
    if warmup:
        a()
        b()
    times_a, times_b, ratios = [], [], []
    results: dict[str, RunResult] = {}
    for r in range(pairs):
        order = ("a", "b") if r % 2 == 0 else ("b", "a")
        got = {}
        for who in order:
            got[who] = (a if who == "a" else b)()
            results[who] = got[who]
        times_a.append(got["a"].seconds_per_iteration)
        times_b.append(got["b"].seconds_per_iteration)
        ratios.append(got["b"].seconds_per_iteration / got["a"].seconds_per_iteration)
    return {
        "a_s_per_iter": _median(times_a),
        "b_s_per_iter": _median(times_b),
        "b_over_a": _median(ratios),
        "pairs": pairs,
        "results": results,
    }


def _setup(method: str, model: str, batch_size: int, args: argparse.Namespace, **overrides: Any) -> tuple[Any, Any]:
    device = torch.device(args.device)
    observation = draw_round(_DATASET, model, batch_size, device).observation
    attack = build_attack(
        method,
        iterations=1,
        model_has_bn=has_batch_norm(observation.model),
        lbfgs_max_iter=args.lbfgs_max_iter,
        **overrides,
    )
    return observation, attack


def _iterations_for(fn: Callable[[int], RunResult], args: argparse.Namespace) -> int:
    if args.iterations is not None:
        return args.iterations
    estimate = fn(1).seconds_per_iteration
    return int(min(max(math.ceil(args.target_seconds / max(estimate, 1e-6)), 2), args.max_iterations))


def exp_loss_form(args: argparse.Namespace, model: str, batch_size: int, method: str) -> dict[str, Any]:
    """One flat torch.cat of all gradients vs a per-layer distance with no copy (methods/losses.py: per layer for
    the euclidean distances, one cat for the cosine one)."""
    observation, attack = _setup(method, model, batch_size, args)
    floor = FLOORS[method]
    n = _iterations_for(lambda k: floor(observation, attack, k, form="cat"), args)
    ab = _ab(
        lambda: floor(observation, attack, n, form="cat"),
        lambda: floor(observation, attack, n, form="layers"),
        args.repeats,
    )
    results = ab.pop("results")
    return {
        "method": method,
        "model": model,
        "batch_size": batch_size,
        "iterations": n,
        "cat_s_per_iter": ab["a_s_per_iter"],
        "layers_s_per_iter": ab["b_s_per_iter"],
        "speedup_pct": 100 * (1 / ab["b_over_a"] - 1),
        "first_objective_rel_diff": _relative(results["a"].objectives[0], results["b"].objectives[0]),
        "pairs": ab["pairs"],
    }


def exp_bn_stats(args: argparse.Namespace, model: str, batch_size: int) -> dict[str, Any]:
    """GradInversion's BN prior: recompute mean/var from a reshaped copy (a forward hook) vs reuse BN's own."""
    observation, attack = _setup("gradinversion", model, batch_size, args)
    n = _iterations_for(lambda k: floor_gradinversion(observation, attack, k, bn_stats="recompute"), args)
    ab = _ab(
        lambda: floor_gradinversion(observation, attack, n, bn_stats="recompute"),
        lambda: floor_gradinversion(observation, attack, n, bn_stats="reuse"),
        args.repeats,
    )
    ab.pop("results")
    return {
        "model": model,
        "batch_size": batch_size,
        "group_size": attack.group_size,
        "iterations": n,
        "recompute_s_per_iter": ab["a_s_per_iter"],
        "reuse_s_per_iter": ab["b_s_per_iter"],
        "speedup_pct": 100 * (1 / ab["b_over_a"] - 1),
        "pairs": ab["pairs"],
    }


def exp_candidates(args: argparse.Namespace, model: str, batch_size: int, groups: int = 4) -> dict[str, Any]:
    """GradInversion: G candidates in one vmapped tensor vs G separate runs (ours), and a per-candidate loop."""
    observation, attack = _setup("gradinversion", model, batch_size, args, group_size=groups)
    _, single = _setup("gradinversion", model, batch_size, args, group_size=1)

    def ours(group_size: int, iterations: int) -> RunResult:
        base = attack if group_size == groups else single
        return run_ours(dataclasses.replace(base, iterations=iterations), observation)

    n = _iterations_for(lambda k: ours(groups, k), args)
    together = _ab(lambda: ours(1, n), lambda: ours(groups, n), args.repeats)
    together.pop("results")
    loop = _ab(
        lambda: floor_gradinversion(observation, attack, n, candidates="vmap"),
        lambda: floor_gradinversion(observation, attack, n, candidates="loop"),
        args.repeats,
    )
    loop.pop("results")
    one, many = together["a_s_per_iter"], together["b_s_per_iter"]
    return {
        "model": model,
        "batch_size": batch_size,
        "group_size": groups,
        "iterations": n,
        "ours_g1_s_per_iter": one,
        "ours_gN_s_per_iter": many,
        "gN_over_N_runs": together["b_over_a"] / groups,
        "floor_vmap_s_per_iter": loop["a_s_per_iter"],
        "floor_loop_s_per_iter": loop["b_s_per_iter"],
        "loop_over_vmap": loop["b_over_a"],
        "pairs": together["pairs"],
    }


def exp_restarts(args: argparse.Namespace, model: str, batch_size: int, restarts: int = 4) -> dict[str, Any]:
    """IG restarts through our code: one after another (``batch_restarts_up_to=0``) vs side by side as one
    (R*B, C, H, W) tensor (the default), and the batched version against its hand-written floor."""
    observation, attack = _setup("ig", model, batch_size, args, restarts=restarts)

    def ours(iterations: int, batched: bool) -> RunResult:
        up_to = batch_size if batched else 0  # whatever the method's own rule would pick at this batch size
        result = run_ours(dataclasses.replace(attack, iterations=iterations, batch_restarts_up_to=up_to), observation)
        if batched:
            return result
        # per iteration of the whole R-restart optimisation, so both sides count the same work
        return dataclasses.replace(result, seconds_per_iteration=result.seconds_per_iteration * restarts)

    # first thing in this process, so that no heap kept from earlier runs hides the batched run's growth
    with PeakMemory(observation.device) as memory:
        ours(1, True)
    n = _iterations_for(lambda k: ours(k, False), args)
    ab = _ab(lambda: ours(n, False), lambda: ours(n, True), args.repeats)
    results = ab.pop("results")
    floor = _ab(lambda: floor_ig_batched(observation, attack, n, restarts), lambda: ours(n, True), args.repeats)
    floor_results = floor.pop("results")
    sequential, batched = results["a"].objectives, results["b"].objectives
    finals = [sequential[r * n + n - 1] for r in range(restarts)]
    kept = min(range(restarts), key=finals.__getitem__)
    per_restart = floor_results["a"].extra["per_restart"]
    return {
        "model": model,
        "batch_size": batch_size,
        "restarts": restarts,
        "iterations": n,
        "sequential_s_per_iter": ab["a_s_per_iter"],
        "batched_s_per_iter": ab["b_s_per_iter"],
        "batched_over_sequential": ab["b_over_a"],
        "floor_batched_s_per_iter": floor["a_s_per_iter"],
        "batched_overhead_pct": 100 * (floor["b_over_a"] - 1),
        # float32: the first iteration agrees to rounding; signed Adam then lets the runs drift apart slowly
        "first_objective_rel_diff": _relative(batched[0], sequential[kept * n]),
        "last_objective_rel_diff": _relative(batched[-1], finals[kept]),
        "floor_first_objective_min_rel_diff": min(_relative(batched[0], row[0]) for row in per_restart),
        "batched_memory": memory.result,
        "default_mode": "batched" if batch_size <= method_class("ig").batch_restarts_up_to else "sequential",
        "pairs": ab["pairs"],
    }


def exp_channels_last(args: argparse.Namespace, model: str, batch_size: int) -> dict[str, Any]:
    observation, attack = _setup("ig", model, batch_size, args)
    n = _iterations_for(lambda k: floor_ig(observation, attack, k), args)
    ab = _ab(
        lambda: floor_ig(observation, attack, n),
        lambda: floor_ig(observation, attack, n, channels_last=True),
        args.repeats,
    )
    ab.pop("results")
    return {
        "model": model,
        "batch_size": batch_size,
        "iterations": n,
        "contiguous_s_per_iter": ab["a_s_per_iter"],
        "channels_last_s_per_iter": ab["b_s_per_iter"],
        "speedup_pct": 100 * (1 / ab["b_over_a"] - 1),
        "pairs": ab["pairs"],
    }


def exp_compile(args: argparse.Namespace, model: str, batch_size: int, try_model: bool = False) -> dict[str, Any]:
    """torch.compile of the model (double backward) and of the loss terms only, on IG's floor, and IG's
    ``compile_loss`` option through our code."""
    observation, attack = _setup("ig", model, batch_size, args)
    out: dict[str, Any] = {"model": model, "batch_size": batch_size}
    if try_model:
        try:
            floor_ig(observation, attack, 1, compile_model=True)
            out["compile_model"] = "ran"
        except Exception as error:  # the expected outcome: aot_autograd has no double backward
            out["compile_model"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        torch._dynamo.reset()
    try:
        start = time.perf_counter()
        floor_ig(observation, attack, 2, compile_loss=True)
        out["compile_loss_first_call_s"] = time.perf_counter() - start
        n = _iterations_for(lambda k: floor_ig(observation, attack, k), args)
        ab = _ab(
            lambda: floor_ig(observation, attack, n),
            lambda: floor_ig(observation, attack, n, compile_loss=True),
            args.repeats,
        )
        ab.pop("results")
        out.update(
            iterations=n,
            eager_s_per_iter=ab["a_s_per_iter"],
            compiled_loss_s_per_iter=ab["b_s_per_iter"],
            speedup_pct=100 * (1 / ab["b_over_a"] - 1),
            pairs=ab["pairs"],
        )
    except Exception as error:
        out["compile_loss"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    try:  # the same option through our code: IG's compile_loss (compiled once per process and shape)
        start = time.perf_counter()
        run_ours(dataclasses.replace(attack, iterations=2, compile_loss=True), observation)
        out["ours_compile_first_call_s"] = time.perf_counter() - start
        n = out.get("iterations") or _iterations_for(lambda k: floor_ig(observation, attack, k), args)
        ours = _ab(
            lambda: run_ours(dataclasses.replace(attack, iterations=n), observation),
            lambda: run_ours(dataclasses.replace(attack, iterations=n, compile_loss=True), observation),
            args.repeats,
        )
        ours.pop("results")
        out.update(
            ours_eager_s_per_iter=ours["a_s_per_iter"],
            ours_compiled_s_per_iter=ours["b_s_per_iter"],
            ours_speedup_pct=100 * (1 / ours["b_over_a"] - 1),
        )
    except Exception as error:
        out["ours_compile_loss"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    return out


MALLOC_CELLS = (
    ("ig", "lenet", 1, 20),
    ("idlg", "convnet", 1, 10),
    ("ig", "convnet", 8, 10),
    ("gradinversion", "convnet", 8, 3),
    ("ig", "resnet18", 1, 3),
)


def malloc_probe(args: argparse.Namespace, method: str, model: str, batch_size: int, iterations: int) -> dict:
    """Ours in this process as it is (the caller picks the malloc setting): s/iteration, minor faults, peak RSS."""
    observation, attack = _setup(method, model, batch_size, args)
    run_ours(dataclasses.replace(attack, iterations=1), observation)
    faults = _minor_faults()
    with PeakMemory(observation.device) as memory:
        result = run_ours(dataclasses.replace(attack, iterations=iterations), observation)
    return {
        "s_per_iter": result.seconds_per_iteration,
        "minor_faults_per_iter": (_minor_faults() - faults) / iterations,
        "peak_mb": memory.result.get("peak_mb"),
    }


def exp_malloc(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Ours with glibc's default malloc vs tune_malloc(), alternating fresh child processes (CPU only)."""
    out = []
    for method, model, batch_size, iterations in MALLOC_CELLS:
        if method not in args.methods or method_class(method) is None:
            continue
        n = args.iterations or iterations
        runs: dict[str, list[dict]] = {"default": [], "tuned": []}
        pairs = min(args.repeats, 3)
        for r in range(pairs):
            for mode in ("default", "tuned") if r % 2 == 0 else ("tuned", "default"):
                status, payload = _call(malloc_probe, (args, method, model, batch_size, n), args, malloc=mode)
                if status == "ok":
                    runs[mode].append(payload)
        if not runs["default"] or not runs["tuned"]:
            out.append({"method": method, "model": model, "batch_size": batch_size, "status": "failed"})
            continue
        entry = {"method": method, "model": model, "batch_size": batch_size, "iterations": n, "pairs": pairs}
        for mode, results in runs.items():
            entry[f"{mode}_s_per_iter"] = _median([x["s_per_iter"] for x in results])
            entry[f"{mode}_minor_faults_per_iter"] = _median([x["minor_faults_per_iter"] for x in results])
            entry[f"{mode}_peak_mb"] = _median([x["peak_mb"] for x in results])
        entry["speedup_pct"] = 100 * (entry["default_s_per_iter"] / entry["tuned_s_per_iter"] - 1)
        out.append(entry)
    return out


def exp_loop_machinery(args: argparse.Namespace, iterations: int = 2000) -> list[dict[str, Any]]:
    """Fixed cost per iteration of methods.optimise (schedule, trace, checks, projection) on a 1-element problem.

    The objective is trivial, so what is left is the loop's own work: the microseconds it adds to every
    iteration whatever the model, against a hand-written loop doing the same optimiser steps.
    """
    from methods.optimise import OptimiserConfig, optimise

    device = torch.device(args.device)
    low, high = torch.full((1,), -0.5, device=device), torch.full((1,), 0.5, device=device)
    configs = {
        "adam_signed_step_clamp": OptimiserConfig(
            optimiser="adam", lr=0.1, iterations=iterations, signed=True, schedule="step"
        ),
        "lbfgs_2": OptimiserConfig(optimiser="lbfgs", lr=1.0, iterations=iterations, lbfgs_max_iter=2),
    }
    out = []
    for name, config in configs.items():

        def ours(config: OptimiserConfig = config) -> RunResult:
            x = torch.zeros(1, device=device, requires_grad=True)
            clamp = (lambda: x.copy_(torch.max(torch.min(x, high), low))) if config.optimiser == "adam" else None
            start = _clock()
            optimise(lambda: (x - 1).pow(2).sum(), [x], config, project=clamp)
            _sync(device)
            return RunResult((_clock() - start) / iterations, [])

        def floor(config: OptimiserConfig = config) -> RunResult:
            x = torch.zeros(1, device=device, requires_grad=True)
            values = []
            if config.optimiser == "adam":
                optimiser: torch.optim.Optimizer = torch.optim.Adam([x], lr=config.lr)
            else:
                optimiser = torch.optim.LBFGS([x], lr=config.lr, max_iter=config.lbfgs_max_iter)

            def closure() -> Tensor:
                optimiser.zero_grad(set_to_none=True)
                value = (x - 1).pow(2).sum()
                value.backward(inputs=[x])
                if config.signed:
                    x.grad.sign_()
                return value

            start = _clock()
            for iteration in range(iterations):
                if config.optimiser == "adam":
                    optimiser.param_groups[0]["lr"] = config.lr * _step_factor(iteration, iterations)
                values.append(optimiser.step(closure).detach())
                if config.optimiser == "adam":
                    with torch.no_grad():
                        x.clamp_(low, high)
            torch.stack(values)
            _sync(device)
            return RunResult((_clock() - start) / iterations, [])

        ab = _ab(floor, ours, args.repeats)
        ab.pop("results")
        out.append(
            {
                "loop": name,
                "iterations": iterations,
                "floor_us_per_iter": 1e6 * ab["a_s_per_iter"],
                "ours_us_per_iter": 1e6 * ab["b_s_per_iter"],
                "machinery_us_per_iter": 1e6 * (ab["b_s_per_iter"] - ab["a_s_per_iter"]),
                "pairs": ab["pairs"],
            }
        )
    return out


def experiment_plan(args: argparse.Namespace) -> list[tuple[str, Callable[..., dict], tuple]]:
    chosen = set(args.experiments)
    plan: list[tuple[str, Callable[..., dict], tuple]] = []
    if "loss_form" in chosen:
        for method, model, batch_size in (
            ("dlg", "lenet", 1),
            ("idlg", "lenet", 1),
            ("idlg", "convnet", 1),
            ("idlg", "resnet18", 1),
            ("ig", "lenet", 1),
            ("ig", "resnet18", 1),
            ("gradinversion", "convnet", 8),
        ):
            if method in args.methods and method_class(method) is not None:
                plan.append(("loss_form", exp_loss_form, (model, batch_size, method)))
    if "bn_stats" in chosen:
        plan.append(("bn_stats", exp_bn_stats, ("convnet", 8)))
        plan.append(("bn_stats", exp_bn_stats, ("resnet18", 1)))
    if "candidates" in chosen:
        for model, batch_size in (("convnet", 1), ("convnet", 8), ("lenet", 8)):
            plan.append(("candidates", exp_candidates, (model, batch_size)))
    if "restarts" in chosen:
        # the last: IG's paper profile (8 restarts) at the largest batch, for its memory
        for model, batch_size, restarts in (("lenet", 8, 4), ("convnet", 8, 4), ("convnet", 48, 8)):
            plan.append(("restarts", exp_restarts, (model, batch_size, restarts)))
    if "channels_last" in chosen:
        for model, batch_size in (("convnet", 8), ("convnet", 48), ("resnet18", 1)):
            plan.append(("channels_last", exp_channels_last, (model, batch_size)))
    if "compile" in chosen:
        for model, batch_size in (("lenet", 1), ("convnet", 8), ("resnet18", 1)):
            plan.append(("compile", exp_compile, (model, batch_size, model == "lenet")))
    return plan


# ----------------------------------------------------------------------------------------------------
# running cells in fresh processes


def _child(connection: Any, fn: Callable[..., Any], arguments: tuple, threads: int, malloc: str, clock: str) -> None:
    try:
        torch.set_num_threads(threads)
        use_clock(clock)
        if malloc == "tuned":
            tune_malloc()
        connection.send(("ok", fn(*arguments)))
    except BaseException as error:  # report, do not hang the parent
        connection.send(("error", f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=4)}"))
    finally:
        connection.close()


def _call(
    fn: Callable[..., Any], arguments: tuple, args: argparse.Namespace, malloc: str | None = None
) -> tuple[str, Any]:
    """Run ``fn(*arguments)`` in a forked child (so its peak RSS is its own), or in-process (CUDA, --no-fork)."""
    if not args.fork:
        try:
            return "ok", fn(*arguments)
        except Exception as error:
            return "error", f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=4)}"
        finally:
            if torch.device(args.device).type == "cuda":
                torch.cuda.empty_cache()
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(
        target=_child, args=(sender, fn, arguments, args.threads, malloc or args.malloc, args.clock)
    )
    process.start()
    sender.close()
    try:
        status, payload = receiver.recv()
    except EOFError:
        status, payload = "error", "the child process died without a result (out of memory?)"
    process.join()
    if process.exitcode not in (0, None) and status == "ok":
        status, payload = "error", f"child exit code {process.exitcode}"
    return status, payload


# ----------------------------------------------------------------------------------------------------
# reporting


def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": args.threads,
        "device": args.device,
        "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
    }
    try:
        info["load_average_start"] = list(os.getloadavg())
    except OSError:
        pass
    return info


def _fmt(value: Any, spec: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def cell_table(cells: Sequence[dict[str, Any]]) -> str:
    headers = [
        "method",
        "model",
        "B",
        "r",
        "iters x pairs",
        "ours ms/it",
        "floor ms/it",
        "overhead %",
        "paired range %",
        "mirror ms/it",
        "loop %",
        "impl %",
        "peak / attack MB",
        "note",
    ]
    rows = []
    for c in cells:
        if c.get("status") != "ok":
            reason = c.get("reason", c.get("status", "")).splitlines()[0][:80]
            rows.append([c["method"], c["model"], str(c["batch_size"])] + ["-"] * (len(headers) - 4) + [reason])
            continue
        memory = c.get("memory", {})
        spread = "-"
        if math.isfinite(c.get("overhead_min_pct", math.nan)) and c.get("repeats", 0) > 1:
            spread = f"{c['overhead_min_pct']:+.1f}..{c['overhead_max_pct']:+.1f}"
        rows.append(
            [
                c["method"],
                c["model"],
                str(c["batch_size"]),
                _fmt(c.get("dup_ratio"), ".2f"),
                f"{c['iterations']}x{c['repeats']}",
                _fmt(1000 * c.get("ours_s_per_iter", math.nan), ".4g"),
                _fmt(1000 * c.get("floor_s_per_iter", math.nan), ".4g"),
                _fmt(c.get("overhead_pct"), "+.1f"),
                spread,
                _fmt(1000 * c.get("mirror_s_per_iter", math.nan), ".4g"),
                _fmt(c.get("loop_overhead_pct"), "+.1f"),
                _fmt(c.get("implementation_cost_pct"), "+.1f"),
                _fmt(memory.get("peak_mb"), ".0f") + " / " + _fmt(memory.get("increase_mb"), ".0f"),
                c.get("note", ""),
            ]
        )
    return _table(headers, rows)


def share_table(shares: Sequence[dict[str, Any]]) -> str:
    keys = ("sampling", "model", "client_update", "progress_scoring", "metrics", "lpips", "records", "images")
    rows = [
        [s["method"], s["model"], str(s["batch_size"]), str(s["profile_iterations"]), _fmt(s["trial_s"], ".3g")]
        + [_fmt(s["pct"][k], ".2f") for k in keys]
        + [_fmt(s["harness_pct"], ".2f")]
        for s in shares
    ]
    headers = ["method", "model", "B", "iters", "trial s", *[f"{k} %" for k in keys], "harness %"]
    return _table(headers, rows)


def experiments_text(experiments: dict[str, list[dict[str, Any]]]) -> str:
    out = []
    for name, entries in experiments.items():
        out.append(f"\n{name}:")
        for e in entries:
            shown = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in e.items()}
            out.append("  " + json.dumps(shown, default=str))
    return "\n".join(out)


def check_targets(report: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    from bench import metrics

    targets: dict[str, Any] = {}
    measured = [
        c for c in report["cells"] if c.get("status") == "ok" and math.isfinite(c.get("overhead_pct", math.nan))
    ]
    over = [
        f"{c['method']}/{c['model']}/B={c['batch_size']}: {c['overhead_pct']:+.1f}%"
        for c in measured
        if c["overhead_pct"] > 3
    ]
    targets["overhead_le_3pct"] = {"met": bool(measured) and not over, "cells": len(measured), "above": over}
    progress = [s["pct"]["progress_scoring"] for s in report["trial_shares"]]
    if progress:
        targets["progress_scoring_le_2pct"] = {
            "met": max(progress) <= 2,
            "max_pct": max(progress),
            "score_every": args.score_every,
        }
    candidates = report["experiments"].get("candidates", [])
    if candidates:
        targets["gradinversion_candidates_cheaper_than_separate_runs"] = {
            "met": all(e["gN_over_N_runs"] < 1 for e in candidates),
            "gN_over_N_runs": {f"{e['model']}/B={e['batch_size']}": e["gN_over_N_runs"] for e in candidates},
        }
    restarts = report["experiments"].get("restarts", [])
    if restarts:
        targets["ig_restarts_batched"] = {
            "met": all(e["batched_over_sequential"] < 1 for e in restarts if e["default_mode"] == "batched"),
            "note": "IG's R restarts as one tensor vs one after another, both through matching.invert; IG batches "
            "them up to batch_restarts_up_to images per client batch, and the target is checked there",
            "batched_over_sequential": {
                f"{e['model']}/B={e['batch_size']}": e["batched_over_sequential"] for e in restarts
            },
        }
    score_source = inspect.getsource(metrics.score)
    lpips_source = inspect.getsource(metrics.LPIPSScorer.__call__)
    targets["metrics_inference_mode"] = {
        "met": "torch.inference_mode()" in score_source and "torch.inference_mode()" in lpips_source,
        "score_uses_inference_mode": "torch.inference_mode()" in score_source,
        "lpips_uses_inference_mode": "torch.inference_mode()" in lpips_source,
        "match_calls_in_score": score_source.count("match("),
    }
    b48 = [c for c in report["cells"] if c.get("status") == "ok" and c["model"] == "convnet" and c["batch_size"] == 48]
    if b48:
        peaks = {c["method"]: c["memory"].get("peak_mb") for c in b48}
        targets["convnet_b48_peak_le_2gb"] = {
            "met": all(p is not None and p <= 2048 for p in peaks.values()),
            "peak_mb": peaks,
            "measure": b48[0]["memory"].get("measure"),
        }
    return targets


# ----------------------------------------------------------------------------------------------------
# entry point


def _names(values: Sequence[str] | None, default: Sequence[str]) -> list[str]:
    if not values:
        return list(default)
    return [v for value in values for v in value.split(",") if v]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.perf", description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", help=f"default: {' '.join(METHODS)}")
    parser.add_argument("--models", nargs="+", help=f"default: {' '.join(MODELS)}")
    parser.add_argument("--batch-sizes", nargs="+", help="default: 1 8 48")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved ours/floor pairs per cell (default 5)")
    parser.add_argument("--iterations", type=int, help="iterations per timed run (default: sized by --target-seconds)")
    parser.add_argument("--target-seconds", type=float, default=0.4, help="aim for timed runs of about this long")
    parser.add_argument("--max-iterations", type=int, default=20)
    parser.add_argument(
        "--heavy-seconds",
        type=float,
        default=2.0,
        help="cells whose iteration takes longer are timed with three 1-iteration pairs (ResNet-18, B=48 ...)",
    )
    parser.add_argument(
        "--lbfgs-max-iter", type=int, default=2, help="L-BFGS evaluations per iteration for DLG/iDLG (default 2)"
    )
    parser.add_argument(
        "--no-mirror",
        dest="mirror",
        action="store_false",
        help="skip the mirror floor (the floor with the shared code's implementation choices)",
    )
    parser.add_argument(
        "--channels-last", action="store_true", help="IG floor: model and images in channels-last memory format"
    )
    parser.add_argument("--compile-loss", action="store_true", help="IG floor: torch.compile the distance + TV")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument(
        "--malloc",
        choices=("tuned", "default"),
        default="tuned",
        help="glibc malloc in the measuring processes: tuned (no mmap/trim churn, see tune_malloc) or default",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        help="attack timing: process CPU time (default on CPU with one thread) or wall time (default otherwise)",
    )
    parser.add_argument("--experiments", nargs="*", help=f"default: all of {' '.join(EXPERIMENTS)}; none: none")
    parser.add_argument("--no-harness", action="store_true", help="skip the per-trial harness breakdown")
    parser.add_argument("--no-fork", action="store_true", help="run cells in this process (peak memory less exact)")
    parser.add_argument("--score-every", type=int, default=None, help="default: score_every in conf/config.yaml")
    parser.add_argument("--quick", action="store_true", help="a seconds-long subset (used by the tests)")
    parser.add_argument("--out", default="results/perf.json", help="where to write the JSON report")
    args = parser.parse_args(argv)
    if args.quick:
        args.methods = args.methods or ["idlg", "ig"]
        args.models = args.models or ["lenet"]
        args.batch_sizes = args.batch_sizes or ["1"]
        args.iterations = args.iterations or 2
        args.repeats = 1
        if args.experiments is None:
            args.experiments = []
    args.methods = _names(args.methods, METHODS)
    args.models = _names(args.models, MODELS)
    args.batch_sizes = [int(b) for b in _names(args.batch_sizes, [str(b) for b in BATCH_SIZES])]
    experiments = EXPERIMENTS if args.experiments is None else _names(args.experiments, [])
    args.experiments = [] if experiments == ["none"] else experiments
    unknown = set(args.experiments) - set(EXPERIMENTS)
    if unknown:
        parser.error(f"unknown experiment(s) {', '.join(sorted(unknown))}; choose from {', '.join(EXPERIMENTS)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda was asked for but CUDA is not available")
    if args.clock is None:
        args.clock = "cpu" if args.device == "cpu" and args.threads == 1 else "wall"
    if args.clock == "cpu" and not args.device.startswith("cpu"):
        parser.error("--clock cpu cannot time GPU work; use --clock wall with --device cuda")
    # fork gives each cell its own peak RSS; CUDA cannot be forked, and its allocator reports peaks itself
    args.fork = not args.no_fork and not args.device.startswith("cuda") and sys.platform.startswith("linux")
    if args.score_every is None:
        from omegaconf import OmegaConf

        args.score_every = int(OmegaConf.load(CONF / "config.yaml").score_every)
    return args


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    global _DATASET
    args = parse_args(argv)
    # The parent stays single-threaded so forked children start without an OpenMP pool; they set --threads.
    torch.set_num_threads(1 if args.fork else args.threads)
    if not args.fork:
        use_clock(args.clock)
        if args.malloc == "tuned":
            tune_malloc()
    started = time.perf_counter()
    report: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "machine": machine_info(args)}
    report["settings"] = {
        k: getattr(args, k)
        for k in (
            "methods",
            "models",
            "batch_sizes",
            "repeats",
            "iterations",
            "target_seconds",
            "max_iterations",
            "heavy_seconds",
            "lbfgs_max_iter",
            "threads",
            "malloc",
            "clock",
            "mirror",
            "channels_last",
            "compile_loss",
            "device",
            "experiments",
            "score_every",
            "quick",
            "fork",
        )
    }
    start = time.perf_counter()
    _DATASET = load_default_dataset()
    report["one_off"] = {"dataset_load_s": time.perf_counter() - start}

    cells = []
    for model in args.models:
        for batch_size in args.batch_sizes:
            for method in args.methods:
                status, payload = _call(run_cell, (method, model, batch_size, args), args)
                cell = (
                    payload
                    if status == "ok"
                    else {
                        "method": method,
                        "model": model,
                        "batch_size": batch_size,
                        "status": "failed",
                        "reason": payload,
                    }
                )
                cells.append(cell)
                _log(
                    f"[perf] {method:>13} {model:>8} B={batch_size:<3} "
                    + (
                        f"ours {1000 * cell['ours_s_per_iter']:.4g} ms/it, floor "
                        f"{1000 * cell.get('floor_s_per_iter', math.nan):.4g} ms/it, "
                        f"overhead {cell.get('overhead_pct', math.nan):+.1f}%, "
                        f"peak {cell['memory'].get('peak_mb', 0):.0f} MB"
                        if cell.get("status") == "ok"
                        else f"{cell['status']}: {cell.get('reason', '').splitlines()[0]}"
                    )
                    + f"  [{time.perf_counter() - started:.0f} s]"
                )
    report["cells"] = cells

    harness = []
    if not args.no_harness:
        for model in args.models:
            for batch_size in args.batch_sizes:
                status, payload = _call(run_harness, (model, batch_size, args), args)
                if status == "ok":
                    harness.append(payload)
                else:
                    harness.append({"model": model, "batch_size": batch_size, "status": "failed", "reason": payload})
        _log(f"[perf] harness pieces timed  [{time.perf_counter() - started:.0f} s]")
    report["harness"] = harness
    by_round = {(h["model"], h["batch_size"]): h for h in harness if "seconds" in h}
    shares = []
    for cell in cells:
        h = by_round.get((cell["model"], cell["batch_size"]))
        share = trial_share(cell, h, args.score_every) if h else None
        if share is not None:
            shares.append(share)
    report["trial_shares"] = shares

    experiments: dict[str, list[dict[str, Any]]] = {}
    if "malloc" in args.experiments and args.fork:
        experiments["malloc"] = exp_malloc(args)
        _log(f"[perf] experiment malloc  [{time.perf_counter() - started:.0f} s]")
    if "loop_machinery" in args.experiments:
        status, payload = _call(exp_loop_machinery, (args,), args)
        experiments["loop_machinery"] = payload if status == "ok" else [{"status": "failed", "reason": payload}]
        _log(f"[perf] experiment loop_machinery  [{time.perf_counter() - started:.0f} s]")
    for name, fn, arguments in experiment_plan(args):
        status, payload = _call(fn, (args, *arguments), args)
        entry = payload if status == "ok" else {"arguments": list(arguments), "status": "failed", "reason": payload}
        experiments.setdefault(name, []).append(entry)
        _log(f"[perf] experiment {name} {arguments}  [{time.perf_counter() - started:.0f} s]")
    report["experiments"] = experiments
    report["targets"] = check_targets(report, args)
    try:
        report["machine"]["load_average_end"] = list(os.getloadavg())
    except OSError:
        pass
    report["total_seconds"] = time.perf_counter() - started

    print("\nPer-iteration time, ours vs the hand-written floor (medians; overhead = median of paired ratios)\n")
    print(cell_table(cells))
    if shares:
        print(f"\nHarness work per quick-profile trial, % of the trial (score_every={args.score_every})\n")
        print(share_table(shares))
    if experiments:
        print("\nExperiments" + experiments_text(experiments))
    print("\nTargets")
    for name, target in report["targets"].items():
        print(f"  {name}: {'met' if target.get('met') else 'NOT met'}  {json.dumps(target, default=str)}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from bench import records

    out.write_text(json.dumps(json.loads(records.canonical_json(report)), indent=1) + "\n")
    print(f"\nwrote {out} in {report['total_seconds']:.0f} s")
    return report


if __name__ == "__main__":
    main()
