from collections import Counter

import numpy as np
import pytest
import torch

from bench.data import load_dataset
from bench.errors import InfeasibleBatchError, UserError
from bench.sampler import dirichlet_counts, distinct_labels, min_feasible_dup_ratio, sample_batch


@pytest.fixture(scope="module")
def crops():
    return load_dataset("crops")


def expected_counts(batch_size: int, k: int) -> list[int]:
    base, extra = divmod(batch_size, k)
    return sorted([base + 1] * extra + [base] * (k - extra))


@pytest.mark.parametrize(
    ("batch_size", "dup_ratio", "k"),
    [(1, 0, 1), (1, 1, 1), (2, 0, 2), (2, 0.5, 1), (4, 0.5, 2), (8, 0.5, 4), (48, 0, 48), (48, 1, 1), (11, 0.15, 9)],
)
def test_distinct_labels_rounds_half_up(batch_size, dup_ratio, k):
    # (2, 0.5): 0.5 rounds up to 1 duplicate; (11, 0.15): 1.5 in decimal though 0.15 * 10 < 1.5 in binary floats.
    assert distinct_labels(batch_size, dup_ratio) == k


@pytest.mark.parametrize("batch_size", [1, 2, 4, 8, 16, 32, 48])
@pytest.mark.parametrize("dup_ratio", [0, 0.25, 0.5, 0.75, 1])
def test_batch_has_k_labels_spread_evenly(crops, batch_size, dup_ratio):
    k = distinct_labels(batch_size, dup_ratio)
    if k > 19:
        with pytest.raises(InfeasibleBatchError):
            sample_batch(crops.labels, crops.num_classes, batch_size, dup_ratio, seed=0)
        return
    indices = sample_batch(crops.labels, crops.num_classes, batch_size, dup_ratio, seed=0)
    assert indices.dtype == torch.long and indices.shape == (batch_size,)
    assert indices.unique().numel() == batch_size
    counts = Counter(crops.labels[indices].tolist())
    assert len(counts) == k
    assert sorted(counts.values()) == expected_counts(batch_size, k)


def test_batch_order_is_shuffled(crops):
    labels = crops.labels[sample_batch(crops.labels, crops.num_classes, 16, 0.5, seed=0)].tolist()
    runs = sum(1 for i in range(len(labels)) if i == 0 or labels[i] != labels[i - 1])
    assert runs > len(set(labels))


def test_same_seed_same_batch_other_seed_other_batch(crops):
    first = sample_batch(crops.labels, crops.num_classes, 8, 0.5, seed=3)
    again = sample_batch(crops.labels, crops.num_classes, 8, 0.5, seed=3)
    other = sample_batch(crops.labels, crops.num_classes, 8, 0.5, seed=4)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_too_few_classes_says_why(crops):
    with pytest.raises(UserError) as info:
        sample_batch(crops.labels, crops.num_classes, 48, 0, seed=0)
    message = str(info.value)
    assert "48 distinct classes" in message and "has 19" in message
    assert "\n" not in message
    r = min_feasible_dup_ratio(crops.labels, crops.num_classes, 48)
    assert f"dup_ratio={r:.6g}" in message


def test_too_few_images_per_class_says_why():
    # cifar10_sample has 2 or 4 images per class; 9 images over 2 classes needs one class with 5.
    sample = load_dataset("cifar10_sample")
    with pytest.raises(InfeasibleBatchError, match="needs 1 class with at least 5 images"):
        sample_batch(sample.labels, sample.num_classes, 9, 0.875, seed=0)
    with pytest.raises(InfeasibleBatchError, match="needs 1 class with at least 8 images"):
        sample_batch(sample.labels, sample.num_classes, 8, 1, seed=0)


def test_bigger_share_goes_to_a_class_that_can_supply_it():
    # imagenet_sample: 609 has 2 photos, 18 other classes have 1; B=3, k=2 is feasible only with 609 doubled.
    sample = load_dataset("imagenet_sample", resolution=8)
    for seed in range(20):
        labels = sample.labels[sample_batch(sample.labels, sample.num_classes, 3, 0.5, seed)].tolist()
        assert labels.count(609) == 2 and len(set(labels)) == 2


def test_min_feasible_dup_ratio(crops):
    assert min_feasible_dup_ratio(crops.labels, crops.num_classes, 16) == 0.0
    assert min_feasible_dup_ratio(crops.labels, crops.num_classes, 1) == 0.0
    r = min_feasible_dup_ratio(crops.labels, crops.num_classes, 48)
    assert r == 29 / 47 and distinct_labels(48, r) == 19
    sample_batch(crops.labels, crops.num_classes, 48, r, seed=0)
    assert min_feasible_dup_ratio(crops.labels, crops.num_classes, 1281) is None


@pytest.mark.parametrize(("batch_size", "dup_ratio"), [(0, 0), (1.5, 0), (True, 0), ("8", 0)])
def test_bad_batch_size(crops, batch_size, dup_ratio):
    with pytest.raises(UserError, match="batch_size must be an integer >= 1"):
        sample_batch(crops.labels, crops.num_classes, batch_size, dup_ratio, seed=0)


@pytest.mark.parametrize("dup_ratio", [-0.1, 2, float("nan"), "0.5", None])
def test_bad_dup_ratio(crops, dup_ratio):
    with pytest.raises(UserError, match=r"dup_ratio must be a number in \[0, 1\]"):
        sample_batch(crops.labels, crops.num_classes, 4, dup_ratio, seed=0)


# ----------------------------------------------------------------------------- composition=dirichlet


