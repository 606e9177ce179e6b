"""Defences a client applies to its update before the attacker sees it, and a registry of them.

A defence is a dataclass registered by name with :func:`register_defence`; its fields are its strength
parameters, checked in ``__post_init__`` (a bad value is a ``ValueError`` that :func:`build_defence` turns
into a one-line ``UserError``). ``apply`` maps the client's :class:`ClientBatch` (its model, normalised
inputs, labels and plain update) to the defended update. A defence with ``update_only = True`` reads the
update alone, so it also defends a FedAvg client's weight difference; the others act on the FedSGD gradient
of the batch. All randomness comes from the ``torch.Generator`` passed in, which the runner seeds from the
trial seed; the global RNG is never read. docs/defences.md describes every defence, the threat model and the
deviations from the papers.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Protocol, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.errors import UserError
from methods.base import DefenceDescription, NotApplicableError
from methods.registry import Registry, UnknownNameError

Gradients = tuple[Tensor, ...]


@dataclass(frozen=True)
class ClientBatch:
    """What a defence may read: the client's model (in its train/eval mode), its normalised inputs (B, C, H, W),
    labels (B,) and the plain update in ``model.parameters()`` order: the gradients of the mean cross-entropy
    (FedSGD), or the weight difference after the local steps (FedAvg; only ``update_only`` defences see one)."""

    model: nn.Module
    inputs: Tensor
    labels: Tensor
    gradients: Gradients


class Defence(Protocol):
    name: ClassVar[str]
    # reads only batch.gradients, so it applies to any update, a FedAvg weight difference too (absent: False)
    update_only: ClassVar[bool]

    def apply(self, batch: ClientBatch, generator: torch.Generator) -> Gradients: ...


DefenceT = TypeVar("DefenceT", bound=type)
DEFENCES: Registry[type] = Registry("defence")


def register_defence(name: str) -> Callable[[DefenceT], DefenceT]:
    """Class decorator adding a defence (a dataclass whose fields are its parameters) under ``name``."""

    def wrap(cls: DefenceT) -> DefenceT:
        cls.name = name
        DEFENCES.add(name, cls)
        return cls

    return wrap


def list_defences() -> list[str]:
    return DEFENCES.names()


def build_defence(name: str, **params: Any) -> Defence:
    """The registered defence ``name`` with ``params``; an unknown name or a bad parameter is a ``UserError``."""
    try:
        cls = DEFENCES.get(name)
    except UnknownNameError as error:
        raise UserError(str(error)) from None
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        takes = ", ".join(sorted(known)) or "no parameters"
        raise UserError(f"defence {name!r} has no parameter {', '.join(unknown)}; it takes: {takes}")
    try:
        return cls(**params)
    except (TypeError, ValueError) as error:
        raise UserError(f"bad strength for defence {name!r}: {error}") from None


# Keys of a defence's config that are not parameters of the defence.
CONFIG_ONLY_KEYS = ("name", "level", "strengths")


def defence_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """The defence's parameters from its config group (``conf/defence/<name>.yaml``).

    ``level`` (an index, set by ``sweep=defences``) picks the strength of the one parameter listed under
    ``strengths``; without it the parameters are taken as written.
    """
    params = {k: v for k, v in config.items() if k not in CONFIG_ONLY_KEYS}
    level, strengths = config.get("level"), config.get("strengths") or {}
    if level is not None:
        for key, values in strengths.items():
            values = list(values)
            if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level < len(values):
                raise UserError(f"defence.level={level!r} is not valid; give an index in 0..{len(values) - 1}")
            params[key] = values[level]
    return params


def defence_from_config(config: Mapping[str, Any]) -> tuple[Defence, DefenceDescription]:
    """Build the configured defence (``UserError`` on bad input) and the description the attacker receives."""
    params = defence_params(config)
    defence = build_defence(str(config["name"]), **params)
    return defence, describe(defence)


def describe(defence: Defence) -> DefenceDescription:
    return DefenceDescription(name=defence.name, params=dict(asdict(defence)))  # type: ignore[call-overload]


def trial_key_part(description: DefenceDescription) -> dict[str, Any]:
    """What the defence adds to a trial's key: nothing for ``none``, so undefended trials keep their keys."""
    if description.name == "none":
        return {}
    return {"defence": {"name": description.name, **description.params}}


