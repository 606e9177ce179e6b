"""LRB, the Label Recovery Block of AFGI (Liu et al. 2024, arXiv 2403.08383), registered as label strategy ``lrb``.

The paper says only that LRB "accurately restore[s] duplicating labels of private
images based on exposed gradients" in the white-box setting; the block itself is
not public. Ours is analytic (no training) and combines three facts about the
final ``nn.Linear`` under the mean cross-entropy (notation of ``methods.labels``:
``T_c = -B db_c = n_c - sum_i p_ic``, features ``z_i >= 0`` after ReLU/sigmoid):

1. *Certain presence.* An absent class has ``dW_c = (1/B) sum_i p_ic z_i >= 0``
   entry by entry and ``db_c >= 0``; so any negative entry in row ``c`` of ``dW``
   or in ``db_c`` proves that class ``c`` is in the batch. No threshold, no model.
2. *Counts where the gradient carries them.* ``n_c = T_c + pi_c`` with
   ``pi_c = sum_i p_ic >= 0``, so ``n_c >= T_c``; and the total posterior mass on
   the present classes, ``Pi = B - sum_present T_c``, is known exactly. A posterior
   model splits ``Pi`` between the present classes: the posterior of the batch's mean
   feature (recovered from the absent rows, as in our ``ilrg``) pushed through the
   model's own classifier; a class whose estimate reaches 1/2 counts as present, and
   the mean feature is recomputed until that set is stable. On untrained models the
   counts are then exact.
3. *Counts where it does not.* On trained models confidently classified samples
   leave almost nothing in the gradient (``1 - p_iy`` down to float32's 6e-8), so
   ``Pi`` is close to ``B`` and the mean-feature model cannot split it (the
   posterior of a mean feature is far from the mean posterior). We detect this by
   validating the model on the absent classes, whose mean posteriors ``db_c`` are
   known exactly: beyond a relative L1 error of ``MODEL_TOLERANCE`` the model is
   ignored. What stays unexplained is spread by water-filling, i.e. the most even
   counts that respect ``n_c >= max(1, T_c)`` (the maximum-entropy choice when the
   gradient says nothing more), rounded to exactly ``B`` by the largest remainder;
   ties go to the classes with more negative entries in their ``dW`` row (the
   support of their own samples' features, which grows with the number of
   distinct samples: AUC 0.82 for "has the extra sample" on trained convnets).

Assumes non-negative last-layer features (ReLU or sigmoid before the classifier,
true of every model in ``bench.models``) and a final ``nn.Linear`` with bias.
"""

from __future__ import annotations

import torch
from torch import Tensor

from methods.base import Observation
from methods.labels import register_label_strategy
from methods.lastlayer import check_batch, last_layer_gradients, last_layer_parameters, multiset, precise

# the posterior model is used only if its relative L1 error on the absent classes' mean posteriors is below this
MODEL_TOLERANCE = 0.2
# rounds of "present set -> mean feature -> present set" before the last set is taken as it is
MAX_ROUNDS = 20


def certain_presence(grad_w: Tensor, grad_b: Tensor) -> Tensor:
    """Classes proven present: a negative entry in their weight-gradient row or a negative bias gradient."""
    return (grad_w.min(dim=1).values < 0) | (grad_b < 0)


def _mean_feature_posterior(grad_w: Tensor, grad_b: Tensor, weight: Tensor, bias: Tensor, present: Tensor) -> Tensor:
    """Posterior of the batch's posterior-weighted mean feature, recovered from the absent rows."""
    absent = (~present).to(grad_b.dtype)
    mass = grad_b @ absent
    if float(absent.sum()) > 0 and float(mass) > 0:
        z_bar = (absent @ grad_w) / mass
    else:
        z_bar = grad_w.T @ grad_b / grad_b.square().sum().clamp(min=torch.finfo(grad_b.dtype).tiny)
    return torch.softmax(weight @ z_bar + bias, dim=0)


def water_fill(lower: Tensor, total: float) -> Tensor:
    """``n_c = max(lower_c, lam)`` with the level ``lam`` such that the sum is ``total``.

    If the lower bounds alone exceed ``total`` they are returned unchanged (the rounding trims them).
    """
    if float(lower.sum()) >= total:
        return lower.clone()
    # exact: sort the bounds and find how many sit below the level
    ordered = torch.sort(lower).values
    above = ordered.flip(0).cumsum(0).flip(0)  # above[j] = sum of ordered[j:]
    level = float(total)
    for j in range(ordered.numel()):
        level = (total - (float(above[j + 1]) if j + 1 < ordered.numel() else 0.0)) / (j + 1)
        if j + 1 == ordered.numel() or level <= float(ordered[j + 1]):
            break
    return torch.clamp(lower, min=level)


