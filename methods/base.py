"""The attack interface: what an attacker sees, what it returns, and the registry.

Ground truth never reaches an attack: ``Observation`` carries only what the
threat model grants (the model, the exposed gradients, shapes, normalisation
and, in the "labels known" threat model, the labels). Scoring lives in ``bench``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, TypeVar

import torch
from torch import Tensor, nn

from methods.options import check_options, option_fields, resolve_options
from methods.registry import Registry, UnknownNameError  # noqa: F401  (re-exported: every registry's lookup error)


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
class UpdateDescription:
    """What kind of update crossed over, and the client's public hyper-parameters (docs/fedavg.md).

    ``gradient``: one FedSGD gradient of the mean cross-entropy. ``weight_difference``: FedAvg's
    ``w_after - w_before`` (what the server adds to the global model) after ``local_steps`` SGD steps
    of ``local_lr`` on mini-batches of ``local_batch_size`` of the client's ``num_samples`` images.
    The attacker knows these numbers, never the order in which the client shuffled its images.
    """

    kind: Literal["gradient", "weight_difference"] = "gradient"
    local_steps: int = 1
    local_lr: float = 1.0
    local_batch_size: int = 1
    num_samples: int = 1


@dataclass(frozen=True)
class Observation:
    """Everything the attacker receives from one round of one client.

    ``gradients`` follow ``model.parameters()`` order (trainable parameters only). Without ``update``
    (or with ``update.kind == "gradient"``) they are the gradients of the *mean* cross-entropy over the
    client's batch (FedSGD); with ``update.kind == "weight_difference"`` they are FedAvg's weight
    difference ``w_after - w_before`` (docs/fedavg.md), which only methods declaring
    ``accepts_weight_differences`` are given. Either comes after the client's ``defence`` when there is
    one (then they may be noisy, sparse, etc.).
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
    # FedAvg's weight difference and its public hyper-parameters; None: a FedSGD gradient (docs/fedavg.md)
    update: UpdateDescription | None = None

    @property
    def is_weight_difference(self) -> bool:
        return self.update is not None and self.update.kind == "weight_difference"

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
    # gradient evaluations so far (methods.budget): G batches side by side count G, L-BFGS line searches count
    evaluations: int = 0


@dataclass
class Reconstruction:
    """What an attack returns: images in [0,1] shaped (B,C,H,W) and labels shaped (B,)."""

    images: Tensor
    labels: Tensor
    trace: list[TracePoint] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)


def draw(kind: str, shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    """``torch.rand`` or ``torch.randn`` drawn on the generator's device, then moved to ``device``.

    The runner passes a CPU generator, so a seed means the same starting images on every device.
    """
    sample = {"rand": torch.rand, "randn": torch.randn}[kind]
    return sample(shape, generator=generator, device=generator.device).to(device)


def device_generator(generator: torch.Generator, device: torch.device) -> torch.Generator:
    """``generator`` itself on its own device; elsewhere a generator on ``device`` seeded from it.

    For per-iteration noise: drawing on another device and copying would cost a transfer every step.
    """
    if torch.device(generator.device).type == torch.device(device).type:
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    return torch.Generator(device=device).manual_seed(seed)


ProgressCallback = Callable[[int, float, Tensor], None]
"""Called as ``callback(iteration, seconds, images_in_unit_range)`` every few iterations.

Time spent inside the callback is not counted in the attack's seconds.
"""


class Attack(Protocol):
    """A gradient inversion attack: the contract every registered method honours.

    - It is a dataclass whose fields are its options (``methods.options.option`` adds a range and a help line);
      an ``iterations`` field sets its budget. Construction checks every option against its declared type
      and range, so a bad value fails before any work.
    - ``profiles`` names budgets as overrides of the defaults: ``quick`` (CPU) and ``paper`` (the paper's).
    - ``name`` is its registry key (= its docs page ``docs/methods/<name>.md`` = its results rows);
      ``paper`` cites it; ``reference`` marks a floor that uses no gradient for its images (``noise``, ``mean``).
    - ``accepts_weight_differences`` (default False) says it can attack a FedAvg weight difference
      (docs/fedavg.md); otherwise such an observation raises ``NotApplicableError`` before ``reconstruct`` runs.
    - ``reconstruct`` sees only the ``Observation``, draws all randomness from ``generator``, calls
      ``callback`` every ``callback_every`` iterations and returns a ``Reconstruction`` in [0, 1].
    """

    name: ClassVar[str]
    paper: ClassVar[str]
    profiles: ClassVar[dict[str, dict[str, Any]]]
    reference: ClassVar[bool]
    accepts_weight_differences: ClassVar[bool]

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
METHODS: Registry[type] = Registry("method")


def register_method(name: str | None = None) -> Callable[[AttackT], AttackT]:
    """Class decorator that adds an attack to the registry under ``name`` (default: ``cls.name``).

    Registration also makes construction check every option against its declared type and range
    (``methods.options.check_options``) before the class's own ``__post_init__`` runs.
    """

    def wrap(cls: AttackT) -> AttackT:
        key = name or cls.name
        cls.name = key
        if not hasattr(cls, "reference"):
            cls.reference = False
        if not hasattr(cls, "accepts_weight_differences"):
            cls.accepts_weight_differences = False  # safe default: a gradient-only method is skipped, never misfed
        if "_checks_update" not in vars(cls):
            cls.reconstruct = _refusing_weight_differences(cls.reconstruct)
            cls._checks_update = True
        if dataclasses.is_dataclass(cls) and "_checks_options" not in vars(cls):
            # wrap __init__ (the dataclass only calls a __post_init__ that existed when it was decorated)
            init = cls.__init__

            @functools.wraps(init)
            def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
                init(self, *args, **kwargs)
                if type(self) is cls:  # once, by the class itself (a registered subclass checks its own)
                    check_options(cls, {f: getattr(self, f) for f in option_fields(cls)})

            cls.__init__ = __init__
            cls._checks_options = True
        METHODS.add(key, cls)
        return cls

    return wrap


def require_understood_update(method: type | object, observation: Observation) -> None:
    """Raise ``NotApplicableError`` when ``observation`` holds a weight difference ``method`` does not understand."""
    if observation.is_weight_difference and not getattr(method, "accepts_weight_differences", False):
        name = getattr(method, "name", type(method).__name__)
        raise NotApplicableError(
            f"method {name!r} matches gradients only and the client sent a FedAvg weight difference "
            f"(client=fedavg); use client=fedsgd, or a method that simulates local steps (docs/fedavg.md)"
        )


def _refusing_weight_differences(reconstruct: Callable[..., Reconstruction]) -> Callable[..., Reconstruction]:
    @functools.wraps(reconstruct)
    def checked(self: Any, observation: Observation, *args: Any, **kwargs: Any) -> Reconstruction:
        require_understood_update(self, observation)
        return reconstruct(self, observation, *args, **kwargs)

    return checked


def list_methods() -> list[str]:
    return METHODS.names()


def get_method_class(name: str) -> type:
    return METHODS.get(name)


def is_reference(method: type | object) -> bool:
    """Whether an attack class (or instance) is a reference floor rather than an attack."""
    return bool(getattr(method, "reference", False))


def get_method(name: str, **config: Any) -> Attack:
    """Build the registered attack ``name`` from keyword config (unset options keep their defaults)."""
    return get_method_class(name)(**config)


def build_method(name: str, profile: str, overrides: Mapping[str, Any] | None = None) -> Attack:
    """Build attack ``name`` at ``profile``'s budget with ``overrides`` on top: how the runner builds every attack."""
    cls = get_method_class(name)
    return cls(**resolve_options(cls, profile, overrides))
