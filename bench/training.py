"""Short seeded training runs and their cache: the ``trained`` model state (and ``trained@E``, ``bench.stage``).

A run is SGD with momentum on the dataset's first images; its result is cached under a key of every input that
changes the weights, written atomically and loaded back with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.errors import UserError
from bench.models import build_model, check_image_shape, load_state_dict_checked

# Bump when the training recipe changes so that stale cached checkpoints are not reused.
TRAIN_RECIPE_VERSION = 1


def _channel_stats(value: Any, channels: int, what: str) -> Tensor:
    t = torch.as_tensor(value, dtype=torch.float32).flatten()
    if t.numel() not in (1, channels):
        raise UserError(f"{what} must have 1 or {channels} values, got {t.numel()}")
    return t.expand(channels).clone().view(channels, 1, 1)


def _sha256(t: Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def _cache_key(payload: Mapping[str, Any]) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _derived_seed(seed: int, purpose: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{purpose}".encode()).digest()[:8], "little") >> 1


StepTransform = Callable[[nn.Module, Tensor, Tensor], None]
"""Rewrites the ``.grad`` of the model's parameters in place after each training step's backward pass, given the
model, the step's normalised inputs and labels (e.g. a client-side defence applied to every step)."""


@dataclass
class TrainingProgress:
    """Where a training run stands between two steps, so that a run continued from it takes exactly the steps an
    uninterrupted run would have taken: the optimiser's momentum buffers (None before the first step) and the batch
    sampler's generator state, current permutation and position in it."""

    steps: int
    momentum: list[Tensor] | None
    generator_state: Tensor
    order: Tensor
    position: int

    def to_tensors(self) -> dict[str, Any]:
        """Plain tensors and lists of them: loadable with ``torch.load(weights_only=True)``."""
        return {
            "steps": torch.tensor(self.steps),
            "momentum": [m.detach().cpu().clone() for m in self.momentum] if self.momentum is not None else [],
            "generator_state": self.generator_state.clone(),
            "order": self.order.clone(),
            "position": torch.tensor(self.position),
        }

    @classmethod
    def from_tensors(cls, state: Mapping[str, Any]) -> TrainingProgress:
        momentum = list(state["momentum"])
        return cls(
            steps=int(state["steps"]),
            momentum=momentum or None,
            generator_state=state["generator_state"],
            order=state["order"],
            position=int(state["position"]),
        )


