"""Inverting Gradients and GradInversion on the embedded sample (real numbers, no mocks)."""

import copy
import os
import shutil

import pytest
import torch

from bench.client import client_update
from bench.data import load_dataset
from bench.metrics import match, psnr
from bench.models import build_model
from bench.training import prepare_model
from methods import get_method
from methods.batched import GroupGradients
from methods.gradinversion import NO_BATCHNORM_MESSAGE
from methods.optimise import model_gradients
from methods.priors import BatchNormStatistics


@pytest.fixture(scope="module")
def crops():
    return load_dataset("crops", crops_per_image=4)


def observe(dataset, indices, model, *, labels_known=False):
    images, labels = dataset.batch(torch.tensor(indices))
    observation = client_update(
        model,
        images,
        labels,
        mean=dataset.mean,
        std=dataset.std,
        num_classes=dataset.num_classes,
        labels_known=labels_known,
    )
    return observation, images, labels


def convnet(dataset, seed=0):
    return build_model("convnet", num_classes=dataset.num_classes, image_shape=dataset.image_shape, seed=seed, width=16)


def test_ig_at_batch_one_reaches_well_above_a_random_image(crops):
    for index, seed in ((0, 0), (20, 1)):
        observation, images, labels = observe(crops, [index], convnet(crops, seed))
        result = get_method("ig", iterations=300, restarts=1).reconstruct(
            observation, generator=torch.Generator().manual_seed(seed)
        )
        noise = float(psnr(torch.rand(images.shape, generator=torch.Generator().manual_seed(seed)), images))
        reached = float(psnr(result.images, images))
        # measured: 18.3 and 21.0 dB (14.9-21.0 over four images and seeds); uniform noise scores 8-10 dB
        assert reached >= 14.0 and reached >= noise + 4.0, (index, reached, noise)
        assert result.labels.tolist() == labels.tolist()
        assert result.images.min() >= 0 and result.images.max() <= 1


