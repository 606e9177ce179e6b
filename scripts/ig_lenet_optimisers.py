"""Why IG stays near 17 dB on DLG's LeNet at B = 1: its distance and its optimiser, one at a time.

    python scripts/ig_lenet_optimisers.py              # images 0 and 20 of ``crops``, model seeds 0 and 1
    python scripts/ig_lenet_optimisers.py --no-tv      # the same without IG's TV prior

Each line is one FedSGD reconstruction of one image through the shared ``methods.matching.invert`` (the code IG,
DLG and iDLG run), with the true label, from the same random start: IG's recipe (cosine distance, Adam on signed
gradients with its step schedule, clamping to the data box), then each ingredient swapped for DLG's (euclidean
distance, L-BFGS; with a strong-Wolfe line search, as iDLG). PSNR in dB against the image. docs/fedavg.md gives
the measured table; nothing here changes a method's defaults.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.client import client_update  # noqa: E402
from bench.data import load_dataset  # noqa: E402
from bench.metrics import psnr  # noqa: E402
from bench.models import build_model  # noqa: E402
from methods.matching import MatchingSpec, invert  # noqa: E402
from methods.optimise import OptimiserConfig  # noqa: E402
from methods.priors import total_variation  # noqa: E402


def recipes() -> dict[str, dict]:
    signed = OptimiserConfig("adam", lr=0.1, iterations=240, signed=True, schedule="step")
    lbfgs = OptimiserConfig("lbfgs", lr=1.0, iterations=100, lbfgs_line_search="strong_wolfe")
    return {
        "cosine, signed Adam, 240 steps (IG's quick profile)": {"loss": "cosine", "optimiser": signed, "clamp": True},
        "cosine, signed Adam, 2,000 steps": {
            "loss": "cosine",
            "optimiser": OptimiserConfig("adam", lr=0.1, iterations=2000, signed=True, schedule="step"),
            "clamp": True,
        },
        "cosine, plain Adam, 2,000 steps": {
            "loss": "cosine",
            "optimiser": OptimiserConfig("adam", lr=0.1, iterations=2000, signed=False, schedule="step"),
            "clamp": True,
        },
        "euclidean, signed Adam, 2,000 steps": {
            "loss": "euclidean",
            "optimiser": OptimiserConfig("adam", lr=0.1, iterations=2000, signed=True, schedule="step"),
            "clamp": True,
        },
        "cosine, L-BFGS, 100 steps": {"loss": "cosine", "optimiser": lbfgs, "clamp": False},
        "euclidean, L-BFGS, 100 steps (DLG's objective)": {"loss": "euclidean", "optimiser": lbfgs, "clamp": False},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-tv", action="store_true", help="leave out IG's TV prior (weight 0.1)")
    parser.add_argument("--cases", type=int, nargs="+", default=[0, 20], help="image indices; model seed = position")
    args = parser.parse_args()
    torch.set_num_threads(1)
    crops = load_dataset("crops", crops_per_image=4)
    prior = None if args.no_tv else (lambda images: 0.1 * total_variation(images))
    mean = torch.tensor(crops.mean).view(1, -1, 1, 1)
    std = torch.tensor(crops.std).view(1, -1, 1, 1)
    for seed, index in enumerate(args.cases):
        model = build_model("lenet", num_classes=crops.num_classes, image_shape=crops.image_shape, seed=seed)
        images, labels = crops.batch(torch.tensor([index]))
        observation = client_update(
            model, images, labels, mean=crops.mean, std=crops.std, num_classes=crops.num_classes
        )
        for name, recipe in recipes().items():
            started = time.process_time()
            spec = MatchingSpec(init="randn", prior=prior, **recipe)
            result = invert(observation, labels, spec, generator=torch.Generator().manual_seed(0))
            reconstruction = (result.images_model * std + mean).clamp(0, 1)
            seconds = time.process_time() - started
            print(
                f"image {index:3d} (model seed {seed})  {name:52s} {float(psnr(reconstruction, images)):6.2f} dB"
                f"  ({seconds:.1f} s CPU)",
                flush=True,
            )


if __name__ == "__main__":
    main()
