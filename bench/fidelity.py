"""The fidelity sweep: each baseline in its own paper's setting, each paper's claim next to the measured number.

``python -m bench.fidelity [--out DIR] [--cells dlg,ig] [--scale tiny]`` runs the cells of ``conf/fidelity.yaml``
through ``bench.trial.run_trial`` into one results folder, then writes ``fidelity.md`` there. A finished trial is
read back from its record, not re-run, so an interrupted sweep resumes; ``--report-only`` rewrites the table.
Trials are assigned to cells by recomputing their record keys, so the records need no extra field.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import math
import multiprocessing
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from bench import records as rec
from bench.errors import UserError
from bench.report.stats import interval, proportion_interval
from bench.sampler import sample_batch
from bench.system import pick_device
from bench.trial import CONF_DIR, dataset_for, run_trial, settings_for, trial_config

CELLS_FILE = CONF_DIR / "fidelity.yaml"
DLG_SUCCESS_PSNR = 30.0  # "success" in the DLG/iDLG cell: a near-exact reconstruction
IDLG_TARGET_RATE = 0.9


@dataclass(frozen=True)
class Planned:
    """One trial of the sweep: its cell, variant and complete settings."""

    cell: str
    variant: str
    settings: dict[str, Any]
    judge: str = ""  # the cell whose claims judge this one (the cell itself unless it names another: ``judge:``)


@dataclass
class Claim:
    method: str
    claim: str
    setting: str
    measured: str
    passed: bool | None  # None: not measured (no trials)


@dataclass
class Finished:
    """A cell's finished trials as (variant, record) pairs, with the strips folder for image statistics."""

    trials: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def select(self, **match: Any) -> list[dict[str, Any]]:
        found = []
        for variant, record in self.trials:
            facts = {"variant": variant, **record}
            if record.get("status") == "ok" and all(facts.get(k) == v for k, v in match.items()):
                found.append(record)
        return found


def load_cells(path: Path = CELLS_FILE) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def seeds_covering_images(dataset: str, count: int | None = None) -> list[int]:
    """For each image of ``dataset`` (the first ``count``), the smallest seed whose B = 1 batch is that image."""
    data = dataset_for({"name": dataset})
    wanted = len(data) if count is None else min(count, len(data))
    found: dict[int, int] = {}
    seed = 0
    while len(found) < wanted:
        image = int(sample_batch(data.labels, data.num_classes, 1, 0.0, seed)[0])
        if image < wanted:
            found.setdefault(image, seed)
        seed += 1
        if seed > 1000 * max(wanted, 1):
            raise UserError(f"could not find a seed for every image of {dataset}; lower the image count")
    return [found[i] for i in range(wanted)]


def plan(cells: Mapping[str, Any], names: Sequence[str] | None = None, scale: str = "full") -> list[Planned]:
    """Every trial of the chosen cells, in a fixed order."""
    tiny = cells.get("tiny", {}) if scale == "tiny" else None
    chosen = [n for n, cell in cells["cells"].items() if not cell.get("optional")] if not names else list(names)
    unknown = [n for n in chosen if n not in cells["cells"]]
    if unknown:
        raise UserError(f"unknown fidelity cell {unknown[0]!r}; cells: {', '.join(cells['cells'])}")
    planned: list[Planned] = []
    for name in chosen:
        cell = cells["cells"][name]
        base = {**cells.get("common", {}), **cell["settings"]}
        if tiny is not None:
            base["iterations"] = tiny["iterations"]
        if cell.get("images") == "all":
            seeds = seeds_covering_images(base["dataset"], tiny["images"] if tiny is not None else None)
        else:
            seeds = list(range(tiny["seeds"] if tiny is not None else cell.get("seeds", 1)))
        grid = cell.get("grid", {})
        combos = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
        if tiny is not None:
            combos = combos[: tiny["grid_first"]]
        variants = cell.get("variants", {"": {}})
        for method, combo, (variant, options), seed in itertools.product(
            cell["methods"], combos or [{}], variants.items(), seeds
        ):
            given = {**base, **combo, **options, "seed": seed}
            state = given.pop("state", "untrained")
            model = given.pop("model")
            given["model"] = {"name": model, "state": state} if isinstance(model, str) else model
            settings = settings_for(method, **given)
            settings["sweep_name"] = "fidelity"
            planned.append(Planned(name, variant, settings, cell.get("judge", name)))
    return planned


def key_of(settings: Mapping[str, Any]) -> str:
    return rec.trial_key(trial_config(settings, pick_device(settings["device"], settings["profile"])))


def run_one(out_dir: Path, trial: Planned) -> tuple[dict[str, Any], float]:
    """One planned trial (read back when finished), with the CPU seconds this process spent on it."""
    if trial.settings.get("threads"):
        torch.set_num_threads(int(trial.settings["threads"]))
    started = time.process_time()
    record = run_trial(trial.settings, out_dir, in_sweep=True).record
    return record, time.process_time() - started


