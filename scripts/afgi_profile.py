"""Where AFGI's attack time goes: a per-stage, per-part CPU-time profile (docs/methods/afgi.md, "Where the time goes").

    python scripts/afgi_profile.py --batch-sizes 1 8 48 --repeats 20

For each batch size it draws the default round (crops, untrained convnet, dup_ratio least, seed 0), then times
with the process's CPU time (robust to other jobs on a shared machine), one thread:

* the label block: AFGI's ``lrb`` and IG's ``ilrg`` label strategies, once each (the median of ``--repeats``);
* one iteration of each stage, split into its parts: the forward and first backward through the model (the
  client's gradient, with its graph), the gradient distance (1 - cosine), the prior (stage one: V only, IG's
  TV; stage two: the full VME with its Sobel edges), the outer backward (through the double backward), and the
  optimiser's step with the clamp; plus the coarse-to-fine projection of ``methods.coarse`` when asked for.

Medians over ``--repeats`` iterations, in milliseconds; the ``total`` column is the sum of the parts.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

import torch

from bench import config as schema
from bench.trial import draw_round, settings_for
from methods.afgi import AFGI
from methods.coarse import project
from methods.labels import labels_for
from methods.losses import build_gradient_loss
from methods.optimise import model_gradients
from methods.priors import total_variation


def cpu_ms(work: Callable[[], object], repeats: int) -> float:
    """Median CPU milliseconds of ``work()`` over ``repeats`` calls (after one untimed call)."""
    work()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        work()
        times.append(1000 * (time.process_time() - start))
    return statistics.median(times)


def weighted_tv(weight: float, images: torch.Tensor) -> torch.Tensor:
    return weight * total_variation(images)


def stage_parts(observation, labels: torch.Tensor, prior, repeats: int, coarse: int) -> dict[str, float]:
    """Median CPU ms of each part of one AFGI iteration with ``prior`` (a callable on model-space images)."""
    distance = build_gradient_loss("cosine", observation.gradients)
    images = (0.1 * torch.randn(observation.batch_size, *observation.image_shape)).requires_grad_(True)
    optimiser = torch.optim.Adam([images], lr=0.01)
    low, high = observation.input_box()
    parts: dict[str, list[float]] = {k: [] for k in ("model gradient", "distance", "prior", "outer backward", "step")}
    if coarse:
        parts["coarse projection"] = []
    for index in range(repeats + 1):
        marks = [time.process_time()]
        gradients = model_gradients(observation.model, images, labels)
        marks.append(time.process_time())
        value = distance(gradients)
        marks.append(time.process_time())
        value = value + prior(images)
        marks.append(time.process_time())
        optimiser.zero_grad(set_to_none=True)
        value.backward(inputs=[images])
        marks.append(time.process_time())
        with torch.no_grad():
            images.grad.sign_()
            optimiser.step()
            images.clamp_(low, high)
        marks.append(time.process_time())
        if coarse:
            project(images.grad, coarse)
            marks.append(time.process_time())
        if index:  # the first iteration warms up the allocator
            for name, before, after in zip(parts, marks, marks[1:], strict=False):
                parts[name].append(1000 * (after - before))
    return {name: statistics.median(values) for name, values in parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 48])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--coarse", type=int, default=4, help="grid side of the coarse projection timed (0: none)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print("| B | stage | model gradient | distance | prior | outer backward | step | coarse proj. | total (ms) |")
    print("|---|---|---|---|---|---|---|---|---|")
    labels_rows = []
    for batch_size in args.batch_sizes:
        settings = settings_for("afgi", batch_size=batch_size, seed=0, dup_ratio="least")
        schema.validate(settings)
        observation = draw_round(settings, torch.device("cpu")).observation
        lrb_ms = cpu_ms(functools.partial(labels_for, observation, "lrb"), args.repeats)
        ilrg_ms = cpu_ms(functools.partial(labels_for, observation, "ilrg"), args.repeats)
        labels_rows.append((batch_size, lrb_ms, ilrg_ms))
        labels = labels_for(observation, "lrb")
        afgi = AFGI()
        staged = afgi.prior(observation)
        assert staged is not None
        with torch.no_grad():  # stage two's targets, read off some image as AFGI reads them off stage one's result
            staged.set_targets(torch.zeros(observation.batch_size, *observation.image_shape))
        stages = {
            "1 (V only, = IG's TV)": functools.partial(weighted_tv, afgi.tv_weight),
            "2 (full VME)": staged.full,
        }
        for stage, prior in stages.items():
            parts = stage_parts(observation, labels, prior, args.repeats, args.coarse)
            cells = [f"{parts[k]:.1f}" for k in ("model gradient", "distance", "prior", "outer backward", "step")]
            cells.append(f"{parts['coarse projection']:.2f}" if args.coarse else "-")
            total = sum(v for k, v in parts.items() if k != "coarse projection")
            print(f"| {batch_size} | {stage} | " + " | ".join(cells) + f" | {total:.1f} |")
    print("\n| B | label block: lrb (ms) | ilrg (IG's, ms) |\n|---|---|---|")
    for batch_size, lrb_ms, ilrg_ms in labels_rows:
        print(f"| {batch_size} | {lrb_ms:.1f} | {ilrg_ms:.1f} |")


if __name__ == "__main__":
    main()
