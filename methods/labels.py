"""Label inference from the last layer's gradients, and a registry of strategies.

Every strategy reads only what ``Observation`` grants and returns a label
multiset: a long tensor of shape (B,) whose order carries no meaning. They all
rest on the same identity for the final ``nn.Linear`` (weight W of shape (K, F),
bias b) under the mean cross-entropy over a batch of B samples with features
z_i, posteriors p_i = softmax(W z_i + b) and one-hot labels y_i::

    dW = (1/B) sum_i (p_i - y_i) z_i^T        db = (1/B) sum_i (p_i - y_i)

so db_c = mean_i p_ic - n_c / B, where n_c is the number of samples of class c.
With sigmoid or ReLU before the last layer the features are non-negative, so
each row of dW carries the sign of the matching entry of db.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from methods.base import NotApplicableError, Observation
from methods.lastlayer import (
    check_batch,
    last_layer_gradients,
    last_layer_parameters,
    multiset,
    precise,
    precise_dtype,
    round_to_total,
)
from methods.registry import Registry

LabelStrategy = Callable[[Observation], Tensor]
LABEL_STRATEGIES: Registry[LabelStrategy] = Registry("label strategy")


def register_label_strategy(name: str) -> Callable[[LabelStrategy], LabelStrategy]:
    """Function decorator that adds a label strategy to the registry under ``name``."""
    return LABEL_STRATEGIES.register(name)


def list_label_strategies() -> list[str]:
    return LABEL_STRATEGIES.names()


def get_label_strategy(name: str) -> LabelStrategy:
    return LABEL_STRATEGIES.get(name)


def infer_labels(name: str, observation: Observation) -> Tensor:
    """Run strategy ``name`` on ``observation`` and check it returned B labels in [0, K)."""
    labels = get_label_strategy(name)(observation)
    batch, classes = observation.batch_size, observation.num_classes
    if labels.shape != (batch,) or labels.dtype != torch.long:
        raise RuntimeError(
            f"label strategy {name!r} returned {labels.dtype} of shape {tuple(labels.shape)}; "
            f"expected torch.int64 of shape ({batch},)"
        )
    if batch and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise RuntimeError(f"label strategy {name!r} returned labels outside [0, {classes})")
    return labels


def labels_for(observation: Observation, strategy: str, batch_strategy: str | None = None) -> Tensor:
    """The labels an attack works with: the given ones in the "labels known" threat model, else inferred.

    ``batch_strategy``, when set, replaces ``strategy`` for B > 1 (for single-sample rules such as ``idlg``).
    """
    if observation.labels is not None:
        return observation.labels
    if batch_strategy is not None and observation.batch_size > 1:
        strategy = batch_strategy
    return infer_labels(strategy, observation)


@register_label_strategy("idlg")
def idlg_labels(observation: Observation) -> Tensor:
    """iDLG (Zhao et al. 2020, "iDLG: Improved Deep Leakage from Gradients").

    For a single sample, dW_c = (p_c - y_c) z: only the true class's row has a
    negative factor. With non-negative features (sigmoid, ReLU) its row sum is the
    only negative one, so the label is the argmin of the row sums of dW.
    Assumes B = 1 and non-negative last-layer features.
    """
    if check_batch(observation) != 1:
        raise NotApplicableError(
            f"the idlg label strategy handles a single sample, got batch_size={observation.batch_size}; "
            "use 'ilrg', 'count', 'llg' or 'analytic' for batches"
        )
    grad_w, grad_b = last_layer_gradients(observation)
    row_sums = precise(grad_w).sum(dim=1)
    # all-zero features (e.g. every ReLU dead) leave the row sums flat; the bias gradient still has the sign
    scores = row_sums if bool(row_sums.ne(0).any()) else precise(grad_b)
    return scores.argmin().reshape(1).long()


@register_label_strategy("analytic")
def analytic_labels(observation: Observation) -> Tensor:
    """Present classes from the sign of the bias gradient.

    The bias gradient of the mean cross-entropy is db_c = mean_i p_ic - n_c/B, which
    is negative when class c is present and its mean posterior is below n_c/B
    (true for untrained models whenever 1/B exceeds the posteriors, roughly B < K).
    Classes with negative db_c are taken, most negative first. If there are fewer
    than B, the remaining slots repeat the present classes in that same order
    (most negative first, cycling), a guess that the most negative classes hold the
    duplicates. If there are more than B, the B most negative are kept. If none is
    negative (degenerate gradients), the smallest entry fills every slot.
    Follows the sign argument shared by iDLG (Zhao et al. 2020) and LLG (Wainakh et al. 2022).
    """
    batch = check_batch(observation)
    _, grad_b = last_layer_gradients(observation)
    grad_b = precise(grad_b)
    order = torch.argsort(grad_b)
    present = order[grad_b[order] < 0]
    if present.numel() == 0:
        present = order[:1]
    if present.numel() >= batch:
        return present[:batch].long()
    repeats = -(-batch // present.numel())
    return present.repeat(repeats)[:batch].long()


@register_label_strategy("yin")
def yin_labels(observation: Observation) -> Tensor:
    """GradInversion's label restoration (Yin et al. 2021, "See through Gradients").

    Takes the minimum over each row of dW (one value per class) and returns the B
    classes with the smallest minima. The present classes' rows contain large
    negative entries while absent ones are non-negative (for non-negative features).
    Assumes the batch has no repeated labels: it returns B *distinct* classes, so it
    is necessarily wrong whenever a label occurs twice, and it needs B <= K.
    """
    batch = check_batch(observation)
    grad_w, _ = last_layer_gradients(observation)
    if batch > observation.num_classes:
        raise NotApplicableError(
            f"the yin label strategy returns distinct labels, so it needs batch_size <= num_classes "
            f"({batch} > {observation.num_classes}); use 'ilrg' or 'count'"
        )
    minima = precise(grad_w).min(dim=1).values
    return torch.argsort(minima)[:batch].long()


@register_label_strategy("llg")
def llg_labels(observation: Observation) -> Tensor:
    """LLG (Wainakh et al. 2022, "User-Level Label Leakage from Gradients in Federated Learning").

    With s_c the row sums of dW, s_c ~ S (mean p_c - n_c/B) for a feature sum S
    that is roughly equal across samples, so each sample of class c lowers s_c by
    about S/B (its "impact" m). Stage 1 takes every class with s_c < 0 once and
    adds |m| to its s_c; stage 2 repeatedly takes the class with the currently
    smallest s_c and adds |m| to *that* class until B labels are taken.

    Impact estimate (ours): summing the negative row sums gives
    S (P_neg - n_neg/B) ~ S (k/K - 1) for k negative classes holding (almost) all
    samples under near-uniform posteriors, so m = sum_{s_c<0} s_c / (B (1 - k/K)).
    The paper uses m = (1/B) sum_{s_c<0} s_c (1 + 1/K), which underestimates the
    impact when many classes are present and so over-counts the largest class.
    Assumes non-negative features with similar sums across samples and
    near-uniform posteriors (an untrained or early-training model).
    """
    batch = check_batch(observation)
    grad_w, _ = last_layer_gradients(observation)
    sums = precise(grad_w).sum(dim=1)
    classes = sums.numel()
    negative = sums < 0
    k = int(negative.sum())
    if k == 0:
        impact = sums.new_tensor(0.0)
    else:
        impact = sums[negative].sum() / (batch * max(1.0 - k / classes, 1.0 / classes))
    counts = torch.zeros(classes, dtype=torch.long, device=sums.device)
    taken = 0
    for c in torch.argsort(sums)[:k].tolist():
        if taken == batch:
            break
        counts[c] += 1
        sums[c] -= impact
        taken += 1
    while taken < batch:
        c = int(sums.argmin())
        counts[c] += 1
        # subtract from the class just selected; a stale index here repeats one class forever
        sums[c] -= impact
        taken += 1
    return multiset(counts)


def _present_from(grad_b: Tensor, estimates: Tensor) -> Tensor:
    # a present class with a mean posterior above n_c/B has db_c >= 0, so its count estimate decides
    return (grad_b < 0) | (estimates >= 0.5)


_DUMMY_SAMPLES = 32
_DUMMY_SEED = 0


def _dummy_posteriors(observation: Observation) -> Tensor:
    """Mean softmax output of the model on seeded uniform-noise images.

    With train-mode BatchNorm the images go in batches of the client's size so the
    batch statistics are comparable; otherwise samples are independent and one batch
    suffices. The fixed seed makes the strategy deterministic.
    """
    model = observation.model
    batch_statistics = any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in model.modules())
    batch = observation.batch_size if batch_statistics else max(_DUMMY_SAMPLES, observation.batch_size)
    generator = torch.Generator().manual_seed(_DUMMY_SEED)
    dtype = next(model.parameters()).dtype
    precise = precise_dtype(observation.device)
    total = torch.zeros(observation.num_classes, dtype=precise, device=observation.device)
    seen = 0
    with torch.no_grad():
        while seen < max(_DUMMY_SAMPLES, observation.batch_size):
            noise = torch.rand((batch, *observation.image_shape), generator=generator)
            images = observation.normalise(noise.to(device=observation.device, dtype=dtype))
            total += torch.softmax(model(images).to(precise), dim=-1).sum(dim=0)
            seen += batch
    return total / seen


@register_label_strategy("count")
def count_labels(observation: Observation) -> Tensor:
    """Per-class counts from the bias gradient (Geng et al. 2021, "Towards General Deep
    Leakage in Federated Learning").

    db_c = p_bar_c - n_c/B exactly, so n_c = B (p_bar_c - db_c). Following Geng et al.,
    the unobserved mean posterior p_bar_c is estimated by the model's mean softmax
    output on at least 32 dummy inputs: seeded uniform-noise images, normalised
    like the client's data (in batches of the client's size under train-mode
    BatchNorm). Present classes are those with db_c < 0 or an estimate of at least
    0.5 (a present class whose mean posterior exceeds n_c/B has db_c >= 0). The
    estimates are rounded to exactly B labels by the largest remainder method,
    every present class getting at least one.
    Assumes the model's posteriors depend little on its input (true of untrained
    models, much less of trained ones): counts are exact while
    |p_bar_c - p_hat_c| < 1/(2B). Costs one to 32 forward passes.
    We follow the paper's zero-shot idea, not its exact equations: ours uses only
    the bias gradient, which every model here has, and the dummy-input posteriors.
    """
    batch = check_batch(observation)
    _, grad_b = last_layer_gradients(observation)
    grad_b = precise(grad_b)
    estimates = batch * (_dummy_posteriors(observation).to(grad_b) - grad_b)
    return multiset(round_to_total(estimates, batch, _present_from(grad_b, estimates)))


@register_label_strategy("ilrg")
def ilrg_labels(observation: Observation) -> Tensor:
    """Our implementation of the iLRG idea (Ma et al., ICLR 2023, "Instance-wise Batch
    Label Restoration via Gradients in Federated Learning").

    iLRG approximates a representative embedding and the post-softmax probabilities
    from the last layer's gradient and the model's own classifier, then solves the
    linear relation between gradient, probabilities and label counts. What we compute:

    1. Mean feature. For an absent class, dW_c = (1/B) sum_i p_ic z_i and
       db_c = (1/B) sum_i p_ic, so sum_{c absent} dW_c / sum_{c absent} db_c is a
       posterior-weighted mean of the batch's features z_bar. With no absent class
       we fall back to the least-squares fit of dW ~ db z_bar^T,
       z_bar = dW^T db / ||db||^2 (exact when every sample has the same features).
    2. Posteriors. p_hat = softmax(W z_bar + b) with the model's own W and b: the
       posterior of the mean feature stands in for the mean posterior. For absent
       classes p_bar_c = db_c exactly, so only present classes use p_hat, rescaled
       so that all posteriors sum to one.
    3. Counts. db_c = p_bar_c - n_c/B, so n_c = B (p_hat_c - db_c), rounded to
       exactly B by the largest remainder method (every present class gets at least
       one). Present classes are those with db_c < 0 or an estimate of at least
       0.5; steps 1-3 repeat until that set stops changing.

    Differences from the paper: iLRG recovers class-wise embeddings and solves the
    linear system of gradients, posteriors and labels for the counts with a
    Moore-Penrose pseudo-inverse; we recover one batch-mean embedding and solve the bias-gradient
    equation, which is exact given the mean posterior, per class in closed form.
    Assumes a final nn.Linear with bias and posteriors that vary little between
    the samples of the batch (untrained or early-training models): the error is
    |p_bar_c - softmax(W z_bar + b)_c|, and counts are exact while it stays below 1/(2B).
    """
    batch = check_batch(observation)
    grad_w, grad_b = (precise(g) for g in last_layer_gradients(observation))
    weight, bias = (precise(p).to(grad_w.device) for p in last_layer_parameters(observation))
    present = grad_b < 0
    estimates = torch.zeros_like(grad_b)
    for _ in range(grad_b.numel() + 1):
        absent = ~present
        absent_mass = grad_b[absent].sum()
        if bool(absent.any()) and float(absent_mass) > 0:
            z_bar = grad_w[absent].sum(dim=0) / absent_mass
        else:
            z_bar = grad_w.T @ grad_b / grad_b.square().sum().clamp(min=torch.finfo(grad_b.dtype).tiny)
        posterior = torch.softmax(weight @ z_bar + bias, dim=0)
        # unscaled estimates for every class decide membership; absent ones would be 0 by construction otherwise
        raw = batch * (posterior - grad_b)
        updated = _present_from(grad_b, raw)
        absent_mass = grad_b[~updated].sum()
        scale = (1 - absent_mass) / posterior[updated].sum() if bool(updated.any()) else 1.0
        estimates = torch.where(updated, batch * (posterior * scale - grad_b), torch.zeros_like(grad_b))
        if torch.equal(updated, present):
            break
        present = updated
    return multiset(round_to_total(estimates, batch, present))