def run(out_dir: Path, planned: Sequence[Planned], echo: Callable[[str], None] = print, jobs: int = 1) -> None:
    """Run the planned trials, ``jobs`` at a time (separate processes; the records make the order irrelevant)."""
    out_dir.mkdir(parents=True, exist_ok=True)

    def report(number: int, trial: Planned, record: Mapping[str, Any], cpu: float) -> None:
        label = f"{trial.cell}/{record['method']}{'/' + trial.variant if trial.variant else ''}"
        psnr = record.get("psnr", math.nan)
        how = "resumed" if record.get("resumed") else f"{cpu:.1f} s CPU"
        echo(f"[{number}/{len(planned)}] {label} seed={record['seed']} {record['status']} psnr={psnr:.2f} ({how})")

    if jobs <= 1:
        for number, trial in enumerate(planned, 1):
            report(number, trial, *run_one(out_dir, trial))
        return
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_one, out_dir, trial): (n, trial) for n, trial in enumerate(planned, 1)}
        for future in concurrent.futures.as_completed(futures):
            number, trial = futures[future]
            report(number, trial, *future.result())


def collect(out_dir: Path, planned: Sequence[Planned]) -> dict[str, Finished]:
    by_cell: dict[str, Finished] = {}
    for trial in planned:
        path = rec.record_path(out_dir, key_of(trial.settings))
        finished = by_cell.setdefault(trial.cell, Finished())
        if path.exists():
            finished.trials.append((trial.variant, rec.read_record(path)))
    return by_cell


def per_image(records: Sequence[Mapping[str, Any]], field_name: str = "per_image_psnr") -> list[float]:
    return [float(v) for r in records for v in r.get(field_name, [])]


def mean_ci(values: Sequence[float]) -> str:
    found = interval(values)
    if found.n == 0:
        return "n/a"
    if math.isnan(found.low):
        return f"{found.mean:.2f} (n={found.n})"
    return f"{found.mean:.2f} [{found.low:.2f}, {found.high:.2f}] (n={found.n})"


def rate_ci(successes: Sequence[float]) -> str:
    found = proportion_interval(successes)
    if found.n == 0:
        return "n/a"
    return f"{int(round(found.mean * found.n))}/{found.n} = {found.mean:.0%} [{found.low:.0%}, {found.high:.0%}]"


def contrast(out_dir: Path, record: Mapping[str, Any]) -> list[float]:
    """Per image of the saved strips: the reconstruction's pixel std over the truth's (a flat image gives 0)."""
    from PIL import Image

    strips = out_dir / "strips"
    arrays = []
    for part in ("reconstruction", "truth"):
        path = strips / f"{record['key']}-{part}.png"
        if not path.exists():
            return []
        arrays.append(np.asarray(Image.open(path).convert("RGB"), dtype=float) / 255.0)
    reconstruction, truth = arrays
    side = truth.shape[0]
    count = truth.shape[1] // side
    ratios = []
    for i in range(count):
        tile = slice(i * side, (i + 1) * side)
        ratios.append(float(reconstruction[:, tile].std() / max(truth[:, tile].std(), 1e-6)))
    return ratios


def dlg_claims(found: Finished, out_dir: Path) -> list[Claim]:
    setting = "sigmoid LeNet, CIFAR-100 sample, B = 1, 300 L-BFGS steps, one trial per image"
    claims = []
    rates: dict[str, float] = {}
    for method in ("dlg", "idlg"):
        records = found.select(method=method)
        values = per_image(records)
        hits = [float(v >= DLG_SUCCESS_PSNR) for v in values]
        rates[method] = sum(hits) / len(hits) if hits else math.nan
        median = statistics.median(values) if values else math.nan
        claims.append(
            Claim(
                method,
                f"reconstructs the image from its gradient (PSNR >= {DLG_SUCCESS_PSNR:g} dB) on most images",
                setting,
                f"success {rate_ci(hits)}; median PSNR {median:.1f} dB",
                rates[method] > 0.5 if hits else None,
            )
        )
    idlg = found.select(method="idlg")
    if idlg:
        accuracy = [float(r["label_accuracy"]) for r in idlg]
        claims.append(
            Claim(
                "idlg",
                "extracts the label from the gradient on every image (100%)",
                setting,
                f"label accuracy {rate_ci(accuracy)}",
                all(a == 1.0 for a in accuracy),
            )
        )
    claims.append(
        Claim(
            "idlg",
            f"succeeds at least as often as DLG, and on >= {IDLG_TARGET_RATE:.0%} of images",
            setting,
            f"iDLG {rates['idlg']:.0%} vs DLG {rates['dlg']:.0%}",
            None
            if math.isnan(rates["idlg"]) or math.isnan(rates["dlg"])
            else rates["idlg"] >= IDLG_TARGET_RATE and rates["idlg"] >= rates["dlg"],
        )
    )
    return claims


def ig_claims(found: Finished, out_dir: Path) -> list[Claim]:
    claims = []
    models = sorted({r["model"] for _, r in found.trials})
    for model in models:
        for batch in sorted({r["batch_size"] for _, r in found.trials if r["model"] == model}):
            untrained = per_image(found.select(model=model, batch_size=batch, model_state="untrained"))
            trained = per_image(found.select(model=model, batch_size=batch, model_state="trained"))
            if not untrained or not trained:
                continue
            claims.append(
                Claim(
                    "ig",
                    "a trained model leaks at least as much as an untrained one (PSNR trained >= untrained)",
                    f"{model}, crops, B = {batch}, {iterations_of(found, model=model)} Adam steps",
                    f"trained {mean_ci(trained)} vs untrained {mean_ci(untrained)} dB",
                    float(np.mean(trained)) >= float(np.mean(untrained)),
                )
            )
    return claims


