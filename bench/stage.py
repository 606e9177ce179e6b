"""The training stage: models at checkpoints along one seeded training run (``model.state=trained@E``), each with
its accuracy on held-out images.

``trained@E`` is the trial's seeded model (``build_model`` with its seed) after E epochs of one training run
(``bench.training.train_model``) on the training split of the dataset (``bench.defence_costs.split``: of the first
5000 images, every fifth is held out, the rest are trained on); ``trained@0`` is that run's initialisation. An
epoch is one pass over a fresh permutation of the training split in mini-batches of ``train_batch`` (the incomplete
last batch is dropped), so E epochs are E x (n // train_batch) steps and every epoch starts a new permutation.

Every checkpoint E >= 1 is cached under a key of everything that changes the run's weights (not E), with the
optimiser's momentum and the sampler's state next to it; a request for E continues from the latest cached
checkpoint before E, which takes exactly the steps a run from scratch takes (``tests/test_stage.py``). docs/stage.md.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench import records as rec
from bench.data import ImageDataset
from bench.defence_costs import accuracy, split
from bench.errors import UserError
from bench.models import build_model, load_state_dict_checked
from bench.training import TRAIN_RECIPE_VERSION, TrainingProgress, train_model

STATE_PATTERN = re.compile(r"^trained@(0|[1-9][0-9]*)$")
STATE_HELP = (
    "use model.state=untrained, trained or trained@E, where E is a whole number of epochs >= 0 of one seeded "
    "training run (e.g. model.state=trained@5)"
)
# the plain trained state's mini-batch and learning rate (bench.training.prepare_model): the two differ in length only
TRAIN_BATCH = 32
LR = 0.05
# bump when what an epoch means changes, so that stale cached checkpoints are not continued
STAGE_RECIPE_VERSION = 1
CHECKPOINT_NAME = re.compile(r"-epoch(\d+)\.pt$")


def stage_epochs(state: str) -> int | None:
    """E of ``trained@E``; None for ``untrained`` and ``trained``; anything else is a ``UserError`` saying what to
    write."""
    if state in ("untrained", "trained"):
        return None
    found = STATE_PATTERN.match(str(state))
    if found is None:
        raise UserError(f"model.state={state!r} is not valid; {STATE_HELP}")
    return int(found.group(1))


def steps_per_epoch(train_count: int, batch: int) -> int:
    """Steps of one epoch: one pass over ``train_count`` images in whole mini-batches of ``batch``."""
    return train_count // min(batch, train_count)


@dataclass(frozen=True)
class StageRun:
    """One seeded training run whose checkpoints the ``trained@E`` states are: everything that changes its weights."""

    name: str
    model_kwargs: dict[str, Any]
    num_classes: int
    image_shape: tuple[int, int, int]
    seed: int
    batch: int
    lr: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    data: dict[str, Any]  # the training split's identity: the dataset's spec and the split
    device_type: str  # training on another device gives other weights

    def key(self) -> str:
        payload = {"recipe": TRAIN_RECIPE_VERSION, "stage_recipe": STAGE_RECIPE_VERSION, **asdict(self)}
        return hashlib.sha256(rec.canonical_json(payload).encode()).hexdigest()[:16]

    def weights_path(self, cache_dir: Path, epochs: int) -> Path:
        return cache_dir / f"{self.name}-stage-{self.key()}-epoch{epochs}.pt"

    def progress_path(self, cache_dir: Path, epochs: int) -> Path:
        return cache_dir / f"{self.name}-stage-{self.key()}-epoch{epochs}.progress.pt"

    def cached_epochs(self, cache_dir: Path) -> list[int]:
        """The epochs whose weights and training progress are both cached, in increasing order."""
        found = []
        for path in cache_dir.glob(f"{self.name}-stage-{self.key()}-epoch*.pt"):
            match = CHECKPOINT_NAME.search(path.name)
            if match is not None and self.progress_path(cache_dir, int(match.group(1))).is_file():
                found.append(int(match.group(1)))
        return sorted(found)


def _progress(path: Path) -> TrainingProgress:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return TrainingProgress.from_tensors(state)
    except Exception as error:  # any unreadable file gets the same one-line refusal
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"training progress {path} is not readable ({first}); delete it to retrain") from error


def _save(path: Path, state: Mapping[str, Any]) -> None:
    rec.write_atomic(path, lambda handle: torch.save(dict(state), handle))


def train_to_epoch(
    run: StageRun,
    epochs: int,
    *,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    cache_dir: Path,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """The run's model after ``epochs`` epochs on ``train_images``/``train_labels``, in eval mode on ``device``:
    loaded from the cache, else trained on from the latest cached earlier checkpoint (or the initialisation) and
    cached, weights and training progress."""
    model = build_model(
        run.name, num_classes=run.num_classes, image_shape=run.image_shape, seed=run.seed, **run.model_kwargs
    )
    if epochs == 0:  # the run's initialisation: nothing to train or cache
        return model.to(device).eval()
    weights = run.weights_path(cache_dir, epochs)
    if weights.is_file():
        print(f"[stage] loading {run.name} at epoch {epochs} from {weights}", file=sys.stderr, flush=True)
        return load_state_dict_checked(model, weights, run.name).to(device).eval()
    earlier = [e for e in run.cached_epochs(cache_dir) if e < epochs]
    start, progress = 0, None
    if earlier:
        start = earlier[-1]
        load_state_dict_checked(model, run.weights_path(cache_dir, start), run.name)
        progress = _progress(run.progress_path(cache_dir, start))
    per_epoch = steps_per_epoch(train_images.shape[0], run.batch)
    print(
        f"[stage] training {run.name} from epoch {start} to {epochs} ({per_epoch} steps an epoch on "
        f"{train_images.shape[0]} images); caching at {weights}",
        file=sys.stderr,
        flush=True,
    )
    channels = (len(run.mean), 1, 1)
    model.to(device)
    reached = train_model(
        model,
        train_images,
        train_labels,
        torch.tensor(run.mean).view(channels),
        torch.tensor(run.std).view(channels),
        seed=run.seed,
        steps=(epochs - start) * per_epoch,
        batch=run.batch,
        lr=run.lr,
        start=progress,
    )
    model.eval()
    # progress first: a weights file without its progress is still a checkpoint, one that is never continued
    _save(run.progress_path(cache_dir, epochs), reached.to_tensors())
    _save(weights, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
    return model


def prepare_stage(
    model_spec: Mapping[str, Any],
    dataset: ImageDataset,
    *,
    dataset_spec: Mapping[str, Any],
    seed: int,
    cache_dir: Path,
    device: torch.device | str = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """The model of ``model_spec`` (state ``trained@E``) and the record's stage columns: the epoch, the accuracy on
    the held-out images and how many there were."""
    epochs = stage_epochs(model_spec["state"])
    if epochs is None:
        raise ValueError(f"prepare_stage needs a trained@E state, got {model_spec['state']!r}")
    options = {k: v for k, v in model_spec.items() if k not in ("name", "state")}
    if "train_steps" in options:
        raise UserError(
            f"model.train_steps does not apply to model.state={model_spec['state']} (it trains whole epochs); drop it"
        )
    batch, lr = int(options.pop("train_batch", TRAIN_BATCH)), float(options.pop("lr", LR))
    if batch < 1 or not lr > 0:
        raise UserError(f"need model.train_batch >= 1 and model.lr > 0; got {batch} and {lr}")
    train, held_out = split(len(dataset))
    if train.numel() == 0 or held_out.numel() == 0:
        raise UserError(
            f"model.state={model_spec['state']} needs at least 5 images to hold some out; {dataset.name} has "
            f"{len(dataset)}"
        )
    run = StageRun(
        name=model_spec["name"],
        model_kwargs=options,
        num_classes=dataset.num_classes,
        image_shape=tuple(dataset.image_shape),
        seed=int(seed),
        batch=batch,
        lr=lr,
        mean=tuple(dataset.mean),
        std=tuple(dataset.std),
        data={"dataset": dict(dataset_spec), "train": int(train.numel()), "held_out": int(held_out.numel())},
        device_type=torch.device(device).type,
    )
    train_images, train_labels = dataset.batch(train)
    model = train_to_epoch(
        run, epochs, train_images=train_images, train_labels=train_labels, cache_dir=cache_dir, device=device
    )
    test_images, test_labels = dataset.batch(held_out)
    channels = (1, len(dataset.mean), 1, 1)
    target = next(model.parameters()).device
    score = accuracy(
        model,
        test_images.to(target),
        test_labels.to(target),
        torch.tensor(dataset.mean, device=target).view(channels),
        torch.tensor(dataset.std, device=target).view(channels),
    )
    return model, {"model_epoch": epochs, "model_accuracy": score, "model_held_out": int(held_out.numel())}
