"""Gradient-matching losses: the fused forms equal the textbook definitions, per batch and per group."""

import torch

from methods.losses import CosineLoss, EuclideanLoss, build_gradient_loss, flatten


def gradients(seed: int, groups: int | None = None) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shapes = [(6, 3, 5, 5), (6,), (10, 24), (10,)]
    lead = () if groups is None else (groups,)
    return [torch.randn(*lead, *shape, generator=generator, dtype=torch.float64) for shape in shapes]


def test_euclidean_is_the_squared_distance_of_the_concatenated_gradients():
    target, dummy = gradients(0), gradients(1)
    expected = sum(float((d - t).pow(2).sum()) for d, t in zip(dummy, target, strict=True))
    assert abs(float(EuclideanLoss(target)(dummy)) - expected) <= 1e-12 * expected
    assert abs(float(EuclideanLoss(target)(target))) < 1e-24


def test_cosine_is_one_minus_the_cosine_of_the_concatenated_gradients():
    target, dummy = gradients(0), gradients(1)
    a, b = flatten(dummy), flatten(target)
    expected = 1 - float(torch.nn.functional.cosine_similarity(a, b, dim=0))
    assert abs(float(CosineLoss(target)(dummy)) - expected) < 1e-12
    # magnitude invariant: scaling the dummy gradient changes nothing
    assert abs(float(CosineLoss(target)([3.0 * d for d in dummy])) - expected) < 1e-12


def test_per_group_distances_equal_one_call_per_group():
    target, stacked = gradients(0), gradients(2, groups=3)
    for name in ("euclidean", "cosine"):
        loss = build_gradient_loss(name, target)
        per_group = loss.per_group(stacked)
        assert per_group.shape == (3,)
        for g in range(3):
            one = float(loss([layer[g] for layer in stacked]))
            assert abs(float(per_group[g]) - one) <= 1e-12 * max(1.0, abs(one)), (name, g)
