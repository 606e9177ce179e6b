"""The harness's own work per trial (sampling, model, client update, progress scoring, metrics, records),
timed with the functions a trial calls, and its share of a quick-profile trial."""

from __future__ import annotations

import argparse
import math
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bench.perf.measure import timed
from bench.perf.rounds import SEED, default_dataset, least_dup_ratio, model_options, profile_iterations
from methods.base import draw


def run_harness(model: str, batch_size: int, args: argparse.Namespace) -> dict[str, Any]:
    """Time each harness piece of a trial with the functions bench.run uses (median of a few calls)."""
    from bench import records
    from bench.client import client_update
    from bench.images import save_images
    from bench.metrics import LPIPSScorer, match, psnr, score
    from bench.sampler import sample_batch
    from bench.training import prepare_model

    device = torch.device(args.device)
    dataset = default_dataset()
    repeats = 3
    pieces: dict[str, float] = {}

    def sampling() -> tuple[Tensor, Tensor]:
        ratio = least_dup_ratio(dataset, batch_size)
        indices = sample_batch(dataset.labels, dataset.num_classes, batch_size, ratio, SEED)
        truth, labels = dataset.batch(indices)
        return truth.to(device), labels.to(device)

    pieces["sampling"], (truth, labels) = timed(sampling, device, repeats)

    def build() -> nn.Module:
        return prepare_model(
            model,
            state="untrained",
            num_classes=dataset.num_classes,
            image_shape=dataset.image_shape,
            seed=SEED,
            mean=dataset.mean,
            std=dataset.std,
            **model_options(model),
        ).to(device)

    pieces["model"], network = timed(build, device, repeats)

    def client() -> Any:
        return client_update(
            network, truth, labels, mean=dataset.mean, std=dataset.std, num_classes=dataset.num_classes
        )

    pieces["client_update"], observation = timed(client, device, repeats)

    generator = torch.Generator().manual_seed(SEED)
    model_space = draw("randn", truth.shape, generator, device)

    def progress_call() -> float:
        # the method's snapshot, then bench.run's on_progress (optimise calls both under no_grad)
        with torch.no_grad():
            images = observation.denormalise(model_space).clamp(0, 1)
            order = match(images, truth)
            return float(psnr(images[order], truth).mean())

    pieces["progress_call"], _ = timed(progress_call, device, 10)

    reconstruction = draw("rand", truth.shape, generator, device)
    lpips = LPIPSScorer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pieces["metrics"], scores = timed(lambda: score(reconstruction, truth, labels, labels, lpips), device, repeats)
    lpips_active = math.isfinite(scores.lpips)
    pieces["lpips"] = 0.0  # inside "metrics" when the AlexNet weights are on disk
    lpips_note = "included in metrics"
    if not lpips_active:
        # without the weights score() returns NaN at no cost; time the same network with random weights instead
        try:
            import lpips as lpips_package

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                stand_in = lpips_package.LPIPS(net="alex", pnet_rand=True, verbose=False).eval().to(device)

            def lpips_call() -> Tensor:
                with torch.inference_mode():
                    return stand_in(reconstruction * 2 - 1, truth * 2 - 1)

            pieces["lpips"], _ = timed(lpips_call, device, repeats)
            lpips_note = "AlexNet weights absent: timed LPIPS with a random-weight AlexNet (same cost)"
        except Exception as error:  # lpips missing or broken: report, do not fail the benchmark
            lpips_note = f"not timed ({type(error).__name__}: {error})"

    trace = [[i, 0.01 * i, 1.0 / i] for i in range(1, 501)]
    record = {
        "record_version": records.RECORD_VERSION,
        "key": "0" * 16,
        "status": "ok",
        "config": {"model": model, "batch_size": batch_size},
        "psnr": scores.psnr,
        "ssim": scores.ssim,
        "lpips": scores.lpips,
        "per_image_psnr": scores.per_image_psnr,
        "true_labels": labels.tolist(),
        "predicted_labels": labels.tolist(),
        "trace": records.thin(trace),
        "progress": [[i, 0.01 * i, 10.0] for i in range(25, 501, 25)],
    }
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)

        def write() -> None:
            records.write_atomic(records.record_path(out, "0" * 16), records.canonical_json(record) + "\n")

        def images() -> None:
            save_images(out, "0" * 16, truth, reconstruction[torch.tensor(scores.order)], 8)

        pieces["records"], _ = timed(write, device, repeats)
        pieces["images"], _ = timed(images, device, repeats)
    return {
        "model": model,
        "batch_size": batch_size,
        "seconds": pieces,
        "lpips_active": lpips_active,
        "lpips_note": lpips_note,
    }


def trial_share(cell: dict[str, Any], harness: dict[str, Any], score_every: int) -> dict[str, Any] | None:
    """A quick-profile trial of this cell: attack (setup, label inference, iterations) plus harness pieces."""
    iterations = profile_iterations(cell["method"])
    if cell.get("status") != "ok" or iterations is None or not math.isfinite(cell.get("ours_s_per_iter", math.nan)):
        return None
    seconds = harness["seconds"]
    labels = (cell.get("label_inference") or {}).get("seconds", 0.0)
    setup = cell.get("ours_setup_s", 0.0)
    attack = iterations * cell["ours_s_per_iter"] + (setup if math.isfinite(setup) else 0.0) + labels
    calls = math.ceil(iterations / score_every) if score_every else 0
    parts = {
        "sampling": seconds["sampling"],
        "model": seconds["model"],
        "client_update": seconds["client_update"],
        "attack": attack,
        "progress_scoring": calls * seconds["progress_call"],
        "metrics": seconds["metrics"],
        "lpips": seconds.get("lpips", 0.0),
        "records": seconds["records"],
        "images": seconds["images"],
    }
    total = sum(parts.values())
    return {
        "method": cell["method"],
        "model": cell["model"],
        "batch_size": cell["batch_size"],
        "profile_iterations": iterations,
        "progress_calls": calls,
        "trial_s": total,
        "seconds": parts,
        "pct": {k: 100 * v / total for k, v in parts.items()},
        "harness_pct": 100 * (total - attack) / total,
    }