def iterations_of(found: Finished, **match: Any) -> str:
    counts = sorted({r.get("iterations") for r in found.select(**match)})
    return "/".join(str(c) for c in counts) or "?"


def gradinversion_claims(found: Finished, out_dir: Path) -> list[Claim]:
    full = found.select(variant="full")
    if not full:
        return []
    setting = f"trained convnet (BatchNorm), crops, B = 8, {iterations_of(found, variant='full')} steps"
    full_psnr = per_image(full)
    claims = []
    for variant, what in (("no_bn_prior", "the BN-statistics prior"), ("no_group_consistency", "group consistency")):
        without = per_image(found.select(variant=variant))
        if without:
            claims.append(
                Claim(
                    "gradinversion",
                    f"{what} raises PSNR",
                    setting,
                    f"with {mean_ci(full_psnr)} vs without {mean_ci(without)} dB",
                    float(np.mean(full_psnr)) > float(np.mean(without)),
                )
            )
    ratios = [v for r in full for v in contrast(out_dir, r)]
    flat = per_image(full, "per_image_oracle_flat_psnr")
    claims.append(
        Claim(
            "gradinversion",
            "the output is not a flat image (pixel std >= half the truth's; PSNR above the flat-colour oracle)",
            setting,
            f"std ratio {mean_ci(ratios)}; PSNR {np.mean(full_psnr):.2f} vs flat oracle {np.mean(flat):.2f} dB",
            bool(ratios) and float(np.mean(ratios)) >= 0.5 and float(np.mean(full_psnr)) > float(np.mean(flat)),
        )
    )
    return claims


def afgi_claims(found: Finished, out_dir: Path) -> list[Claim]:
    afgi = found.select(method="afgi")
    ig = {r["seed"]: r for r in found.select(method="ig")}
    if not afgi:
        return []
    setting = f"untrained convnet, crops, B = 4, r = 0.5, quick budgets, {len(afgi)} seeds"
    accuracy = [float(r["label_accuracy"]) for r in afgi]
    ratios = []
    for r in afgi:
        reference = ig.get(r["seed"])
        if reference is None or not r.get("progress"):
            continue
        target = reference["psnr"]
        reached = [seconds for _, seconds, value, *_ in r["progress"] if value >= target]
        ratios.append(reached[0] / reference["attack_seconds"] if reached else math.inf)
    median = statistics.median(ratios) if ratios else math.nan
    return [
        Claim(
            "afgi",
            "LRB restores duplicated labels accurately",
            setting,
            f"label accuracy {mean_ci(accuracy)}",
            float(np.mean(accuracy)) >= 0.99,
        ),
        Claim(
            "afgi",
            "85% less inversion time than IG (time to IG's final PSNR <= 15% of IG's)",
            setting,
            f"median time ratio {median:.2f} over {len(ratios)} seeds",
            None if not ratios else median <= 0.15,
        ),
    ]


JUDGES: dict[str, Callable[[Finished, Path], list[Claim]]] = {
    "dlg": dlg_claims,
    "ig": ig_claims,
    "gradinversion": gradinversion_claims,
    "afgi": afgi_claims,
}


def claims_of(out_dir: Path, planned: Sequence[Planned]) -> list[Claim]:
    found = collect(out_dir, planned)
    judges = {trial.cell: JUDGES.get(trial.judge or trial.cell) for trial in planned}
    claims: list[Claim] = []
    for cell, finished in found.items():
        claims += judges[cell](finished, out_dir) if judges[cell] is not None else []
    return claims


def markdown(claims: Sequence[Claim]) -> str:
    verdict = {True: "pass", False: "**fail**", None: "not measured"}
    lines = ["| method | claim | setting | measured (95% CI) | verdict |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {c.method} | {c.claim} | {c.setting} | {c.measured} | {verdict[c.passed]} |" for c in claims]
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.fidelity", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("results/fidelity/run"), help="results folder (resumable)")
    p.add_argument("--cells", default="", help="comma-separated cells of conf/fidelity.yaml (default: all)")
    p.add_argument("--scale", choices=("full", "tiny"), default="full", help="tiny: a smoke run of every cell")
    p.add_argument("--jobs", type=int, default=1, help="trials run at once, one process each (e.g. 2 on 2 cores)")
    p.add_argument("--report-only", action="store_true", help="only write fidelity.md from the records in --out")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        planned = plan(load_cells(), [c for c in args.cells.split(",") if c], args.scale)
        if not args.report_only:
            if args.jobs < 1:
                raise UserError(f"--jobs={args.jobs} is not valid; give 1 or more")
            run(args.out, planned, jobs=args.jobs)
        table = markdown(claims_of(args.out, planned))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    (args.out / "fidelity.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