def test_batched_candidate_gradients_equal_the_one_by_one_gradients(crops):
    groups, batch = 3, 2
    observation, _, labels = observe(crops, [0, 8], convnet(crops))
    model = copy.deepcopy(observation.model).double()  # train mode, BN running statistics frozen
    images = torch.randn(
        groups * batch, *observation.image_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )

    batched = images.clone().requires_grad_(True)
    gradients, bn_losses = GroupGradients(model, bn_prior=True)(batched.view(groups, batch, *images.shape[1:]), labels)
    (sum(g.pow(2).sum() for g in gradients) + bn_losses.sum()).backward()

    statistics = BatchNormStatistics(model)
    for k in range(groups):
        one = images[k * batch : (k + 1) * batch].clone().requires_grad_(True)
        expected = model_gradients(model, one, labels)
        bn_loss = statistics.collect()
        for got, want in zip(gradients, expected, strict=True):
            torch.testing.assert_close(got[k], want, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(bn_losses[k], bn_loss, rtol=1e-9, atol=1e-12)
        # the second-order path (through the per-candidate gradients to the images) matches too
        (sum(g.pow(2).sum() for g in expected) + bn_loss).backward()
        torch.testing.assert_close(batched.grad[k * batch : (k + 1) * batch], one.grad, rtol=1e-7, atol=1e-10)
    statistics.close()


def _bn_statistics_loss(observation, images_unit):
    statistics = BatchNormStatistics(observation.model)
    with torch.no_grad():
        observation.model(observation.normalise(images_unit))
    loss = float(statistics.collect())
    statistics.close()
    return loss


def test_the_bn_prior_lowers_the_bn_statistics_loss_on_a_trained_model(crops, tmp_path):
    train_images, train_labels = crops.batch(torch.arange(len(crops)))
    model = prepare_model(
        "convnet",
        state="trained",
        num_classes=crops.num_classes,
        image_shape=crops.image_shape,
        seed=0,
        width=16,
        train_images=train_images,
        train_labels=train_labels,
        mean=crops.mean,
        std=crops.std,
        cache_dir=tmp_path,
        train_steps=20,
    )
    observation, _, _ = observe(crops, [0, 12], model, labels_known=True)
    losses = {}
    for bn_weight in (0.0, 0.01):
        # signed steps: with plain Adam, 60 iterations are too few for any prior to act (see the docs)
        attack = get_method("gradinversion", iterations=60, group_size=1, bn_weight=bn_weight, signed=True)
        result = attack.reconstruct(observation, generator=torch.Generator().manual_seed(0))
        losses[bn_weight] = _bn_statistics_loss(observation, result.images)
    # measured: 35.9 without the prior, 13.1 with it
    assert losses[0.01] < 0.6 * losses[0.0], losses


def test_gradinversion_on_a_model_without_batchnorm_is_a_clear_error(crops):
    model = build_model("lenet", num_classes=crops.num_classes, image_shape=crops.image_shape, seed=0)
    observation, _, _ = observe(crops, [0], model)
    with pytest.raises(ValueError, match="needs a model with BatchNorm layers") as error:
        get_method("gradinversion", iterations=2).reconstruct(observation, generator=torch.Generator().manual_seed(0))
    assert str(error.value) == NO_BATCHNORM_MESSAGE
    # without the prior there is nothing to refuse
    get_method("gradinversion", iterations=2, bn_weight=0).reconstruct(
        observation, generator=torch.Generator().manual_seed(0)
    )


@pytest.mark.parametrize(
    ("method", "config"),
    [("ig", {"iterations": 5, "restarts": 2}), ("gradinversion", {"iterations": 5, "group_size": 2})],
)
def test_same_seed_gives_identical_reconstructions(crops, method, config):
    observation, images, _ = observe(crops, [0, 4, 8], convnet(crops))
    runs = [
        get_method(method, **config).reconstruct(observation, generator=torch.Generator().manual_seed(7))
        for _ in range(2)
    ]
    assert torch.equal(runs[0].images, runs[1].images)
    assert torch.equal(runs[0].labels, runs[1].labels)
    assert runs[0].images.shape == images.shape
    other = get_method(method, **config).reconstruct(observation, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(runs[0].images, other.images)


def test_gradinversion_returns_b_images_from_g_candidates(crops):
    observation, images, labels = observe(crops, [0, 4], convnet(crops))
    result = get_method("gradinversion", iterations=3, group_size=3).reconstruct(
        observation, generator=torch.Generator().manual_seed(0)
    )
    assert result.images.shape == images.shape
    assert result.extras["candidates"].shape == (3, *images.shape)
    assert sorted(result.labels.tolist()) == sorted(labels.tolist())
    assert len(match(result.images, images)) == 2


def test_batched_restarts_are_the_sequential_restarts_side_by_side(crops):
    # float64 so that the two summation orders agree to rounding; signed Adam amplifies float32 rounding
    iterations, restarts = 20, 3
    images, labels = crops.batch(torch.tensor([0, 8]))
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = convnet(crops)
        observation = client_update(
            model,
            images.double(),
            labels,
            mean=crops.mean,
            std=crops.std,
            num_classes=crops.num_classes,
            labels_known=True,
        )
        results = {
            batched: get_method(
                "ig", iterations=iterations, restarts=restarts, batch_restarts_up_to=2 if batched else 0
            ).reconstruct(observation, generator=torch.Generator().manual_seed(0))
            for batched in (False, True)
        }
    finally:
        torch.set_default_dtype(default)
    sequential, batched = results[False], results[True]
    assert len(sequential.trace) == restarts * iterations and len(batched.trace) == iterations
    finals = [sequential.trace[(r + 1) * iterations - 1].objective for r in range(restarts)]
    kept = min(range(restarts), key=finals.__getitem__)
    assert len(set(finals)) == restarts  # the restarts really start from different images
    kept_trace = sequential.trace[kept * iterations : (kept + 1) * iterations]
    for ours, theirs in zip(batched.trace, kept_trace, strict=True):
        assert ours.objective == pytest.approx(theirs.objective, rel=1e-10)
    torch.testing.assert_close(batched.images, sequential.images, rtol=0, atol=1e-9)
    assert batched.extras["objective"] == pytest.approx(sequential.extras["objective"], rel=1e-10)


def test_batched_restarts_refuse_an_optimiser_that_would_couple_them(crops):
    from methods.matching import MatchingSpec, invert
    from methods.optimise import OptimiserConfig

    observation, _, labels = observe(crops, [0], convnet(crops), labels_known=True)
    spec = MatchingSpec(
        loss="euclidean", optimiser=OptimiserConfig(optimiser="lbfgs", iterations=2), restarts=2, batch_restarts=True
    )
    with pytest.raises(ValueError, match="batch_restarts needs an elementwise optimiser"):
        invert(observation, labels, spec, generator=torch.Generator().manual_seed(0))


NO_COMPILER = shutil.which(os.environ.get("CXX", "c++")) is None


# One compilation per restart layout (each is a C++ build of ~15 s): one after another in the default suite, side by
# side (batch_restarts) in the slow one.
@pytest.mark.skipif(NO_COMPILER, reason="torch.compile needs a C++ compiler")
@pytest.mark.parametrize("restarts", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_compiled_loss_terms_compute_the_same_objective(crops, restarts):
    observation, _, _ = observe(crops, [0, 8], convnet(crops), labels_known=True)
    first = {}
    for compiled in (False, True):
        attack = get_method("ig", iterations=3, restarts=restarts, compile_loss=compiled)
        result = attack.reconstruct(observation, generator=torch.Generator().manual_seed(0))
        first[compiled] = result.trace[0].objective
    # float32 summation order only: the first objectives of ours and the perf floor differ by up to 2e-3 too
    assert first[True] == pytest.approx(first[False], rel=2e-3)


def test_compiled_loss_without_a_compiler_is_a_clear_error(crops, monkeypatch):
    from methods import matching

    monkeypatch.setattr(matching, "_compiled", {})
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    observation, _, _ = observe(crops, [0], convnet(crops), labels_known=True)
    with pytest.raises(ValueError, match="compile_loss needs a C\\+\\+ compiler"):
        get_method("ig", iterations=2, restarts=1, compile_loss=True).reconstruct(
            observation, generator=torch.Generator().manual_seed(0)
        )
