"""How much label accuracy the label strategies lose on FedAvg weight differences: python scripts/fedavg_labels.py.

For each seed and duplicate ratio one batch is drawn, as a trial draws it; the same batch goes through a FedSGD
client and FedAvg clients with each number of local steps, and every label strategy reads every update (by the
rule of methods.fedavg.averaged_gradient). Prints the mean label accuracy per strategy and client, with the drop
from FedSGD; docs/fedavg.md quotes the output.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.metrics import label_accuracy  # noqa: E402
from bench.trial import draw_round, settings_for  # noqa: E402
from methods.labels import infer_labels  # noqa: E402

STRATEGIES = ("analytic", "yin", "llg", "count", "ilrg", "lrb")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--local-batch-size", type=int, default=4)
    parser.add_argument("--local-lr", type=float, default=0.1)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 5, 10])
    parser.add_argument("--dup-ratios", type=float, nargs="+", default=[0.0, 0.5])
    parser.add_argument("--model", default="convnet")
    args = parser.parse_args()
    torch.set_num_threads(1)
    clients = {"fedsgd": "fedsgd"} | {
        f"fedavg x{steps}": {
            "name": "fedavg",
            "local_steps": steps,
            "local_lr": args.local_lr,
            "local_batch_size": args.local_batch_size,
        }
        for steps in args.steps
    }
    accuracy: dict[tuple[str, str], list[float]] = {}
    for seed in range(args.seeds):
        for ratio in args.dup_ratios:
            for label, client in clients.items():
                settings = settings_for(
                    "ig", model=args.model, batch_size=args.batch_size, dup_ratio=ratio, seed=seed, client=client
                )
                drawn = draw_round(settings, torch.device("cpu"))
                for strategy in STRATEGIES:
                    predicted = infer_labels(strategy, drawn.observation)
                    accuracy.setdefault((strategy, label), []).append(label_accuracy(predicted, drawn.true_labels))
    print(
        f"B={args.batch_size}, mini-batch {args.local_batch_size}, lr {args.local_lr}, {args.model} (untrained), "
        f"dup_ratio in {args.dup_ratios}, {args.seeds} seeds: mean label accuracy (drop from FedSGD, points)"
    )
    print("| strategy | " + " | ".join(clients) + " |")
    print("|---" * (len(clients) + 1) + "|")
    for strategy in STRATEGIES:
        base = sum(accuracy[(strategy, "fedsgd")]) / len(accuracy[(strategy, "fedsgd")])
        cells = []
        for label in clients:
            values = accuracy[(strategy, label)]
            mean = sum(values) / len(values)
            cells.append(f"{100 * mean:.1f}%" + ("" if label == "fedsgd" else f" ({100 * (mean - base):+.1f})"))
        print(f"| {strategy} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
