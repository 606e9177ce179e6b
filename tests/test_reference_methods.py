"""The reference floors (`noise`, `mean`) and the oracle flat-colour floor, on known inputs."""

import json
import math

import pytest
import torch

from bench.client import client_update
from bench.data import load_dataset
from bench.metrics import flat_colour_psnr, psnr
from bench.models import build_model
from methods import get_method
from methods.labels import infer_labels


@pytest.fixture(scope="module")
def crops_batch():
    dataset = load_dataset("crops")
    indices = torch.tensor([0, 1, 64, 65])  # two photos, two crops each
    images, labels = dataset.batch(indices)
    model = build_model("convnet", num_classes=dataset.num_classes, image_shape=dataset.image_shape, seed=0)
    observation = client_update(
        model, images, labels, mean=dataset.mean, std=dataset.std, num_classes=dataset.num_classes
    )
    return dataset, images, labels, observation


def test_flat_colour_psnr_on_known_images():
    # channel 0 is half 0 and half 1 (mean 0.5, MSE 0.25 on a third of the values), channels 1-2 are flat
    image = torch.zeros(1, 3, 2, 2)
    image[0, 0, 0] = 1.0
    image[0, 1] = 0.3
    mse = 0.25 / 3
    assert flat_colour_psnr(image) == pytest.approx([-10 * math.log10(mse)], abs=1e-5)  # piq adds 1e-8 to the MSE
    # a flat image is its own mean colour: infinitely good; the per-channel mean, not the grey mean, is used
    flat = torch.tensor([0.2, 0.5, 0.9]).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    assert flat_colour_psnr(flat) == [math.inf, math.inf]


def test_flat_colour_psnr_is_psnr_against_each_images_own_mean_colour():
    images, _ = load_dataset("cifar10_sample").batch(torch.arange(6))
    expected = [float(v) for v in psnr(images.mean(dim=(2, 3), keepdim=True).expand_as(images), images)]
    floors = flat_colour_psnr(images)
    assert floors == pytest.approx(expected)
    # each image's own mean colour beats one shared colour (the sample's mean) for every image
    shared = images.mean(dim=(0, 2, 3), keepdim=True).expand_as(images)
    assert all(own > other for own, other in zip(floors, psnr(shared, images).tolist(), strict=True))


def test_mean_returns_the_normalisation_mean_everywhere(crops_batch):
    dataset, _, _, observation = crops_batch
    result = get_method("mean").reconstruct(observation, generator=torch.Generator().manual_seed(0))
    expected = torch.tensor(dataset.mean).view(1, 3, 1, 1).expand(4, 3, 32, 32)
    assert torch.allclose(result.images, expected, atol=1e-6)
    # the model-space value of the mean image is 0: the data is known only through the normalisation
    assert observation.normalise(result.images).abs().max() < 1e-5


def test_noise_is_uniform_and_drawn_from_the_attack_generator(crops_batch):
    _, _, _, observation = crops_batch
    noise = get_method("noise")
    first = noise.reconstruct(observation, generator=torch.Generator().manual_seed(3)).images
    again = noise.reconstruct(observation, generator=torch.Generator().manual_seed(3)).images
    other = noise.reconstruct(observation, generator=torch.Generator().manual_seed(4)).images
    assert torch.equal(first, torch.rand(first.shape, generator=torch.Generator().manual_seed(3)))
    assert torch.equal(first, again) and not torch.equal(first, other)
    # 12,288 uniform values: mean 1/2 and variance 1/12 within a few standard errors
    assert abs(float(first.mean()) - 0.5) < 0.01 and abs(float(first.var()) - 1 / 12) < 0.003


@pytest.mark.parametrize("name", ["noise", "mean"])
def test_reference_labels_come_from_the_shared_strategy_and_ignore_the_gradient_for_images(name, crops_batch):
    _, truth, labels, observation = crops_batch
    attack = get_method(name)
    result = attack.reconstruct(observation, generator=torch.Generator().manual_seed(0))
    assert torch.equal(result.labels, infer_labels(attack.label_strategy, observation))
    assert sorted(result.labels.tolist()) == sorted(labels.tolist())  # lrb is exact on this untrained batch
    # the images do not depend on the gradient: a zeroed gradient gives the same images
    blind = type(observation)(
        **{**observation.__dict__, "gradients": tuple(torch.zeros_like(g) for g in observation.gradients)}
    )
    again = attack.reconstruct(blind, generator=torch.Generator().manual_seed(0))
    assert torch.equal(result.images, again.images)


def test_floors_on_the_crops_match_the_issue(crops_batch):
    # issue 11 measured over all 1,280 crops: noise 8.75 dB, mean image median 13.6 dB, own flat colour 15.0 dB.
    # On four crops the order must already hold: noise < mean < own flat colour.
    _, truth, _, observation = crops_batch
    generator = torch.Generator().manual_seed(0)
    noise = psnr(get_method("noise").reconstruct(observation, generator=generator).images, truth)
    mean = psnr(get_method("mean").reconstruct(observation, generator=generator).images, truth)
    own = torch.tensor(flat_colour_psnr(truth), dtype=torch.float64)
    assert (noise < mean).all() and (mean < own).all()
    assert 7.5 < float(noise.mean()) < 10


def test_a_trial_records_the_oracle_floor_and_per_image_ssim(run_cli, tmp_path):
    out = tmp_path / "one"
    done = run_cli("sweep=none", "method=mean", "batch_size=4", "dup_ratio=0.5", "threads=1", f"hydra.run.dir={out}")
    assert done.returncode == 0, done.stderr
    (path,) = (out / "records").glob("*.json")
    record = json.loads(path.read_text())
    assert record["status"] == "ok" and record["iterations"] == 0 and record["reference"] is True
    assert len(record["per_image_oracle_flat_psnr"]) == 4 and len(record["per_image_ssim"]) == 4
    assert record["oracle_flat_psnr"] == pytest.approx(sum(record["per_image_oracle_flat_psnr"]) / 4)
    assert record["ssim"] == pytest.approx(sum(record["per_image_ssim"]) / 4)
    # a flat image of each image's own mean colour is the best flat image in MSE: the mean image cannot beat it
    pairs = zip(record["per_image_psnr"], record["per_image_oracle_flat_psnr"], strict=True)
    assert all(math.isfinite(got) and got <= own for got, own in pairs)
    assert record["psnr"] < record["oracle_flat_psnr"]
