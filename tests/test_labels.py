"""Label strategies on untrained models, with observations built from the embedded CIFAR-10 sample."""

from __future__ import annotations

from collections import Counter
from functools import cache
from pathlib import Path

import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor, nn

from bench.metrics import label_accuracy
from methods.base import Observation, UnknownNameError
from methods.labels import (
    get_label_strategy,
    infer_labels,
    list_label_strategies,
    register_label_strategy,
)
from methods.lastlayer import last_layer_gradients, round_to_total
from methods.lrb import certain_presence
from methods.optimise import model_gradients

SAMPLE = Path(__file__).resolve().parents[1] / "datasets" / "sample" / "cifar10"
STRATEGIES = ["analytic", "count", "idlg", "ilrg", "llg", "lrb", "yin"]
BATCH_STRATEGIES = [s for s in STRATEGIES if s != "idlg"]


class LeNet(nn.Module):
    """DLG-style sigmoid CNN: non-negative features in (0, 1)."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 12, 5, stride=2, padding=2),
            nn.Sigmoid(),
            nn.Conv2d(12, 12, 5, stride=2, padding=2),
            nn.Sigmoid(),
            nn.Conv2d(12, 12, 5, stride=1, padding=2),
            nn.Sigmoid(),
            nn.Flatten(),
        )
        self.fc = nn.Linear(12 * 8 * 8, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.body(x))


class ConvBN(nn.Module):
    """Conv-BN-ReLU CNN: non-negative features with exact zeros; momentum 0 keeps the running stats fixed."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16, momentum=0.0),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32, momentum=0.0),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
        )
        self.fc = nn.Linear(32 * 4 * 4, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.body(x))


ARCHS = {"lenet": LeNet, "convbn": ConvBN}


@cache
def _sample() -> tuple[Tensor, Tensor]:
    paths = sorted(SAMPLE.glob("*.png"))
    images = torch.stack([TF.to_tensor(Image.open(p).convert("RGB")) for p in paths])
    labels = torch.tensor([int(p.stem.rsplit("_", 1)[1]) for p in paths])
    return images, labels


def build_model(arch: str, classes: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return ARCHS[arch](classes).train()


def observe(model: nn.Module, images: Tensor, labels: Tensor, classes: int) -> Observation:
    grads = model_gradients(model, (images - 0.5) / 0.5, labels, create_graph=False)
    return Observation(
        model=model,
        gradients=tuple(g.detach() for g in grads),
        batch_size=len(labels),
        image_shape=(3, 32, 32),
        num_classes=classes,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    )


def counted(labels: Tensor) -> Counter[int]:
    return Counter(labels.tolist())


def pattern_batch(counts: list[int], classes: int, seed: int) -> tuple[Tensor, Tensor]:
    """Distinct sample images, relabelled to the pattern: an untrained model has no notion of which label fits."""
    generator = torch.Generator().manual_seed(seed)
    images, _ = _sample()
    chosen = torch.randperm(classes, generator=generator)[: len(counts)]
    labels = torch.repeat_interleave(chosen, torch.tensor(counts))
    return images[torch.randperm(len(images), generator=generator)[: len(labels)]], labels


def test_registry_lists_every_strategy() -> None:
    assert list_label_strategies() == STRATEGIES


def test_unknown_strategy_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError) as info:
        get_label_strategy("oracle")
    message = str(info.value)
    assert "unknown label strategy 'oracle'" in message
    for name in STRATEGIES:
        assert name in message


def test_duplicate_registration_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_label_strategy("llg")(lambda observation: observation.labels)


@pytest.mark.parametrize("arch", ["lenet", "convbn"])
def test_every_strategy_is_exact_for_single_images(arch: str) -> None:
    images, labels = _sample()
    model = build_model(arch, 10, seed=0)
    for image, label in zip(images, labels, strict=True):
        observation = observe(model, image[None], label[None], 10)
        for name in STRATEGIES:
            assert infer_labels(name, observation).tolist() == [int(label)], name


@pytest.mark.parametrize("arch", ["lenet", "convbn"])
@pytest.mark.parametrize("classes", [10, 1000])
def test_batch_strategies_on_a_batch_with_duplicates(arch: str, classes: int) -> None:
    # {3: 3, 7: 2, 1: 1, 2: 1, 9: 1} on untrained models, seed 1 (measured: analytic 0.75-0.875, yin 0.625)
    images, _ = _sample()
    labels = torch.tensor([3, 3, 3, 7, 7, 1, 2, 9])
    observation = observe(build_model(arch, classes, seed=1), images[:8], labels, classes)
    predicted = {name: infer_labels(name, observation) for name in BATCH_STRATEGIES}
    for name, found in predicted.items():
        assert found.dtype == torch.long and found.device == observation.device, name
    for name in ("count", "ilrg", "llg", "lrb"):  # the duplicate-aware strategies recover the multiset exactly
        assert counted(predicted[name]) == counted(labels), name
    # yin returns 8 distinct classes: the 5 present ones and 3 wrong ones, so exactly 5 of 8 are right
    assert set(labels.tolist()) <= set(predicted["yin"].tolist())
    assert label_accuracy(predicted["yin"], labels) == 5 / 8
    # analytic sees presence, not counts: it names only present classes and guesses their counts
    assert set(predicted["analytic"].tolist()) <= set(labels.tolist())
    assert 0.75 <= label_accuracy(predicted["analytic"], labels) < 1