# ----------------------------------------------------------------------------------------------------
# Shared helpers


def global_norm(gradients: Gradients) -> Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in gradients]))


def cosine(a: Gradients, b: Gradients) -> float:
    """Cosine similarity of two updates, each taken as one concatenated vector (nan if either is zero)."""
    dot = sum(float((x.double() * y.double()).sum()) for x, y in zip(a, b, strict=True))
    norms = math.sqrt(sum(float(x.double().pow(2).sum()) for x in a) * sum(float(y.double().pow(2).sum()) for y in b))
    return dot / norms if norms > 0 else math.nan


def gaussian_like(tensor: Tensor, std: float, generator: torch.Generator) -> Tensor:
    """N(0, std^2) noise shaped like ``tensor``, drawn on the CPU (the same numbers on every device)."""
    dtype = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    noise = torch.randn(tensor.shape, generator=generator, dtype=dtype)
    return (noise * std).to(device=tensor.device, dtype=tensor.dtype)


@contextlib.contextmanager
def running_statistics_frozen(model: nn.Module) -> Iterator[nn.Module]:
    """BatchNorm layers stop writing their running statistics for the duration (restored afterwards)."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    previous = [m.track_running_stats for m in layers]
    for m in layers:
        m.track_running_stats = False
    try:
        yield model
    finally:
        for m, tracked in zip(layers, previous, strict=True):
            m.track_running_stats = tracked


def _check_fraction(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1):
        raise ValueError(f"{name} must lie in [0, 1), got {value!r}")


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def _check_non_negative(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")


# ----------------------------------------------------------------------------------------------------
# Defences


@register_defence("none")
@dataclass(frozen=True)
class NoDefence:
    """The update as computed."""

    name: ClassVar[str] = "none"
    update_only: ClassVar[bool] = True

    def apply(self, batch: ClientBatch, generator: torch.Generator) -> Gradients:
        return batch.gradients


@register_defence("clip")
@dataclass(frozen=True)
class Clip:
    """Scale the update so that its global L2 norm is at most ``max_norm``."""

    name: ClassVar[str] = "clip"
    update_only: ClassVar[bool] = True
    max_norm: float = 1.0

    def __post_init__(self) -> None:
        _check_positive("max_norm", self.max_norm)

    def apply(self, batch: ClientBatch, generator: torch.Generator) -> Gradients:
        factor = min(1.0, self.max_norm / max(float(global_norm(batch.gradients)), 1e-30))
        return tuple(g * factor for g in batch.gradients)


@register_defence("gaussian")
@dataclass(frozen=True)
class Gaussian:
    """Add N(0, sigma^2) to every entry; ``relative``: sigma times the update's RMS entry (its norm / sqrt(size)),
    so that the noise's norm is about ``sigma`` times the update's norm."""

    name: ClassVar[str] = "gaussian"
    update_only: ClassVar[bool] = True
    sigma: float = 0.01
    relative: bool = False

    def __post_init__(self) -> None:
        _check_non_negative("sigma", self.sigma)
        if not isinstance(self.relative, bool):
            raise ValueError(f"relative must be true or false, got {self.relative!r}")

    def apply(self, batch: ClientBatch, generator: torch.Generator) -> Gradients:
        std = self.sigma
        if self.relative:
            size = sum(g.numel() for g in batch.gradients)
            std = self.sigma * float(global_norm(batch.gradients)) / math.sqrt(size)
        return tuple(g + gaussian_like(g, std, generator) for g in batch.gradients)


def per_example_gradients(model: nn.Module, inputs: Tensor, labels: Tensor) -> Gradients:
    """Each example's gradient of its cross-entropy, (B, *param.shape) per trainable parameter, in one
    vectorised ``torch.func`` pass (``vmap`` over ``grad``). Each example is its own batch of one, so a
    BatchNorm layer in train mode normalises it with its own statistics (see docs/defences.md)."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = dict(model.named_buffers())

    def loss_of_one(trainable: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        logits = torch.func.functional_call(model, ({**trainable, **frozen}, buffers), (x.unsqueeze(0),))
        return F.cross_entropy(logits, y.unsqueeze(0))

    with running_statistics_frozen(model):
        grads = torch.func.vmap(torch.func.grad(loss_of_one), in_dims=(None, 0, 0))(params, inputs, labels)
    return tuple(grads[n] for n in names)


def dp_epsilon(noise_multiplier: float, delta: float, steps: int = 1) -> float:
    """(epsilon, delta)-DP of ``steps`` full-batch Gaussian steps (no subsampling), from Google's dp-accounting
    RDP accountant; nan with a warning when that optional extra is not installed (pip install dp-accounting)."""
    if noise_multiplier == 0:
        return math.inf
    try:
        import dp_accounting
    except ImportError:
        warnings.warn(
            "dp-accounting is not installed, so DP-SGD's epsilon is NaN; pip install 'gia-bench[dp]' to report it",
            stacklevel=2,
        )
        return math.nan
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(noise_multiplier), steps)
    return float(accountant.get_epsilon(delta))


