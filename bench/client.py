"""The client: computes the update the attacker observes, and what crosses over.

How it computes its update is a registered client (config group ``client``): ``fedsgd`` sends one gradient of
its batch, ``fedavg`` sends the weight difference after local SGD steps (docs/fedavg.md).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal, Protocol, TypeVar

import torch
from torch import Tensor, nn

from bench.defences import ClientBatch, Defence, cosine, describe
from bench.errors import UserError
from methods.base import NotApplicableError, Observation, UpdateDescription
from methods.fedavg import LocalTraining, shuffled_minibatches, weight_difference
from methods.optimise import model_gradients
from methods.registry import Registry, UnknownNameError


class Client(Protocol):
    """How a client turns its (normalised) batch into the update it sends, and how the attacker may describe it.

    ``from_config`` builds it from its config node's parameters for a batch of ``batch_size`` images (``ValueError``
    on bad input); ``update`` draws any randomness from ``generator`` only.
    """

    name: ClassVar[str]

    @classmethod
    def from_config(cls, params: Mapping[str, Any], batch_size: int) -> Client: ...

    def update(
        self, model: nn.Module, inputs: Tensor, labels: Tensor, generator: torch.Generator | None
    ) -> tuple[tuple[Tensor, ...], UpdateDescription | None]: ...


ClientT = TypeVar("ClientT", bound=type)
CLIENTS: Registry[type] = Registry("client")


def register_client(name: str) -> Callable[[ClientT], ClientT]:
    """Class decorator adding a client (a dataclass whose fields are its public hyper-parameters) under ``name``."""

    def wrap(cls: ClientT) -> ClientT:
        cls.name = name
        CLIENTS.add(name, cls)
        return cls

    return wrap


@register_client("fedsgd")
@dataclass(frozen=True)
class FedSGD:
    """One gradient of the mean cross-entropy of the whole batch: the setting of every paper in methods/."""

    @classmethod
    def from_config(cls, params: Mapping[str, Any], batch_size: int) -> FedSGD:
        given = sorted(k for k, v in params.items() if v is not None)
        if given:
            raise ValueError(f"client=fedsgd takes no parameters, got {', '.join(given)}; use client=fedavg")
        return cls()

    def update(
        self, model: nn.Module, inputs: Tensor, labels: Tensor, generator: torch.Generator | None
    ) -> tuple[tuple[Tensor, ...], UpdateDescription | None]:
        return tuple(g.detach() for g in model_gradients(model, inputs, labels, create_graph=False)), None


@register_client("fedavg")
@dataclass(frozen=True)
class FedAvg:
    """``local_steps`` SGD steps of ``local_lr`` on mini-batches of ``local_batch_size`` images, a fresh shuffle of
    the batch every epoch (from ``generator``, seeded from the trial seed); sends ``w_after - w_before``."""

    local_steps: int
    local_lr: float
    local_batch_size: int
    num_samples: int

    PARAMETERS: ClassVar[tuple[str, ...]] = ("local_steps", "local_epochs", "local_lr", "local_batch_size")

    @classmethod
    def from_config(cls, params: Mapping[str, Any], batch_size: int) -> FedAvg:
        """``local_batch_size`` null means the whole batch; ``local_epochs``, when set, replaces ``local_steps`` by
        ``local_epochs * ceil(batch_size / local_batch_size)`` steps."""
        unknown = sorted(set(params) - set(cls.PARAMETERS))
        if unknown:
            takes = ", ".join(cls.PARAMETERS)
            raise ValueError(f"client 'fedavg' has no parameter {', '.join(unknown)}; it takes {takes}")
        local_batch_size = batch_size if params.get("local_batch_size") is None else params["local_batch_size"]
        if local_batch_size > batch_size:
            raise ValueError(
                f"client.local_batch_size={local_batch_size} is larger than batch_size={batch_size}: the client draws "
                f"its mini-batches from its own images; give client.local_batch_size <= {batch_size}"
            )
        steps = 1 if params.get("local_steps") is None else params["local_steps"]
        if params.get("local_epochs") is not None:
            steps = params["local_epochs"] * -(-batch_size // local_batch_size)
        if params.get("local_lr") is None:
            raise ValueError("client=fedavg needs a learning rate; give client.local_lr, e.g. client.local_lr=0.1")
        client = cls(steps, float(params["local_lr"]), local_batch_size, batch_size)
        client.training()  # checks the numbers once, here, so that a bad one is an error before any work
        return client

    def training(self) -> LocalTraining:
        return LocalTraining(self.local_steps, self.local_lr, self.local_batch_size, self.num_samples)

    def update(
        self, model: nn.Module, inputs: Tensor, labels: Tensor, generator: torch.Generator | None
    ) -> tuple[tuple[Tensor, ...], UpdateDescription | None]:
        if generator is None:
            raise ValueError("a fedavg client needs client_generator, a torch.Generator seeded from the trial seed")
        training = self.training()
        steps = [indices.to(inputs.device) for indices in shuffled_minibatches(training, generator)]
        difference = weight_difference(model, inputs, labels, steps, self.local_lr)
        return tuple(d.detach() for d in difference), training.describe()


def client_config(settings: Mapping[str, Any]) -> dict[str, Any]:
    """A run's ``client`` node (``fedsgd`` when the settings have none)."""
    return dict(settings.get("client") or {"name": "fedsgd"})


