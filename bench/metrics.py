"""Scoring of a reconstruction against the ground truth.

All image metrics take images in [0,1] shaped (B,C,H,W). Reconstructions are
matched to the ground truth (Hungarian assignment on MSE) before any
per-image metric, because duplicate labels make any assumed order wrong.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"


def match(reconstruction: Tensor, truth: Tensor) -> Tensor:
    """Permutation ``order`` such that ``reconstruction[order][i]`` best matches ``truth[i]`` (min total MSE)."""
    truth_flat, reconstruction_flat = truth.flatten(1).double(), reconstruction.flatten(1).double()
    # pairwise distances without a (B, B, D) difference tensor; the direct form, not the matrix-product one,
    # whose cancellation could reorder near-equal costs
    distance = torch.cdist(truth_flat, reconstruction_flat, compute_mode="donot_use_mm_for_euclid_dist")
    cost = distance.square() / truth_flat.shape[1]
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    order = torch.empty(len(rows), dtype=torch.long)
    order[torch.as_tensor(rows)] = torch.as_tensor(cols)
    return order.to(reconstruction.device)


# PSNR and SSIM are piq's computations, op for op, so that the numbers are piq's to the last bit
# (tests/test_metrics.py checks it): importing piq imports torchvision and torch._dynamo, about 2 s of CPU in
# every process that scores a trial.
_PSNR_EPS = 1e-8  # piq's guard against log10(0); exact matches are reported as +inf below
_SSIM_SIGMA, _SSIM_K1, _SSIM_K2 = 1.5, 0.01, 0.03


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Per-image PSNR in dB with data range 1 (piq's formula); identical images give +inf."""
    x, y = x.clamp(0, 1).double(), y.clamp(0, 1).double()
    mse = torch.mean((x - y) ** 2, dim=[1, 2, 3])
    values = -10 * torch.log10(mse + _PSNR_EPS)
    exact = (x - y).flatten(1).abs().amax(1) == 0
    return torch.where(exact, torch.full_like(values, math.inf), values)


def _gaussian_window(size: int, channels: int, like: Tensor) -> Tensor:
    coords = torch.arange(size, dtype=like.dtype, device=like.device)
    coords -= (size - 1) / 2.0
    squared = coords**2
    window = (-(squared.unsqueeze(0) + squared.unsqueeze(1)) / (2 * _SSIM_SIGMA**2)).exp()
    window /= window.sum()
    return window.unsqueeze(0).repeat(channels, 1, 1, 1)


def ssim(x: Tensor, y: Tensor) -> Tensor:
    """Per-image SSIM (Wang et al. 2004, as piq computes it): 11x11 Gaussian window (sigma 1.5, shrunk for images
    smaller than it), valid region only, images of 384 px and more average-pooled by round(side / 256) first."""
    x, y = x.clamp(0, 1).double(), y.clamp(0, 1).double()
    factor = max(1, round(min(x.shape[-2:]) / 256))
    if factor > 1:
        x, y = F.avg_pool2d(x, kernel_size=factor), F.avg_pool2d(y, kernel_size=factor)
    size = min(11, x.shape[-1], x.shape[-2])
    size -= 1 - size % 2
    channels = x.shape[1]
    window = _gaussian_window(size, channels, x)

    def local_mean(image: Tensor) -> Tensor:
        return F.conv2d(image, weight=window, stride=1, padding=0, groups=channels)

    c1, c2 = _SSIM_K1**2, _SSIM_K2**2
    mu_x, mu_y = local_mean(x), local_mean(y)
    mu_xx, mu_yy, mu_xy = mu_x**2, mu_y**2, mu_x * mu_y
    sigma_xx = local_mean(x**2) - mu_xx
    sigma_yy = local_mean(y**2) - mu_yy
    sigma_xy = local_mean(x * y) - mu_xy
    contrast_structure = (2.0 * sigma_xy + c2) / (sigma_xx + sigma_yy + c2)
    similarity = (2.0 * mu_xy + c1) / (mu_xx + mu_yy + c1) * contrast_structure
    return similarity.mean(dim=(-1, -2)).mean(1)


def flat_colour_psnr(truth: Tensor) -> list[float]:
    """Per image, the PSNR of a flat image of that image's own mean colour (per-channel mean over its pixels).

    An oracle floor: it needs the true image, so no attack can output it, but an attack that beats it by little has
    recovered hardly more than each image's average colour.
    """
    with torch.inference_mode():
        truth = truth.detach().clamp(0, 1).double()
        flat = truth.mean(dim=(-2, -1), keepdim=True).expand_as(truth)
        return [float(v) for v in psnr(flat, truth)]


class LPIPSScorer:
    """LPIPS (AlexNet) that reports NaN, with one warning, when the backbone weights are not on disk.

    ``lpips`` fetches torchvision's AlexNet weights; offline that would fail or hang,
    so we look for the file in the torch hub cache first and never trigger a download.
    """

    def __init__(self, network: torch.nn.Module | None = None) -> None:
        # a ready LPIPS network (an ``lpips.LPIPS``), e.g. one with random weights for a benchmark; default: load it
        self._net = network
        self._missing_reason: str | None = None
        self._warned = False

    def weights_path(self) -> Path:
        return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE

    def _load(self, device: torch.device):
        if self._net is None and self._missing_reason is None:
            path = self.weights_path()
            if not path.is_file():
                self._missing_reason = (
                    f"LPIPS is reported as NaN: the AlexNet weights are not at {path}. "
                    f"Copy {ALEXNET_FILE} there (or set TORCH_HOME) to get real LPIPS values."
                )
            else:
                import lpips  # deferred: importing it is slow and it is optional at run time

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self._net = lpips.LPIPS(net="alex", verbose=False).eval()
        if self._net is not None:
            self._net = self._net.to(device)
        return self._net

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        net = self._load(x.device)
        if net is None:
            if not self._warned:
                warnings.warn(self._missing_reason, stacklevel=2)
                self._warned = True
            return torch.full((x.shape[0],), math.nan)
        with torch.inference_mode():
            return net(x.float() * 2 - 1, y.float() * 2 - 1, normalize=False).flatten().cpu()


def label_accuracy(predicted: Tensor, truth: Tensor) -> float:
    """Multiset overlap: sum over classes of min(predicted count, true count), divided by B."""
    pred, true = Counter(predicted.flatten().tolist()), Counter(truth.flatten().tolist())
    return sum(min(n, pred[c]) for c, n in true.items()) / max(len(truth), 1)


@dataclass(frozen=True)
class Scores:
    psnr: float
    ssim: float
    lpips: float
    label_accuracy: float
    per_image_psnr: list[float]
    per_image_ssim: list[float]
    order: list[int]


def score(
    reconstruction: Tensor, truth: Tensor, predicted_labels: Tensor, true_labels: Tensor, lpips: LPIPSScorer
) -> Scores:
    """Match, then average the per-image metrics over the batch."""
    with torch.inference_mode():
        recon, truth = reconstruction.detach().float(), truth.detach().float()
        order = match(recon, truth)
        matched = recon[order]
        per_psnr = psnr(matched, truth)
        per_ssim = ssim(matched, truth)
        return Scores(
            psnr=float(per_psnr.mean()),
            ssim=float(per_ssim.mean()),
            lpips=float(lpips(matched, truth).mean()),
            label_accuracy=label_accuracy(predicted_labels.cpu(), true_labels.cpu()),
            per_image_psnr=[float(v) for v in per_psnr],
            per_image_ssim=[float(v) for v in per_ssim],
            order=order.tolist(),
        )
