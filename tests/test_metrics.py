import math
import warnings

import torch

from bench.data import load_dataset
from bench.metrics import LPIPSScorer, label_accuracy, match, psnr, score, ssim


def sample_batch(n: int = 6) -> torch.Tensor:
    images, _ = load_dataset("cifar10_sample").batch(torch.arange(n))
    return images


def test_identical_images_give_infinite_psnr_and_unit_ssim():
    images = sample_batch()
    assert torch.isinf(psnr(images, images)).all()
    assert torch.allclose(ssim(images, images), torch.ones(len(images), dtype=torch.float64))


def test_psnr_of_a_known_error():
    images = sample_batch(2)
    noisy = (images + 0.1).clamp(0, 1)
    mse = (noisy - images).pow(2).flatten(1).mean(1).double()
    assert torch.allclose(psnr(noisy, images), -10 * torch.log10(mse), atol=1e-3)


def test_matching_restores_a_shuffled_batch():
    images = sample_batch(8)
    permutation = torch.tensor([3, 7, 0, 5, 1, 6, 2, 4])
    shuffled = images[permutation] + 0.05 * torch.rand(images.shape, generator=torch.Generator().manual_seed(0))
    order = match(shuffled, images)
    assert torch.equal(permutation[order], torch.arange(8))


def test_label_accuracy_counts_duplicates_as_a_multiset():
    truth = torch.tensor([2, 2, 2, 5])
    assert label_accuracy(torch.tensor([5, 2, 2, 2]), truth) == 1.0
    assert label_accuracy(torch.tensor([2, 2, 2, 2]), truth) == 0.75
    assert label_accuracy(torch.tensor([2, 5, 5, 5]), truth) == 0.5


def test_lpips_without_weights_is_nan_with_one_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    scorer = LPIPSScorer()
    images = sample_batch(2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = scorer(images, images)
        second = scorer(images, images)
    assert torch.isnan(first).all() and torch.isnan(second).all()
    messages = [str(w.message) for w in caught if "LPIPS" in str(w.message)]
    assert len(messages) == 1 and "alexnet" in messages[0].lower()


def test_score_matches_before_averaging(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    images = sample_batch(4)
    labels = torch.tensor([0, 1, 2, 3])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = score(images[[2, 0, 3, 1]], images, labels, labels, LPIPSScorer())
    assert math.isinf(result.psnr) and result.ssim == 1.0 and result.label_accuracy == 1.0


def test_matching_with_cdist_equals_the_pairwise_mean_squared_error_assignment():
    # match() takes its costs from torch.cdist (no B x B x D tensor); the assignment must equal the one from the
    # explicit pairwise mean squared errors, also for near-duplicates
    from scipy.optimize import linear_sum_assignment

    generator = torch.Generator().manual_seed(0)
    for batch in (1, 5, 48):
        truth = torch.rand((batch, 3, 8, 8), generator=generator)
        noisy = (truth + 0.3 * torch.randn(truth.shape, generator=generator)).clamp(0, 1)
        noisy[batch // 2 :] = truth[batch // 2 :] + 1e-4  # near-ties
        for reconstruction in (noisy[torch.randperm(batch, generator=generator)], torch.rand_like(truth)):
            cost = (truth.flatten(1)[:, None].double() - reconstruction.flatten(1)[None].double()).pow(2).mean(-1)
            rows, cols = linear_sum_assignment(cost.numpy())
            expected = torch.empty(batch, dtype=torch.long)
            expected[torch.as_tensor(rows)] = torch.as_tensor(cols)
            assert torch.equal(match(reconstruction, truth), expected)
