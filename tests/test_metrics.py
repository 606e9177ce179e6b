import math
import warnings

import numpy as np
import pytest
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


# --- PSNR and SSIM against independent references ------------------------------------------------------------------
# The SSIM convention we report (Wang et al. 2004, as piq and scikit-image implement it): an 11x11 Gaussian window
# with sigma 1.5, K1 = 0.01, K2 = 0.03, data range 1, population (not sample) covariances, the SSIM map over the
# "valid" region only (no padding: 22x22 of a 32x32 image), averaged over pixels and then over the RGB channels.
# The reference below is that formula in float64 numpy, written here without torch or piq; scikit-image with the
# same convention is a second reference. bench.metrics scores in float64, so SSIM agrees to rounding (1e-9).
# PSNR is 10 log10(1 / MSE) with data range 1; piq adds 1e-8 to the MSE (against log of zero), which moves a value
# by 4.3e-8 / MSE dB: under 1e-4 dB down to MSE = 4.3e-4 (33.6 dB), so PSNR is compared to 1e-4 dB.
SSIM_SIGMA, SSIM_WINDOW, K1, K2 = 1.5, 11, 0.01, 0.03
SSIM_TOLERANCE, PSNR_TOLERANCE_DB = 1e-9, 1e-4


def reference_psnr(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    mse = ((x.astype(np.float64) - y.astype(np.float64)) ** 2).reshape(len(x), -1).mean(1)
    return 10 * np.log10(1.0 / mse)


def _window() -> np.ndarray:
    offsets = np.arange(SSIM_WINDOW) - SSIM_WINDOW // 2
    line = np.exp(-(offsets**2) / (2 * SSIM_SIGMA**2))
    window = np.outer(line, line)
    return window / window.sum()


def _local_mean(plane: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Weighted mean over every fully contained window position (a 'valid' correlation), by explicit shifts."""
    size = window.shape[0]
    height, width = plane.shape[0] - size + 1, plane.shape[1] - size + 1
    out = np.zeros((height, width))
    for i in range(size):
        for j in range(size):
            out += window[i, j] * plane[i : i + height, j : j + width]
    return out


def reference_ssim(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    window, c1, c2 = _window(), K1**2, K2**2
    values = []
    for image_x, image_y in zip(x.astype(np.float64), y.astype(np.float64), strict=True):
        channels = []
        for a, b in zip(image_x, image_y, strict=True):
            mu_a, mu_b = _local_mean(a, window), _local_mean(b, window)
            var_a = _local_mean(a * a, window) - mu_a**2
            var_b = _local_mean(b * b, window) - mu_b**2
            cov = _local_mean(a * b, window) - mu_a * mu_b
            ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
            channels.append(ssim_map.mean())
        values.append(np.mean(channels))
    return np.array(values)


def degraded_versions() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(candidate, truth) pairs: a flat grey image, a Gaussian blur and additive Gaussian noise, on real images."""
    from torchvision.transforms.functional import gaussian_blur

    truth = sample_batch(6)
    noise = 0.1 * torch.randn(truth.shape, generator=torch.Generator().manual_seed(0))
    return {
        "grey": (torch.full_like(truth, 0.5), truth),
        "blurred": (gaussian_blur(truth, kernel_size=[5, 5], sigma=[1.5, 1.5]), truth),
        "noisy": ((truth + noise).clamp(0, 1), truth),
    }


@pytest.mark.parametrize("case", ["grey", "blurred", "noisy"])
def test_psnr_and_ssim_equal_a_float64_reference(case):
    candidate, truth = degraded_versions()[case]
    x, y = candidate.numpy(), truth.numpy()
    np.testing.assert_allclose(psnr(candidate, truth).numpy(), reference_psnr(x, y), rtol=0, atol=PSNR_TOLERANCE_DB)
    expected = reference_ssim(x, y)
    np.testing.assert_allclose(ssim(candidate, truth).numpy(), expected, rtol=0, atol=SSIM_TOLERANCE)
    # the three cases span the scale: the values are not all near 0 or 1 where a wrong window would hide
    assert expected.min() < 0.9


@pytest.mark.parametrize("case", ["grey", "blurred", "noisy"])
def test_psnr_and_ssim_equal_scikit_image(case):
    metrics = pytest.importorskip("skimage.metrics", reason="scikit-image is in the test extra")
    candidate, truth = degraded_versions()[case]
    for x, y, ours_psnr, ours_ssim in zip(
        candidate.double().numpy(), truth.double().numpy(), psnr(candidate, truth), ssim(candidate, truth), strict=True
    ):
        theirs_psnr = metrics.peak_signal_noise_ratio(y, x, data_range=1.0)
        theirs_ssim = metrics.structural_similarity(
            x,
            y,
            data_range=1.0,
            channel_axis=0,
            gaussian_weights=True,
            sigma=SSIM_SIGMA,
            use_sample_covariance=False,
            K1=K1,
            K2=K2,
        )
        assert abs(float(ours_psnr) - theirs_psnr) < PSNR_TOLERANCE_DB
        assert abs(float(ours_ssim) - theirs_ssim) < SSIM_TOLERANCE


@pytest.mark.parametrize("shape", [(4, 3, 32, 32), (2, 3, 7, 9), (2, 1, 64, 48), (2, 3, 400, 520)])
def test_psnr_and_ssim_are_piqs_numbers_to_the_last_bit(shape):
    """bench.metrics computes PSNR and SSIM itself (importing piq costs ~2 s per process) with piq's operations:
    the same values bit for bit, downsampling of large images and a window shrunk for small ones included."""
    piq = pytest.importorskip("piq")
    generator = torch.Generator().manual_seed(sum(shape))
    truth = torch.rand(shape, generator=generator, dtype=torch.float64)
    noisy = (truth + 0.1 * torch.randn(shape, generator=generator, dtype=torch.float64)).clamp(0, 1)
    window = min(11, shape[-1], shape[-2])
    window -= 1 - window % 2
    assert torch.equal(psnr(noisy, truth), piq.psnr(noisy, truth, data_range=1.0, reduction="none"))
    expected = piq.ssim(noisy, truth, data_range=1.0, kernel_size=window, reduction="none")
    assert torch.equal(ssim(noisy, truth), expected)
