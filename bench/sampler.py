"""Seeded batch sampling with a controlled amount of label duplication.

A batch of ``B`` images with duplication ratio ``r`` in [0, 1] has ``k = B - round_half_up(r * (B - 1))`` distinct
labels: ``r = 0`` gives ``B`` distinct labels, ``r = 1`` gives one label for the whole batch. The ``B`` images are
spread over the ``k`` classes as evenly as possible (``B // k`` each, the first ``B % k`` classes one more).
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction

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


def sample_batch(labels: torch.Tensor, num_classes: int, batch_size: int, dup_ratio: float, seed: int) -> torch.Tensor:
    """Indices (long, shape (B,)) of a batch with ``distinct_labels(B, r)`` classes, drawn with ``seed``.

    A pure function of its arguments. Classes that can supply ``B // k + 1`` images are chosen first for the
    ``B % k`` larger shares, so any feasible request succeeds; the batch order is shuffled so labels are not grouped.
    """
    b = _check_batch_size(batch_size)
    r = _check_dup_ratio(dup_ratio)
    k = distinct_labels(b, r)
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