def train_model(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    mean: Tensor,
    std: Tensor,
    *,
    seed: int,
    steps: int,
    batch: int,
    lr: float,
    step_transform: StepTransform | None = None,
    start: TrainingProgress | None = None,
) -> TrainingProgress:
    """``steps`` more steps of SGD (momentum 0.9, cross-entropy on ``(x - mean) / std``, random horizontal flips,
    mini-batches of ``batch`` from a fresh permutation whenever the current one has fewer than ``batch`` left), from
    ``start`` (a ``model`` and progress saved by an earlier call) or from the beginning; returns where it stopped."""
    # A separate stream from the initialisation generator, so batch order and init are not correlated; it stays on
    # the CPU, so the batches and flips are the same on every device (the arithmetic is the device's).
    generator = torch.Generator().manual_seed(_derived_seed(seed, "train"))
    device = next(model.parameters()).device
    images, labels, mean, std = (t.to(device) for t in (images, labels, mean, std))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    n = images.shape[0]
    batch = min(batch, n)
    order, pos, done = torch.empty(0, dtype=torch.long), 0, 0
    if start is not None:
        generator.set_state(start.generator_state)
        order, pos, done = start.order.clone(), start.position, start.steps
        if start.momentum is not None:
            for param, buffer in zip(model.parameters(), start.momentum, strict=True):
                optimizer.state[param]["momentum_buffer"] = buffer.to(device).clone()
    model.train()
    for _ in range(steps):
        if pos + batch > order.numel():
            order, pos = torch.randperm(n, generator=generator), 0
        idx = order[pos : pos + batch].to(device)
        pos += batch
        x = images[idx]
        flip = (torch.rand(batch, generator=generator) < 0.5).to(device)
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        inputs = (x - mean) / std
        loss = F.cross_entropy(model(inputs), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if step_transform is not None:
            step_transform(model, inputs, labels[idx])
        optimizer.step()
    buffers = [optimizer.state[p].get("momentum_buffer") for p in model.parameters()]
    return TrainingProgress(
        steps=done + steps,
        momentum=None if any(b is None for b in buffers) else [b.detach().cpu().clone() for b in buffers],
        generator_state=generator.get_state(),
        order=order,
        position=pos,
    )


def prepare_model(
    name: str,
    *,
    state: Literal["untrained", "trained"],
    num_classes: int,
    image_shape: Sequence[int],
    seed: int,
    train_images: Tensor | None = None,
    train_labels: Tensor | None = None,
    mean: Sequence[float] | float | Tensor | None = None,
    std: Sequence[float] | float | Tensor | None = None,
    cache_dir: Path | str | None = None,
    train_steps: int = 200,
    train_batch: int = 32,
    lr: float = 0.05,
    step_transform: StepTransform | None = None,
    step_transform_key: Any = None,
    device: torch.device | str = "cpu",
    data_identity: Mapping[str, Any] | None = None,
    **model_kwargs: Any,
) -> nn.Module:
    """The model an attack is run against, in eval mode (the caller picks train/eval mode for its threat model).

    ``untrained``: ``build_model`` with ``seed``. ``trained``: the seeded model after ``train_steps`` steps of
    SGD (momentum 0.9, cross-entropy on ``(x - mean) / std``, random horizontal flips) on ``train_images``
    ((N, C, H, W) in [0, 1]) and ``train_labels`` ((N,)), cached in ``cache_dir`` under a key of every input.
    Training runs on ``device``; the cache key names the training data by ``data_identity`` when given (e.g. the
    dataset's spec), else by a hash of the pixels.
    ``step_transform`` changes every step's gradients; ``step_transform_key`` (JSON-able) must then name it in
    the cache key.
    """
    shape = check_image_shape(image_shape)
    model = build_model(name, num_classes=num_classes, image_shape=shape, seed=seed, **model_kwargs)
    if state == "untrained":
        return model.eval()
    if state != "trained":
        raise UserError(
            f"model state must be 'untrained' or 'trained' (trained@E: bench.stage.prepare_stage), got {state!r}"
        )
    if train_images is None or train_labels is None:
        raise UserError("model state 'trained' needs training images and labels; use state=untrained otherwise")
    if mean is None or std is None or cache_dir is None:
        raise UserError("model state 'trained' needs mean, std and cache_dir")
    images = train_images.detach().to("cpu", torch.float32).contiguous()
    labels = train_labels.detach().to("cpu", torch.long).contiguous()
    if images.dim() != 4 or tuple(images.shape[1:]) != shape:
        raise UserError(f"training images must have shape (N, {', '.join(map(str, shape))}), got {tuple(images.shape)}")
    if labels.shape != (images.shape[0],):
        raise UserError(f"training labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
    if images.shape[0] == 0:
        raise UserError("model state 'trained' needs at least one training image")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise UserError(f"training labels must lie in [0, {num_classes - 1}], got {labels.min()}..{labels.max()}")
    if int(train_steps) < 1 or int(train_batch) < 1 or not float(lr) > 0:
        raise UserError(f"need train_steps >= 1, train_batch >= 1, lr > 0; got {train_steps}, {train_batch}, {lr}")
    mean_t = _channel_stats(mean, shape[0], "mean")
    std_t = _channel_stats(std, shape[0], "std")
    if (std_t <= 0).any():
        raise UserError(f"std must be positive, got {std_t.flatten().tolist()}")

    if step_transform is not None and step_transform_key is None:
        raise ValueError("a step_transform needs a step_transform_key naming it in the cache key")
    # only a transformed run adds its key, so that plain runs keep their cached checkpoints
    transform_entry = {"step_transform": step_transform_key} if step_transform is not None else {}
    key = _cache_key(
        {
            **transform_entry,
            "recipe": TRAIN_RECIPE_VERSION,
            "name": name,
            "model_kwargs": dict(model_kwargs),
            "num_classes": int(num_classes),
            "image_shape": list(shape),
            "seed": int(seed),
            "train_steps": int(train_steps),
            "train_batch": int(train_batch),
            "lr": float(lr),
            "mean": mean_t.flatten().tolist(),
            "std": std_t.flatten().tolist(),
            # the dataset's identity when the caller knows it (its spec): hashing the pixels of a large dataset
            # costs minutes; otherwise the pixels themselves
            "data": {
                "n": images.shape[0],
                **(
                    {"identity": dict(data_identity)}
                    if data_identity is not None
                    else {"images": _sha256(images), "labels": _sha256(labels)}
                ),
            },
            # training on another device gives other weights: CUDA-trained models have their own entries
            **({"device": torch.device(device).type} if torch.device(device).type != "cpu" else {}),
        }
    )
    cache_dir = Path(cache_dir)
    path = cache_dir / f"{name}-{key}.pt"
    if path.exists():
        print(f"[models] loading trained {name} from {path}", file=sys.stderr, flush=True)
        return load_state_dict_checked(model, path, name).eval()

    print(
        f"[models] training {name} for {int(train_steps)} steps on {images.shape[0]} images; caching at {path}",
        file=sys.stderr,
        flush=True,
    )
    model.to(device)
    train_model(
        model,
        images,
        labels,
        mean_t,
        std_t,
        seed=int(seed),
        steps=int(train_steps),
        batch=int(train_batch),
        lr=lr,
        step_transform=step_transform,
    )
    model.eval()
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return model
