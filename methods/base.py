"""The attack interface: what an attacker sees, what it returns, and the registry.

Ground truth never reaches an attack: ``Observation`` carries only what the
threat model grants (the model, the exposed gradients, shapes, normalisation
and, in the "labels known" threat model, the labels). Scoring lives in ``bench``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar

import torch
from torch import Tensor, nn


class NotApplicableError(ValueError):
    """The method or strategy does not apply to this observation (e.g. a B=1 rule at B=8); a sweep records a skip."""


class GradientError(ValueError):
    """The exposed gradients cannot be attacked as given (NaN, inf, wrong shapes)."""


@dataclass(frozen=True)
class DefenceDescription:
    """Which defence the client applied and its parameters (what the attacker knows; never its randomness)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Observation:
    """Everything the attacker receives from one FedSGD round of one client.

    ``gradients`` follow ``model.parameters()`` order (trainable parameters only)
    and are the gradients of the *mean* cross-entropy over the client's batch, after
    the client's ``defence`` when there is one (then they may be noisy, sparse, etc.).
    ``model`` is the attacker's copy of the global model, in the same train/eval
    mode the client used; its BatchNorm running statistics are frozen so that
    dummy forward passes do not change them.
    """

    model: nn.Module
    gradients: tuple[Tensor, ...]
    batch_size: int
    image_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    labels: Tensor | None = None
    # the defence applied to ``gradients`` before they crossed over (None: no defence); docs/defences.md
    defence: DefenceDescription | None = None

    def __post_init__(self) -> None:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if len(params) != len(self.gradients):
            raise GradientError(
                f"got {len(self.gradients)} gradients for a model with {len(params)} trainable parameters; "
                "pass one gradient per parameter in model.parameters() order"
            )
        for index, (param, grad) in enumerate(zip(params, self.gradients, strict=True)):
            if param.shape != grad.shape:
                raise GradientError(
                    f"gradient {index} has shape {tuple(grad.shape)} but its parameter has {tuple(param.shape)}; "
                    "the gradients do not belong to this model"
                )
        if not all(bool(torch.isfinite(g).all()) for g in self.gradients):
            raise GradientError("the exposed gradients contain NaN or inf; there is nothing to invert")

    @property
    def device(self) -> torch.device:
        return self.gradients[0].device

    def normalise(self, images_unit: Tensor) -> Tensor:
        """Map images in [0,1] to the model's input space."""
        mean, std = self._stats(images_unit)
        return (images_unit - mean) / std

    def denormalise(self, images_model: Tensor) -> Tensor:
        """Map model-space images back to [0,1] (not clamped)."""
        mean, std = self._stats(images_model)
        return images_model * std + mean

    def input_box(self) -> tuple[Tensor, Tensor]:
        """Per-channel bounds of valid images in model space, shaped (1,C,1,1)."""
        zero = torch.zeros(1, self.image_shape[0], 1, 1, device=self.device)
        return self.normalise(zero), self.normalise(zero + 1)

    def _stats(self, like: Tensor) -> tuple[Tensor, Tensor]:
        shape = (1, len(self.mean), 1, 1)
        mean = torch.tensor(self.mean, dtype=like.dtype, device=like.device).view(shape)
        std = torch.tensor(self.std, dtype=like.dtype, device=like.device).view(shape)
        return mean, std


@dataclass(frozen=True)
class TracePoint:
    iteration: int
    seconds: float
    objective: float


@dataclass
class Reconstruction:
    """What an attack returns: images in [0,1] shaped (B,C,H,W) and labels shaped (B,)."""

    images: Tensor
    labels: Tensor
    trace: list[TracePoint] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)


ProgressCallback = Callable[[int, float, Tensor], None]
"""Called as ``callback(iteration, seconds, images_in_unit_range)`` every few iterations.

Time spent inside the callback is not counted in the attack's seconds.
"""


class Attack(Protocol):
    """A gradient inversion attack. Build it from keyword config, then call ``reconstruct``."""

    name: ClassVar[str]
    paper: ClassVar[str]

    def reconstruct(
        self,
        observation: Observation,
        *,
        generator: torch.Generator,
        callback: ProgressCallback | None = None,
        callback_every: int = 0,
        progress: bool = False,
    ) -> Reconstruction: ...


AttackT = TypeVar("AttackT", bound=type)
_METHODS: dict[str, type] = {}


def register_method(name: str | None = None) -> Callable[[AttackT], AttackT]:
    """Class decorator that adds an attack to the registry under ``name`` (default: ``cls.name``)."""

    def wrap(cls: AttackT) -> AttackT:
        key = name or cls.name
        if key in _METHODS and _METHODS[key] is not cls:
            raise ValueError(f"a method named {key!r} is already registered ({_METHODS[key].__qualname__})")
        cls.name = key
        _METHODS[key] = cls
        return cls

    return wrap


def list_methods() -> list[str]:
    return sorted(_METHODS)


class UnknownNameError(KeyError):
    """A registry lookup failed; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def get_method_class(name: str) -> type:
    try:
        return _METHODS[name]
    except KeyError:
        raise UnknownNameError(f"unknown method {name!r}; registered methods: {', '.join(list_methods())}") from None


def get_method(name: str, **config: Any) -> Attack:
    """Build the registered attack ``name`` from keyword config."""
    return get_method_class(name)(**config)
