"""Seeded batch sampling with a controlled amount of label duplication.

A batch of ``B`` images with duplication ratio ``r`` in [0, 1] has ``k = B - round_half_up(r * (B - 1))`` distinct
labels: ``r = 0`` gives ``B`` distinct labels, ``r = 1`` gives one label for the whole batch. With
``composition="even"`` the ``B`` images are spread over the ``k`` classes as evenly as possible (``B // k`` each, the
first ``B % k`` classes one more). With ``composition="dirichlet"`` the class counts are skewed, as on real clients:
``1 + `` the largest-remainder rounding of ``(B - k) * p`` with ``p ~ Dirichlet(alpha, ..., alpha)``, so every class
has at least one image and the counts sum to ``B``; small ``alpha`` gives a dominant class, large ``alpha`` even counts.
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction

import numpy as np
import torch

from bench.errors import InfeasibleBatchError, UserError


def _check_batch_size(batch_size: object) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise UserError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return int(batch_size)


def _check_dup_ratio(dup_ratio: object) -> float:
    if (
        isinstance(dup_ratio, bool)
        or not isinstance(dup_ratio, numbers.Real)
        or not math.isfinite(dup_ratio)
        or not 0 <= dup_ratio <= 1
    ):
        raise UserError(
            f"dup_ratio must be a number in [0, 1] (0 = all labels distinct, 1 = all equal), got {dup_ratio!r}"
        )
    return float(dup_ratio)


COMPOSITIONS = ("even", "dirichlet")


def check_composition(composition: object, alpha: object) -> tuple[str, float]:
    if composition not in COMPOSITIONS:
        raise UserError(f"composition must be one of {', '.join(COMPOSITIONS)}, got {composition!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha) or not 0 < alpha:
        raise UserError(f"alpha must be a positive number (the Dirichlet concentration, e.g. alpha=0.5), got {alpha!r}")
    return str(composition), float(alpha)


def dirichlet_counts(batch_size: int, k: int, alpha: float, seed: int) -> list[int]:
    """Skewed class counts, largest first: ``k`` integers >= 1 summing to ``batch_size``, a pure function of the args.

    The ``batch_size - k`` images beyond one per class are shared out in proportion to ``p ~ Dirichlet(alpha)``
    (largest remainder; ties to the lower index), drawn from a NumPy generator seeded with ``seed`` alone.
    """
    if not 1 <= k <= batch_size:
        raise ValueError(f"need 1 <= k <= batch_size, got k={k}, batch_size={batch_size}")
    extra = batch_size - k
    shares = np.random.default_rng(int(seed)).dirichlet(np.full(k, float(alpha))) * extra
    counts = np.floor(shares).astype(np.int64)
    remainder = shares - counts
    for index in np.argsort(-remainder, kind="stable")[: extra - int(counts.sum())]:
        counts[index] += 1
    return sorted((1 + counts).tolist(), reverse=True)


def distinct_labels(batch_size: int, dup_ratio: float) -> int:
    """Number of distinct labels ``k = B - floor(r * (B - 1) + 1/2)`` in a batch of ``batch_size`` images.

    Rounds half up (not Python's round-half-to-even) and does it on the shortest decimal form of ``r``, so
    ``r = 0.15, B = 11`` gives 1.5 -> 2 even though ``0.15 * 10`` is 1.4999... in binary floating point.
    """
    b = _check_batch_size(batch_size)
    r = _check_dup_ratio(dup_ratio)
    duplicates = math.floor(Fraction(repr(r)) * (b - 1) + Fraction(1, 2))
    return b - duplicates


def _class_counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    labels = torch.as_tensor(labels).reshape(-1)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise UserError(f"labels must be an integer tensor, got {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise UserError(
            f"labels must lie in [0, {num_classes}), got values from {int(labels.min())} to {int(labels.max())}"
        )
    return torch.bincount(labels.long(), minlength=num_classes)


def _feasible(counts: torch.Tensor, batch_size: int, k: int) -> bool:
    base, extra = divmod(batch_size, k)
    return int((counts >= base + 1).sum()) >= extra and int((counts >= base).sum()) >= k


def min_feasible_dup_ratio(labels: torch.Tensor, num_classes: int, batch_size: int) -> float | None:
    """The least duplication ``r = (B - k) / (B - 1)`` (largest ``k``) for which a batch can be drawn, or None.

    ``r`` is the exact grid point of that ``k``, so ``distinct_labels(batch_size, r) == k``. ``B = 1`` gives 0.0.
    """
    b = _check_batch_size(batch_size)
    return _least_ratio(_class_counts(labels, num_classes), b)


def _least_ratio(counts: torch.Tensor, batch_size: int) -> float | None:
    for k in range(batch_size, 0, -1):
        if _feasible(counts, batch_size, k):
            return 0.0 if k == batch_size else (batch_size - k) / (batch_size - 1)
    return None


def _classes(n: int) -> str:
    return "1 class" if n == 1 else f"{n} classes"


def _infeasible_message(counts: torch.Tensor, batch_size: int, dup_ratio: float, k: int) -> str:
    base, extra = divmod(batch_size, k)
    n_base = int((counts >= base).sum())
    n_extra = int((counts >= base + 1).sum())
    images = "1 image" if base == 1 else f"{base} images"
    if n_base < k:
        if base == 1:
            need = f"needs {k} distinct classes with at least 1 image each, but the dataset has {n_base}"
        else:
            have = "class has" if n_base == 1 else "classes have"
            need = f"needs {_classes(k)} with at least {images} each; only {n_base} {have} that many"
    else:
        have = "class has" if n_extra == 1 else "classes have"
        need = (
            f"needs {_classes(extra)} with at least {base + 1} images (and {k - extra} more with {images}); "
            f"only {n_extra} {have} that many"
        )
    least = _least_ratio(counts, batch_size)
    if least is None:
        hint = f"no dup_ratio works (the dataset has {int(counts.sum())} images); use a smaller batch_size"
    else:
        hint = (
            f"use dup_ratio={least:.6g} (the least duplication this dataset allows at this batch_size) "
            "or a dataset with more classes"
        )
    return f"batch_size={batch_size} with dup_ratio={dup_ratio:g} {need}; {hint}"


def _choose(pool: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    return pool[torch.randperm(pool.numel(), generator=generator)[:count]]


def sample_batch(
    labels: torch.Tensor,
    num_classes: int,
    batch_size: int,
    dup_ratio: float,
    seed: int,
    composition: str = "even",
    alpha: float = 0.5,
) -> torch.Tensor:
    """Indices (long, shape (B,)) of a batch with ``distinct_labels(B, r)`` classes, drawn with ``seed``.

    A pure function of its arguments. ``even``: classes that can supply ``B // k + 1`` images are chosen first for
    the ``B % k`` larger shares, so any feasible request succeeds. ``dirichlet``: the counts of ``dirichlet_counts``;
    the largest count goes first to a random class that can supply it, and so on down, which succeeds whenever any
    assignment of those counts to classes does. The batch order is shuffled so labels are not grouped.
    """
    b = _check_batch_size(batch_size)
    r = _check_dup_ratio(dup_ratio)
    composition, alpha = check_composition(composition, alpha)
    k = distinct_labels(b, r)
    if composition == "dirichlet" and 1 < k < b:
        return _sample_skewed(torch.as_tensor(labels).reshape(-1), num_classes, b, r, k, alpha, int(seed))
    labels = torch.as_tensor(labels).reshape(-1)
    counts = _class_counts(labels, num_classes)
    if not _feasible(counts, b, k):
        raise InfeasibleBatchError(_infeasible_message(counts, b, r, k))
    base, extra = divmod(b, k)
    generator = torch.Generator().manual_seed(int(seed))

    big = _choose(torch.nonzero(counts >= base + 1).flatten(), extra, generator)
    eligible = counts >= base
    eligible[big] = False
    rest = _choose(torch.nonzero(eligible).flatten(), k - extra, generator)
    classes = torch.cat([big, rest])

    picked = []
    for position, cls in enumerate(classes.tolist()):
        members = torch.nonzero(labels == cls).flatten()
        picked.append(_choose(members, base + 1 if position < extra else base, generator))
    indices = torch.cat(picked)
    return indices[torch.randperm(b, generator=generator)]


def _sample_skewed(
    labels: torch.Tensor, num_classes: int, batch_size: int, dup_ratio: float, k: int, alpha: float, seed: int
) -> torch.Tensor:
    # k = 1 and k = B leave no choice of counts: the caller takes the even path, so those batches equal even ones
    available = _class_counts(labels, num_classes)
    wanted = dirichlet_counts(batch_size, k, alpha, seed)
    generator = torch.Generator().manual_seed(seed)
    used = torch.zeros_like(available, dtype=torch.bool)
    picked = []
    for position, count in enumerate(wanted):
        pool = torch.nonzero((available >= count) & ~used).flatten()
        if pool.numel() == 0:
            have = int((available >= count).sum())
            raise InfeasibleBatchError(
                f"batch_size={batch_size} with dup_ratio={dup_ratio:g}, composition=dirichlet, alpha={alpha:g} and "
                f"seed={seed} drew class counts {wanted}, which need {position + 1} classes with at least {count} "
                f"images; only {have} have that many: use composition=even, a larger alpha or a dataset with more "
                "images per class"
            )
        cls = _choose(pool, 1, generator)
        used[cls] = True
        picked.append(_choose(torch.nonzero(labels == cls).flatten(), count, generator))
    indices = torch.cat(picked)
    return indices[torch.randperm(batch_size, generator=generator)]