def _round_counts(estimates: Tensor, total: int, tiebreak: Tensor) -> Tensor:
    """Integer counts >= 1 near ``estimates`` summing to ``total`` (largest remainder; ties by ``tiebreak``)."""
    counts = estimates.floor().clamp(min=1)
    while int(counts.sum()) > total and bool((counts > 1).any()):
        # over budget (only when the lower bounds overshoot): take from the largest fractional deficit
        residual = torch.where(counts > 1, estimates - counts, torch.full_like(counts, float("inf")))
        counts[int(residual.argmin())] -= 1
    residual = estimates - counts + 1e-6 * tiebreak / tiebreak.max().clamp(min=1e-300)
    while int(counts.sum()) < total:
        c = int(residual.argmax())
        counts[c] += 1
        residual[c] -= 1
    return counts


def _model_posterior(
    grad_w: Tensor, grad_b: Tensor, weight: Tensor, bias: Tensor, certain: Tensor, targets: Tensor, batch: int
) -> tuple[Tensor, Tensor, float]:
    """The mean-feature posterior model, the present set it implies, and its validation error.

    Present = proven present, or a count estimate ``T_c + B p_c`` of at least 1/2; the mean
    feature is recomputed from the absent rows until that set stops changing. The error is the
    relative L1 distance between the model's and the true mean posteriors (``db_c``) of the absent classes.
    """
    present = certain.clone()
    posterior = _mean_feature_posterior(grad_w, grad_b, weight, bias, present)
    for _ in range(MAX_ROUNDS):
        updated = certain | (targets + batch * posterior >= 0.5)
        if torch.equal(updated, present):
            break
        present = updated
        posterior = _mean_feature_posterior(grad_w, grad_b, weight, bias, present)
    absent = ~present
    if not bool(absent.any()):
        return posterior, present, float("inf")
    error = (posterior[absent] - grad_b[absent]).abs().sum() / grad_b[absent].sum().clamp(min=1e-300)
    return posterior, present, float(error)


def lrb_counts(observation: Observation, *, model_tolerance: float = MODEL_TOLERANCE) -> Tensor:
    """Per-class counts (K,) recovered by LRB; see the module docstring."""
    batch = check_batch(observation)
    grad_w, grad_b = (precise(g) for g in last_layer_gradients(observation))
    weight, bias = (precise(p).to(grad_w.device) for p in last_layer_parameters(observation))
    targets = -batch * grad_b  # T_c = n_c - sum_i p_ic, exactly

    # 1. proven presence; 2. the posterior model, trusted only if it predicts the absent classes
    certain = certain_presence(grad_w, grad_b)
    posterior, present, error = _model_posterior(grad_w, grad_b, weight, bias, certain, targets, batch)
    reliable = error <= model_tolerance
    if not reliable:
        present = certain
    if not bool(present.any()):  # degenerate gradients (e.g. all-zero features and a perfect fit)
        present = torch.zeros_like(present)
        present[int(grad_b.argmin())] = True
    index = present.nonzero().flatten()
    evidence = targets + batch * posterior if reliable else targets
    if index.numel() > batch:  # more classes than samples (features that can be negative): keep the strongest
        index = index[torch.argsort(evidence[index], descending=True)[:batch]]

    # the posterior mass on the present classes, Pi = B - sum T_c, is known exactly; a reliable model splits it
    unexplained = batch - float(targets[index].sum())
    modelled = torch.zeros_like(targets[index])
    if reliable and unexplained > 0 and float(posterior[index].sum()) > 0:
        modelled = posterior[index] * (unexplained / float(posterior[index].sum()))
    lower = (targets[index] + modelled).clamp(min=1.0)

    # 3. whatever is left is spread as evenly as the lower bounds allow; ties by the rows' negative support
    estimates = water_fill(lower, float(batch))
    support = (grad_w[index] < 0).sum(dim=1).to(grad_w.dtype)
    counts = torch.zeros_like(targets)
    counts[index] = _round_counts(estimates, batch, support + 1.0)
    return counts.long()


@register_label_strategy("lrb")
def lrb_labels(observation: Observation) -> Tensor:
    """AFGI's Label Recovery Block (our analytic design; see ``methods/lrb.py`` and docs/methods/afgi.md)."""
    return multiset(lrb_counts(observation))