@register_defence("dpsgd")
@dataclass(frozen=True)
class DPSGD:
    """DP-SGD's step (Abadi et al. 2016): each example's gradient clipped to ``max_norm``, their sum plus
    N(0, (noise_multiplier * max_norm)^2) per entry, divided by the batch size."""

    name: ClassVar[str] = "dpsgd"
    update_only: ClassVar[bool] = False  # per-example clipping inside the gradient computation
    max_norm: float = 1.0
    noise_multiplier: float = 1.0
    delta: float = 1e-5

    def __post_init__(self) -> None:
        _check_positive("max_norm", self.max_norm)
        _check_non_negative("noise_multiplier", self.noise_multiplier)
        if not (isinstance(self.delta, (int, float)) and 0 < self.delta < 1):
            raise ValueError(f"delta must lie in (0, 1), got {self.delta!r}")

    def clipped_sum(self, batch: ClientBatch) -> Gradients:
        per_example = per_example_gradients(batch.model, batch.inputs, batch.labels)
        norms = torch.linalg.vector_norm(torch.cat([g.flatten(1) for g in per_example], dim=1), dim=1)
        factors = (self.max_norm / (norms + 1e-6)).clamp(max=1.0)
        return tuple(torch.einsum("b,b...->...", factors, g) for g in per_example)

    def apply(self, batch: ClientBatch, generator: torch.Generator) -> Gradients:
        std = self.noise_multiplier * self.max_norm
        size = batch.inputs.shape[0]
        return tuple((g + gaussian_like(g, std, generator)) / size for g in self.clipped_sum(batch))

    def privacy(self) -> dict[str, float]:
        return {"epsilon": dp_epsilon(self.noise_multiplier, self.delta), "delta": self.delta}


@register_defence("prune")
@dataclass(frozen=True)
class Prune:
    """Zero the fraction ``p`` (rounded down) of each layer's entries with the smallest magnitudes."""

    name: ClassVar[str] = "prune"
    update_only: ClassVar[bool] = True
    p: float = 0.5

    def __post_init__(self) -> None:
        _check_fraction("p", self.p)

    def apply(self, batch: ClientBatch, generator: torch.Generator) -> Gradients:
        pruned = []
        for g in batch.gradients:
            count = int(self.p * g.numel())
            flat = g.flatten().clone()
            flat[torch.argsort(flat.abs(), stable=True)[:count]] = 0
            pruned.append(flat.view_as(g))
        return tuple(pruned)


@register_defence("quantise")
@dataclass(frozen=True)
class Quantise:
    """Per layer: ``bits=1`` keeps the sign times the layer's mean magnitude; ``bits=k`` rounds every entry to the
    nearest of 2^k evenly spaced levels between the layer's minimum and maximum."""

    name: ClassVar[str] = "quantise"
    update_only: ClassVar[bool] = True
    bits: int = 8

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or self.bits < 1:
            raise ValueError(f"bits must be an integer of at least 1, got {self.bits!r}")

    def apply(self, batch: ClientBatch, generator: torch.Generator) -> Gradients:
        return tuple(self.quantise(g) for g in batch.gradients)

    def quantise(self, g: Tensor) -> Tensor:
        if self.bits == 1:
            return torch.where(g >= 0, 1.0, -1.0).to(g.dtype) * g.abs().mean()
        low, high = g.min(), g.max()
        if high == low:
            return g.clone()
        step = (high - low) / (2**self.bits - 1)
        return low + torch.round((g - low) / step) * step


