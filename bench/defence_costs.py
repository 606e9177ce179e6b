"""What a defence costs the client, recorded next to what it saves: the defended update's cosine similarity to
the undefended one, DP-SGD's (epsilon, delta) for the round, and the held-out accuracy after a short local training
run with the defence applied to every step (through ``bench.training.prepare_model``'s cached training runs)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bench.client import ClientRound
from bench.data import ImageDataset
from bench.defences import ClientBatch, Defence, defence_from_config, privacy_of
from bench.training import prepare_model
from methods.base import DefenceDescription

# every HELD_OUT_EVERY-th image of the dataset is held out for the accuracy; the rest may be trained on
HELD_OUT_EVERY = 5
MAX_IMAGES = 5000
# the Soteria mask needs one backward pass per representation feature, at every training step
NOT_TRAINED = {"soteria": "not measured: Soteria's Jacobian costs one backward pass per feature at every step"}


def split(count: int) -> tuple[Tensor, Tensor]:
    """Training and held-out indices of the first ``MAX_IMAGES`` images."""
    indices = torch.arange(min(count, MAX_IMAGES))
    held_out = indices % HELD_OUT_EVERY == HELD_OUT_EVERY - 1
    return indices[~held_out], indices[held_out]


def strength_of(config: Mapping[str, Any], description: DefenceDescription) -> tuple[str | None, Any]:
    """The defence's swept parameter (the one under ``strengths`` in its config) and its value."""
    names = list((config.get("strengths") or {}).keys())
    if not names:
        return None, None
    return names[0], description.params.get(names[0])


def accuracy(model: nn.Module, images: Tensor, labels: Tensor, mean: Tensor, std: Tensor) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, images.shape[0], 256):
            x = (images[start : start + 256] - mean) / std
            correct += int((model(x).argmax(dim=1) == labels[start : start + 256]).sum())
    return correct / max(images.shape[0], 1)


def defended_train_accuracy(
    defence: Defence,
    description: DefenceDescription,
    *,
    model_name: str,
    model_kwargs: Mapping[str, Any],
    dataset: ImageDataset,
    seed: int,
    defence_seed: int,
    cache_dir: Path,
    steps: int,
    batch: int,
    lr: float,
) -> float:
    """Held-out accuracy of the seeded model after ``steps`` SGD steps with ``defence`` applied to every step."""
    train, held_out = split(len(dataset))
    train_images, train_labels = dataset.batch(train)
    generator = torch.Generator().manual_seed(defence_seed)

    def defend(model: nn.Module, inputs: Tensor, labels: Tensor) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        grads = tuple(p.grad if p.grad is not None else torch.zeros_like(p) for p in params)
        defended = defence.apply(ClientBatch(model=model, inputs=inputs, labels=labels, gradients=grads), generator)
        for param, grad in zip(params, defended, strict=True):
            param.grad = grad.detach()

    transformed = description.name != "none"
    model = prepare_model(
        model_name,
        state="trained",
        num_classes=dataset.num_classes,
        image_shape=dataset.image_shape,
        seed=seed,
        train_images=train_images,
        train_labels=train_labels,
        mean=dataset.mean,
        std=dataset.std,
        cache_dir=cache_dir,
        train_steps=steps,
        train_batch=batch,
        lr=lr,
        step_transform=defend if transformed else None,
        step_transform_key={"defence": description.name, **description.params, "seed": defence_seed}
        if transformed
        else None,
        **model_kwargs,
    )
    test_images, test_labels = dataset.batch(held_out)
    shape = (1, len(dataset.mean), 1, 1)
    mean, std = torch.tensor(dataset.mean).view(shape), torch.tensor(dataset.std).view(shape)
    return accuracy(model, test_images, test_labels, mean, std)


def defence_fields(
    config: Mapping[str, Any],
    round_: ClientRound,
    *,
    training: Mapping[str, Any],
    model_name: str,
    model_kwargs: Mapping[str, Any],
    dataset: ImageDataset,
    seed: int,
    defence_seed: int,
    cache_dir: Path,
) -> dict[str, Any]:
    """The record's defence columns: name, parameters, swept strength, utility and privacy, training cost."""
    defence, description = defence_from_config(config)
    parameter, value = strength_of(config, description)
    fields: dict[str, Any] = {
        "defence": description.name,
        "defence_params": dict(description.params),
        "defence_parameter": parameter,
        "defence_strength": value,
        "update_cosine": round_.update_cosine,
        **privacy_of(defence),
    }
    steps = int(training.get("steps") or 0)
    if steps > 0:
        if description.name in NOT_TRAINED:
            fields["defended_train_accuracy"] = math.nan
            fields["defended_train_note"] = NOT_TRAINED[description.name]
        else:
            fields["defended_train_accuracy"] = defended_train_accuracy(
                defence,
                description,
                model_name=model_name,
                model_kwargs=model_kwargs,
                dataset=dataset,
                seed=seed,
                defence_seed=defence_seed,
                cache_dir=cache_dir,
                steps=steps,
                batch=int(training["batch"]),
                lr=float(training["lr"]),
            )
    return fields
