"""What a checkpoint inside a trial costs: milliseconds per checkpoint written, file size, and the attack's
per-iteration time with and without checkpoints (alternating, one thread).

    python scripts/checkpoint_overhead.py --method ig --model convnet --batch-size 8 --every 10 --iterations 100

The checkpoints go to a temporary folder on the same file system as ``--dir`` (default: the system's temporary
folder); each one is serialised, written to a temporary file, fsynced and renamed, exactly as in a trial.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.checkpoints import checkpoint_path, write_checkpoint  # noqa: E402
from bench.trial import build_attack, derive_seed, draw_round, settings_for  # noqa: E402
from methods.checkpoint import Checkpointer, checkpointing  # noqa: E402


def run(settings: dict, drawn, every: int, folder: Path) -> tuple[float, int, Checkpointer | None]:
    attack = build_attack(settings)
    generator = torch.Generator().manual_seed(derive_seed(settings["seed"], "attack"))
    checkpointer = None
    if every:
        path = checkpoint_path(folder, "overhead")
        checkpointer = Checkpointer(functools.partial(write_checkpoint, path, "overhead"), every=every)
    started = time.perf_counter()
    with checkpointing(checkpointer):
        trace = attack.reconstruct(drawn.observation, generator=generator).trace
    return time.perf_counter() - started, len(trace), checkpointer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="ig")
    parser.add_argument("--model", default="convnet")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--option", action="append", default=[], help="a method option, e.g. --option restarts=8")
    args = parser.parse_args()
    torch.set_num_threads(1)
    options = {}
    for item in args.option:
        name, value = item.split("=", 1)
        options[name] = int(value) if value.isdigit() else value
    settings = settings_for(
        args.method, model=args.model, batch_size=args.batch_size, iterations=args.iterations, device="cpu", **options
    )
    drawn = draw_round(settings, torch.device("cpu"))
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        plain, checkpointed, per_write, sizes = [], [], [], []
        for _ in range(args.rounds):
            seconds, iterations, _ = run(settings, drawn, 0, Path(folder))
            plain.append(seconds)
            seconds, iterations, checkpointer = run(settings, drawn, args.every, Path(folder))
            checkpointed.append(seconds)
            per_write.append(checkpointer.write_seconds / checkpointer.writes)
            sizes.append(checkpoint_path(Path(folder), "overhead").stat().st_size)
    print(
        f"{args.method} {args.model} B={args.batch_size} {options or ''}: {iterations} iterations, "
        f"a checkpoint every {args.every}"
    )
    print(
        f"  per checkpoint: {1000 * statistics.median(per_write):.2f} ms (median of {args.rounds} runs' means), "
        f"{max(sizes) / 2**20:.2f} MiB"
    )
    print(
        f"  per iteration: {1000 * min(plain) / iterations:.2f} ms without, "
        f"{1000 * min(checkpointed) / iterations:.2f} ms with checkpoints (best of {args.rounds})"
    )


if __name__ == "__main__":
    main()