def classifier_index(model: nn.Module) -> tuple[nn.Linear, int]:
    """The model's final ``nn.Linear`` (fed by the representation) and the position of its weight's gradient."""
    last = list(model.modules())[-1]
    if not isinstance(last, nn.Linear):
        raise NotApplicableError(
            f"soteria perturbs the gradient of the fully connected layer fed by the representation, but the last "
            f"module of {type(model).__name__} is a {type(last).__name__}, not an nn.Linear"
        )
    trainable = [p for p in model.parameters() if p.requires_grad]
    index = next((i for i, p in enumerate(trainable) if p is last.weight), None)
    if index is None:
        raise NotApplicableError("soteria needs a trainable classifier weight; the model's last nn.Linear is frozen")
    return last, index


@register_defence("soteria")
@dataclass(frozen=True)
class Soteria:
    """Soteria (Sun, Li, Wang, Chen, Li, Chen. Provable Defense against Privacy Leakage in Federated Learning
    from Representation Perspective. CVPR 2021), our implementation: score every feature f of the representation
    r (the classifier's input) by sum over the batch of ||d r_f / d x|| / |r_f|, and zero the classifier weight
    gradient's columns of the fraction ``p`` of features with the lowest scores (those whose perturbation moves the
    input furthest per unit change of r)."""

    name: ClassVar[str] = "soteria"
    update_only: ClassVar[bool] = False  # scores the batch's representation
    p: float = 0.4

    def __post_init__(self) -> None:
        _check_fraction("p", self.p)

    def scores(self, model: nn.Module, inputs: Tensor) -> Tensor:
        """Per feature f of the representation r: sum over the batch of ||d r_f / d x_b|| / |r_bf| (F,)."""
        head, _ = classifier_index(model)
        captured: list[Tensor] = []
        handle = head.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
        images = inputs.detach().requires_grad_(True)
        try:
            with running_statistics_frozen(model), torch.enable_grad():
                model(images)
        finally:
            handle.remove()
        features = captured[0]
        if features.dim() != 2:
            raise NotApplicableError(f"soteria needs a flat representation (B, F), got shape {tuple(features.shape)}")
        # One backward pass per feature (one-hot at f for every example; BatchNorm in train mode couples them).
        # A loop: vmap over the cotangents (torch.func.vjp) measured several times slower for conv/pool backward
        # on CPU.
        row_norms = torch.empty_like(features)
        cotangent = torch.zeros_like(features)
        for f in range(features.shape[1]):
            cotangent[:, f] = 1
            (rows,) = torch.autograd.grad(features, images, cotangent, retain_graph=True)
            cotangent[:, f] = 0
            row_norms[:, f] = torch.linalg.vector_norm(rows.flatten(1), dim=1)
        ratios = row_norms / features.detach().abs()
        # a feature that is zero for some example (dead ReLU) has an infinite ratio and is kept, as 0/0 is
        ratios = torch.nan_to_num(ratios, nan=math.inf)
        return ratios.sum(dim=0)

    def apply(self, batch: ClientBatch, generator: torch.Generator) -> Gradients:
        _, index = classifier_index(batch.model)
        scores = self.scores(batch.model, batch.inputs)
        capped = scores.double().clamp(max=torch.finfo(torch.float64).max)  # quantile cannot interpolate inf
        keep = (capped >= torch.quantile(capped, self.p)).to(batch.gradients[index].dtype)
        gradients = list(batch.gradients)
        gradients[index] = gradients[index] * keep.unsqueeze(0)
        return tuple(gradients)


def privacy_of(defence: Defence) -> dict[str, float]:
    """The (epsilon, delta) a defence reports (DP-SGD), else nothing."""
    report = getattr(defence, "privacy", None)
    return report() if report is not None else {}


def defence_config(settings: Mapping[str, Any]) -> dict[str, Any]:
    """A run's ``defence`` node (``none`` when the settings have none)."""
    return dict(settings.get("defence") or {"name": "none"})


def defence_key(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The defence's part of the trial key: nothing for an undefended trial without training cost (keys unchanged)."""
    part = trial_key_part(defence_from_config(defence_config(settings))[1])
    training = dict(settings.get("defence_training") or {})
    if training.get("steps"):
        part["defence_training"] = training
    return part
