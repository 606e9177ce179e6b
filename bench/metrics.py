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


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Per-image PSNR in dB with data range 1 (piq); identical images give +inf."""
    import piq  # here, not at the top: piq imports torchvision, ~1.5 s that a run failing on bad input never needs

    x, y = x.clamp(0, 1).double(), y.clamp(0, 1).double()
    values = piq.psnr(x, y, data_range=1.0, reduction="none")
    exact = (x - y).flatten(1).abs().amax(1) == 0
    return torch.where(exact, torch.full_like(values, math.inf), values)


def ssim(x: Tensor, y: Tensor) -> Tensor:
    """Per-image SSIM (piq, 11x11 Gaussian window, shrunk for images smaller than the window)."""
    import piq

    kernel = min(11, x.shape[-1], x.shape[-2])
    kernel -= 1 - kernel % 2
    return piq.ssim(
        x.clamp(0, 1).double(), y.clamp(0, 1).double(), data_range=1.0, kernel_size=kernel, reduction="none"
    )


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
