"""Time our attacks at two git revisions, alternating fresh processes: the before/after of a change.

    python scripts/perf_revisions.py 1ac4c7d HEAD --cells gradinversion:convnet:8 idlg:lenet:1 --rounds 3

Each revision is checked out into a temporary git worktree and ``python -m bench.perf`` runs one cell
there (``--experiments none --no-harness --no-mirror``), with this interpreter; rounds alternate
before, after, after, before, ... so that drift of a shared machine falls on both sides. Per cell it
prints the median "ours" and "floor" ms per iteration of each revision. The floor is hand-written in
``bench/perf/floors*.py`` and does not change with the shared code, so unless the change fixes a floor
itself, its before/after ratio shows what the machine alone contributed; the "ours" ratio is the change's
effect.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def worktree(revision: str, root: Path) -> Path:
    path = root / revision.replace("/", "_")
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), revision], check=True, capture_output=True
    )
    return path


def run_cell(checkout: Path, cell: str, repeats: int, out: Path) -> dict:
    method, model, batch_size = cell.split(":")
    command = [
        sys.executable,
        "-m",
        "bench.perf",
        "--methods",
        method,
        "--models",
        model,
        "--batch-sizes",
        batch_size,
        "--experiments",
        "none",
        "--no-harness",
        "--no-mirror",
        "--repeats",
        str(repeats),
        "--out",
        str(out),
    ]
    subprocess.run(command, cwd=checkout, check=True, capture_output=True)
    (result,) = json.loads(out.read_text())["cells"]
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--cells", nargs="+", required=True, help="method:model:batch_size")
    parser.add_argument("--rounds", type=int, default=3, help="processes per revision and cell")
    parser.add_argument("--repeats", type=int, default=3, help="ours/floor pairs inside each process")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        checkouts = {"before": worktree(args.before, root), "after": worktree(args.after, root)}
        try:
            rows = []
            for cell in args.cells:
                times: dict[str, dict[str, list[float]]] = {k: {"ours": [], "floor": []} for k in checkouts}
                for r in range(args.rounds):
                    order = ("before", "after") if r % 2 == 0 else ("after", "before")
                    for side in order:
                        result = run_cell(checkouts[side], cell, args.repeats, root / f"{side}.json")
                        times[side]["ours"].append(1e3 * result["ours_s_per_iter"])
                        times[side]["floor"].append(1e3 * result["floor_s_per_iter"])
                median = {side: {k: statistics.median(v) for k, v in t.items()} for side, t in times.items()}
                rows.append((cell, median))
                print(json.dumps({"cell": cell, "ms_per_iteration": median}), flush=True)
        finally:
            for path in checkouts.values():
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)], check=False)
    print(
        "\n| cell | ours before ms/it | ours after ms/it | change | floor before | floor after | "
        "floor change |\n|---|---|---|---|---|---|---|"
    )
    for cell, m in rows:
        b, a = m["before"], m["after"]
        print(
            f"| {cell} | {b['ours']:.4g} | {a['ours']:.4g} | {100 * (a['ours'] / b['ours'] - 1):+.1f}% | "
            f"{b['floor']:.4g} | {a['floor']:.4g} | {100 * (a['floor'] / b['floor'] - 1):+.1f}% |"
        )


if __name__ == "__main__":
    main()