@pytest.mark.parametrize(("batch_size", "k"), [(4, 2), (8, 4), (16, 5), (32, 9), (48, 13), (48, 47), (5, 1), (6, 6)])
def test_dirichlet_counts_are_at_least_one_and_sum_to_b(batch_size, k):
    for seed in range(20):
        counts = dirichlet_counts(batch_size, k, 0.5, seed)
        assert len(counts) == k and sum(counts) == batch_size and min(counts) >= 1
        assert counts == sorted(counts, reverse=True)
        assert counts == dirichlet_counts(batch_size, k, 0.5, seed)  # a pure function of its arguments


def test_dirichlet_counts_follow_the_drawn_proportions_exactly():
    # 1 + largest-remainder rounding of (B - k) * p, with p the NumPy generator's Dirichlet draw for this seed
    p = np.random.default_rng(7).dirichlet([0.5] * 4)
    shares = 12 * p  # B = 16, k = 4: 12 images beyond one per class
    floors = np.floor(shares).astype(int)
    floors[np.argsort(-(shares - floors), kind="stable")[: 12 - floors.sum()]] += 1
    assert dirichlet_counts(16, 4, 0.5, 7) == sorted((1 + floors).tolist(), reverse=True)


def test_small_alpha_skews_and_large_alpha_evens_out():
    def spread(alpha):
        return sum(max(dirichlet_counts(32, 8, alpha, s)) - min(dirichlet_counts(32, 8, alpha, s)) for s in range(30))

    assert spread(0.1) > spread(0.5) > spread(100.0)
    assert all(dirichlet_counts(32, 8, 1e6, s) == [4] * 8 for s in range(5))  # alpha -> inf: the even split


@pytest.mark.parametrize(("batch_size", "dup_ratio"), [(8, 0.5), (16, 0.75), (32, 0.75), (48, 0.75), (16, 0.25)])
def test_dirichlet_batch_has_the_drawn_counts_and_is_deterministic(crops, batch_size, dup_ratio):
    k = distinct_labels(batch_size, dup_ratio)
    for seed in range(3):
        indices = sample_batch(crops.labels, crops.num_classes, batch_size, dup_ratio, seed, "dirichlet", 0.5)
        assert indices.unique().numel() == batch_size
        counts = sorted(Counter(crops.labels[indices].tolist()).values(), reverse=True)
        assert counts == dirichlet_counts(batch_size, k, 0.5, seed)
        again = sample_batch(crops.labels, crops.num_classes, batch_size, dup_ratio, seed, "dirichlet", 0.5)
        assert torch.equal(indices, again)
    other_alpha = sample_batch(crops.labels, crops.num_classes, 32, 0.75, 0, "dirichlet", 5.0)
    assert not torch.equal(other_alpha, sample_batch(crops.labels, crops.num_classes, 32, 0.75, 0, "dirichlet", 0.5))


@pytest.mark.parametrize(("batch_size", "dup_ratio"), [(8, 0), (8, 1), (1, 0)])
def test_dirichlet_equals_even_where_the_counts_leave_no_choice(crops, batch_size, dup_ratio):
    # k = B (all distinct) and k = 1 (one class) have one composition only: the same batch as even
    even = sample_batch(crops.labels, crops.num_classes, batch_size, dup_ratio, 5)
    skewed = sample_batch(crops.labels, crops.num_classes, batch_size, dup_ratio, 5, "dirichlet", 0.5)
    assert torch.equal(even, skewed)


def test_dirichlet_counts_the_data_cannot_supply_are_infeasible_with_the_reason():
    # cifar10_sample has 2 or 4 images per class: seed 2 draws a class of 5 for B = 8 over 3 classes
    sample = load_dataset("cifar10_sample")
    wanted = dirichlet_counts(8, 3, 0.5, 2)
    assert wanted[0] > 4
    with pytest.raises(InfeasibleBatchError) as info:
        sample_batch(sample.labels, sample.num_classes, 8, 0.75, 2, "dirichlet", 0.5)
    message = str(info.value)
    assert "composition=dirichlet" in message and str(wanted) in message and "\n" not in message


@pytest.mark.parametrize(
    ("composition", "alpha", "match"),
    [
        ("skewed", 0.5, "composition must be one of even, dirichlet"),
        ("dirichlet", 0, "alpha must be a positive number"),
        ("dirichlet", -1, "alpha must be a positive number"),
        ("dirichlet", float("inf"), "alpha must be a positive number"),
        ("dirichlet", "0.5", "alpha must be a positive number"),
        ("dirichlet", True, "alpha must be a positive number"),
    ],
)
def test_bad_composition_or_alpha(crops, composition, alpha, match):
    with pytest.raises(UserError, match=match):
        sample_batch(crops.labels, crops.num_classes, 8, 0.5, 0, composition, alpha)


def test_bad_composition_is_one_line_and_exit_2(refused):
    code, stderr = refused("sweep=none", "method=noise", "composition=dirichlet", "alpha=-1")
    assert code == 2, stderr
    assert stderr.strip().splitlines() == ["error: alpha=-1 is not valid; give a value > 0, e.g. alpha=0.5"]


def test_composition_joins_the_trial_key_only_when_skewed():
    import gia_bench as gb
    from bench.trial import trial_config

    def config(*overrides):
        given = dict(o.split("=") for o in overrides)
        given = {k: float(v) if k == "alpha" else v for k, v in given.items()}
        return trial_config(gb.settings_for("idlg", **given), torch.device("cpu"))

    for task in ("task=attack", "task=labels"):
        even = config(task)
        assert "composition" not in even and "alpha" not in even  # even trials keep the keys they had
        assert config(task, "alpha=2") == even  # alpha means nothing without dirichlet
        skewed = config(task, "composition=dirichlet")
        assert skewed == {**even, "composition": "dirichlet", "alpha": 0.5}
        assert config(task, "composition=dirichlet", "alpha=2") != skewed
