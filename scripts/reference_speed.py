"""IG per iteration, ours against breaching's (the reference framework), on the same observation.

    pip install --no-deps breaching==0.1.2     # optional, only for this script; not a gia-bench dependency
    python scripts/reference_speed.py [--models lenet convnet resnet18] [--batch-sizes 1 8] [--pairs 5]

Each cell is one FedSGD round drawn as ``bench.perf`` draws it (untrained model, labels known, ``dup_ratio=least``).
Ours is ``ig`` with its quick-profile settings and one restart (``bench.perf.rounds.build_attack``); breaching's is
its ``invertinggradients`` attack config (cosine objective, Adam on signed gradients, step decay, boxed, TV), one
trial, labels given. Both run on one thread with the same glibc malloc setting (``--malloc``) and are timed in CPU
time, interleaved, as ``N`` and ``2 N`` iterations: the difference divided by ``N`` is the cost of one iteration
with every fixed cost (setup, scoring, copies) taken out. The table gives the median over the pairs.
docs/performance.md quotes the measured figures.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.perf.rounds import build_attack, default_dataset, draw_round, has_batch_norm  # noqa: E402
from bench.system import tune_malloc  # noqa: E402


def breaching_attacker(model: torch.nn.Module, iterations: int):
    try:
        import breaching
    except ImportError:
        sys.exit("breaching is not installed: pip install --no-deps breaching==0.1.2 (this script only)")
    logging.getLogger("breaching").setLevel(logging.WARNING)
    overrides = [f"optim.max_iterations={iterations}", "optim.callback=1000000", "restarts.num_trials=1"]
    with contextlib.redirect_stdout(io.StringIO()):  # it prints the config it loads
        config = breaching.get_attack_config("invertinggradients", overrides=overrides)
    setup = {"dtype": torch.float, "device": torch.device("cpu")}
    return breaching.attacks.prepare_attack(model, torch.nn.CrossEntropyLoss(), config, setup)


def breaching_seconds(observation, iterations: int) -> float:
    from omegaconf import OmegaConf

    attacker = breaching_attacker(observation.model, iterations)
    metadata = OmegaConf.create(
        {"shape": list(observation.image_shape), "mean": list(observation.mean), "std": list(observation.std)}
    )
    metadata.modality = "vision"
    payload = [
        {
            "parameters": [p.detach().clone() for p in observation.model.parameters()],
            "buffers": None,
            "metadata": metadata,
        }
    ]
    shared = [
        {
            "gradients": [g.detach().clone() for g in observation.gradients],
            "buffers": None,
            "metadata": {
                "num_data_points": observation.batch_size,
                "labels": observation.labels,
                "local_hyperparams": None,
            },
        }
    ]
    torch.manual_seed(0)  # breaching draws its start from the global generator
    start = time.process_time()
    attacker.reconstruct(payload, shared, server_secrets={}, dryrun=False)
    return time.process_time() - start


def ours_seconds(observation, iterations: int) -> float:
    attack = build_attack("ig", iterations=iterations, model_has_bn=has_batch_norm(observation.model), lbfgs_max_iter=2)
    start = time.process_time()
    attack.reconstruct(observation, generator=torch.Generator().manual_seed(0))
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lenet", "convnet", "resnet18"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--pairs", type=int, default=5, help="interleaved ours/breaching pairs per cell")
    parser.add_argument("--target-seconds", type=float, default=2.0, help="aim for N iterations of about this long")
    parser.add_argument(
        "--malloc", choices=("tuned", "default"), default="tuned", help="glibc malloc for both (bench.system)"
    )
    args = parser.parse_args()
    if args.malloc == "tuned":
        tune_malloc()  # what a gia-bench trial on the CPU runs with; breaching gets the same
    torch.set_num_threads(1)
    # breaching composes its config without a version_base and imports torch.jit.script: their warnings, not ours
    warnings.filterwarnings("ignore", module="breaching|torch.jit")
    dataset = default_dataset()
    print("| model | B | N | ours ms/it | breaching ms/it | breaching / ours |")
    print("| --- | --- | --- | --- | --- | --- |")
    for model_name in args.models:
        for batch_size in args.batch_sizes:
            observation = draw_round(dataset, model_name, batch_size, torch.device("cpu")).observation
            probe = ours_seconds(observation, 4) / 4
            iterations = max(2, min(200, round(args.target_seconds / max(probe, 1e-4))))
            ours, theirs = [], []
            for pair in range(args.pairs):
                order = (("ours", ours_seconds, ours), ("breaching", breaching_seconds, theirs))
                for _, run, into in order if pair % 2 == 0 else order[::-1]:
                    short, long = run(observation, iterations), run(observation, 2 * iterations)
                    into.append((long - short) / iterations)
            ours_ms, theirs_ms = 1000 * statistics.median(ours), 1000 * statistics.median(theirs)
            print(
                f"| {model_name} | {batch_size} | {iterations} | {ours_ms:.2f} | {theirs_ms:.2f} |"
                f" {theirs_ms / ours_ms:.2f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