def build_client(config: Mapping[str, Any], batch_size: int) -> Client:
    """The configured client (``conf/client/<name>.yaml``) for a batch of ``batch_size`` images; bad input is a
    one-line ``UserError``."""
    name = str(config.get("name", "fedsgd"))
    try:
        cls = CLIENTS.get(name)
    except UnknownNameError as error:
        raise UserError(str(error)) from None
    try:
        return cls.from_config({k: v for k, v in config.items() if k != "name"}, batch_size)
    except ValueError as error:
        raise UserError(str(error)) from None


def client_key(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The client's part of the trial key: nothing for ``fedsgd``, so FedSGD trials keep the keys they had."""
    client = build_client(client_config(settings), settings["batch_size"])
    if isinstance(client, FedSGD):
        return {}
    return {"client": {"name": client.name, **asdict(client)}}


def client_fields(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The record's client columns (none for ``fedsgd``, whose records stay as they were)."""
    part = client_key(settings).get("client")
    if part is None:
        return {}
    return {"client": part["name"], **{k: v for k, v in part.items() if k not in ("name", "num_samples")}}


def freeze_running_statistics(model: nn.Module) -> nn.Module:
    """Stop BatchNorm layers from updating their running statistics.

    In train mode the forward pass still normalises with batch statistics exactly
    as the client's did, but the buffers are never written, so dummy forward
    passes (also under ``torch.func.vmap``) leave the global model untouched.
    In eval mode the running statistics are used as usual.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.track_running_stats = False
    return model


@dataclass(frozen=True)
class ClientRound:
    """A round as the harness sees it: what crossed over, and what the defence cost (never shown to the attacker)."""

    observation: Observation
    undefended: tuple[Tensor, ...]
    # cosine similarity of the defended to the undefended update (1 without a defence)
    update_cosine: float


def client_update(
    model: nn.Module,
    images_unit: Tensor,
    labels: Tensor,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    num_classes: int,
    mode: Literal["train", "eval"] = "train",
    labels_known: bool = False,
    defence: Defence | None = None,
    defence_generator: torch.Generator | None = None,
    client: Client | None = None,
    client_generator: torch.Generator | None = None,
) -> Observation:
    """One client's round: by default (FedSGD) the gradient of the mean cross-entropy of its batch.

    Returns what the attacker sees: a copy of the global model (in the client's mode,
    with frozen BN statistics), the update (after ``defence``, if any) and the public
    metadata; the labels only when the threat model grants them. The images never cross over.
    """
    return client_round(
        model,
        images_unit,
        labels,
        mean=mean,
        std=std,
        num_classes=num_classes,
        mode=mode,
        labels_known=labels_known,
        defence=defence,
        defence_generator=defence_generator,
        client=client,
        client_generator=client_generator,
    ).observation


def client_round(
    model: nn.Module,
    images_unit: Tensor,
    labels: Tensor,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    num_classes: int,
    mode: Literal["train", "eval"] = "train",
    labels_known: bool = False,
    defence: Defence | None = None,
    defence_generator: torch.Generator | None = None,
    client: Client | None = None,
    client_generator: torch.Generator | None = None,
) -> ClientRound:
    """``client_update`` that also returns the undefended update and the defence's utility cost.

    ``defence_generator`` (CPU) is the defence's only source of randomness, ``client_generator`` (CPU) the
    client's (FedAvg's shuffle); the runner seeds both from the trial seed.
    """
    client = client if client is not None else FedSGD()
    if not isinstance(client, FedSGD) and defence is not None and not getattr(defence, "update_only", False):
        raise NotApplicableError(
            f"defence {defence.name!r} with client={client.name}: it acts on the FedSGD gradient of the batch, not on "
            "a weight difference (docs/fedavg.md); on fedavg use an update-level defence (clip, gaussian, prune, "
            "quantise), or client=fedsgd"
        )
    attacker_model = freeze_running_statistics(copy.deepcopy(model)).train(mode == "train")
    for param in attacker_model.parameters():
        param.requires_grad_(True)
    client_model = freeze_running_statistics(copy.deepcopy(model)).train(mode == "train")
    shape = (1, len(mean), 1, 1)
    normalised = (images_unit - torch.tensor(mean, device=images_unit.device).view(shape)) / torch.tensor(
        std, device=images_unit.device
    ).view(shape)
    gradients, update = client.update(client_model, normalised, labels, client_generator)
    undefended, description = gradients, None
    if defence is not None:
        if defence_generator is None:
            raise ValueError("a defence needs defence_generator, a torch.Generator seeded from the trial seed")
        batch = ClientBatch(model=client_model, inputs=normalised, labels=labels, gradients=gradients)
        gradients = tuple(g.detach() for g in defence.apply(batch, defence_generator))
        description = describe(defence)
    observation = Observation(
        model=attacker_model,
        gradients=gradients,
        batch_size=images_unit.shape[0],
        image_shape=tuple(images_unit.shape[1:]),
        num_classes=num_classes,
        mean=tuple(mean),
        std=tuple(std),
        labels=labels.clone() if labels_known else None,
        defence=description,
        update=update,
    )
    return ClientRound(observation, undefended, cosine(gradients, undefended) if defence is not None else 1.0)