def test_idlg_refuses_batches() -> None:
    images, labels = _sample()
    observation = observe(build_model("lenet", 10, seed=0), images[:2], labels[:2], 10)
    with pytest.raises(ValueError, match="single sample"):
        infer_labels("idlg", observation)


PATTERNS = {
    "3-3-1-1": [3, 3, 1, 1],
    "4-of-one": [4],
    "8-distinct": [1] * 8,
    "5-4-4-2-1": [5, 4, 4, 2, 1],
    "10-5-1": [10, 5, 1],
    "13-1-1-1": [13, 1, 1, 1],
    "4-and-8-singletons": [4] + [1] * 8,
}
PATTERN_SEEDS = range(5)


@pytest.mark.parametrize("arch", ["lenet", "convbn"])
@pytest.mark.parametrize("classes", [10, 100])
@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_count_strategies_recover_duplicates_exactly(arch: str, classes: int, pattern: str) -> None:
    # docs/methods/afgi.md cites this test: 7 patterns x 5 seeds = 35 batches per model and K, all exact for
    # count, ilrg and lrb on untrained models (measured also at K = 1000: 35/35 each)
    for seed in PATTERN_SEEDS:
        images, labels = pattern_batch(PATTERNS[pattern], classes, seed)
        observation = observe(build_model(arch, classes, seed), images, labels, classes)
        for strategy in ("count", "ilrg", "lrb"):
            assert counted(infer_labels(strategy, observation)) == counted(labels), (strategy, seed)
        # LRB's proof of presence (a negative entry in a row of dW, or in db) never names an absent class
        grad_w, grad_b = last_layer_gradients(observation)
        proven = certain_presence(grad_w.double(), grad_b.double()).nonzero().flatten().tolist()
        assert proven and set(proven) <= set(labels.tolist()), seed


def _synthetic_observation(counts: list[int], classes: int, features: int = 4) -> Observation:
    """Exact last-layer gradients of a batch whose samples share one positive feature vector and uniform posteriors."""
    model = nn.Linear(features, classes)
    batch = sum(counts)
    n = torch.zeros(classes)
    n[: len(counts)] = torch.tensor(counts, dtype=torch.float32)
    residual = 1.0 / classes - n / batch
    z = torch.linspace(0.5, 1.5, features)
    return Observation(
        model=model,
        gradients=(torch.outer(residual, z), residual),
        batch_size=batch,
        image_shape=(3, 32, 32),
        num_classes=classes,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    )


def test_llg_subtracts_the_impact_from_the_class_it_just_picked() -> None:
    # a stale index in the second stage subtracts from the last class of stage 1, so the argmin
    # never moves and class 0 would take all four remaining slots: {0: 5, 1: 1, 2: 1, 3: 1}
    observation = _synthetic_observation([3, 3, 1, 1], classes=20)
    assert counted(infer_labels("llg", observation)) == Counter({0: 3, 1: 3, 2: 1, 3: 1})


def test_llg_spreads_duplicates_on_a_real_model() -> None:
    images, labels = pattern_batch([4, 4, 4, 4], 100, seed=0)
    observation = observe(build_model("lenet", 100, seed=0), images, labels, 100)
    assert counted(infer_labels("llg", observation)) == counted(labels)


def test_yin_cannot_recover_duplicate_labels() -> None:
    # GradInversion assumes distinct labels: it returns B distinct classes, so a batch of one class is always wrong
    images, labels = pattern_batch([4], 10, seed=0)
    predicted = infer_labels("yin", observe(build_model("lenet", 10, seed=0), images, labels, 10))
    assert len(set(predicted.tolist())) == 4
    assert int(labels[0]) in predicted.tolist()
    assert counted(predicted) != counted(labels)


def test_yin_is_exact_without_duplicates() -> None:
    images, labels = pattern_batch([1] * 8, 100, seed=2)
    predicted = infer_labels("yin", observe(build_model("convbn", 100, seed=2), images, labels, 100))
    assert counted(predicted) == counted(labels)


def test_analytic_fills_missing_slots_with_the_most_negative_classes() -> None:
    observation = _synthetic_observation([3, 1], classes=10)
    assert counted(infer_labels("analytic", observation)) == Counter({0: 2, 1: 2})


def test_round_to_total_keeps_present_classes_and_the_total() -> None:
    estimates = torch.tensor([2.6, 2.6, 0.2, 0.0, 1.4])
    present = torch.tensor([True, True, True, False, True])
    counts = round_to_total(estimates, 7, present)
    assert int(counts.sum()) == 7
    assert counts.tolist() == [3, 2, 1, 0, 1] or counts.tolist() == [2, 3, 1, 0, 1]
    assert round_to_total(torch.tensor([0.9, 0.8, 0.7]), 2, torch.tensor([True, True, True])).tolist() == [1, 1, 0]


def test_last_layer_gradients_needs_a_final_linear_with_bias() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10, bias=False))
    observation = Observation(
        model=model,
        gradients=(torch.zeros(10, 3 * 32 * 32),),
        batch_size=1,
        image_shape=(3, 32, 32),
        num_classes=10,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    )
    with pytest.raises(ValueError, match="nn.Linear"):
        last_layer_gradients(observation)
    conv = nn.Conv2d(3, 10, 3)
    observation = Observation(
        model=conv,
        gradients=tuple(torch.zeros_like(p) for p in conv.parameters()),
        batch_size=1,
        image_shape=(3, 32, 32),
        num_classes=10,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    )
    with pytest.raises(ValueError, match=r"nn.Linear\(F, 10\) with bias"):
        last_layer_gradients(observation)
