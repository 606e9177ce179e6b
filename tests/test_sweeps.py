"""Sweeps: resume after SIGKILL, the joblib launcher, failed trials, infeasible cells."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests import processes
from tests.conftest import REPO, SMOKE

# Fields that legitimately differ between two runs of the same trial: wall-clock timings.
TIMING = {"created", "trial_seconds", "trial_cpu_seconds", "attack_seconds", "seconds_per_iteration", "resumed"}


def comparable(record: dict) -> dict:
    kept = {k: v for k, v in record.items() if k not in TIMING}
    for series in ("trace", "progress"):
        if series in kept:
            kept[series] = [[point[0], *point[2:]] for point in kept[series]]
    return kept


def records(folder: Path) -> dict[str, dict]:
    return {p.stem: comparable(json.loads(p.read_text())) for p in sorted((folder / "records").glob("*.json"))}


@pytest.fixture(scope="module")
def reference(smoke_results):
    return records(smoke_results)


def test_reference_sweep_is_complete(reference):
    assert len(reference) == 4 and all(r["status"] == "ok" for r in reference.values())


@pytest.mark.slow  # tests/test_resume.py kills inside and between trials in the default suite
def test_sigkill_midway_then_resume_gives_identical_records(tmp_path, reference):
    out = tmp_path / "killed"
    args = [
        sys.executable,
        "-m",
        "bench.run",
        *SMOKE,
        "quiet=true",
        f"hydra.sweep.dir={out}",
        f"results_root={tmp_path}",
    ]
    process = processes.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list((out / "records").glob("*.json"))) < 3:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    partial = len(list((out / "records").glob("*.json")))
    assert 2 <= partial < 4
    resumed = processes.run(args, cwd=REPO, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.count("already done") == partial
    assert records(out) == reference


def test_joblib_launcher_gives_the_same_records(run_cli, tmp_path, reference):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    out = tmp_path / "joblib"
    done = run_cli(*SMOKE, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={out}")
    assert done.returncode == 0, done.stderr
    assert records(out) == reference


def test_diverging_trials_are_recorded_as_failed_and_the_sweep_completes(run_cli, tmp_path):
    out = tmp_path / "diverge"
    # DLG's fixed L-BFGS step (iDLG's line search would tame even this learning rate: docs/fidelity.md)
    done = run_cli(
        "sweep=smoke",
        "hydra.sweeper.params.method=dlg",
        "method.params.lr=1e30",
        "model=convnet",  # on the smoke sweep's sigmoid LeNet the saturated units keep even this step finite
        "iterations=2",
        f"hydra.sweep.dir={out}",
        cwd=tmp_path,  # and from outside the checkout: Hydra's plugin scan alone would not find our sweeper there
    )
    assert done.returncode == 0, done.stderr
    got = list(records(out).values())
    assert len(got) == 2 and all(r["status"] == "failed" for r in got)
    assert all("lower the learning rate" in r["reason"] for r in got)
    # the summary shows one line; the record keeps the whole traceback for whoever debugs it
    assert all(r["traceback"].startswith("Traceback (most recent call last)") for r in got)
    assert all("\n" not in r["reason"] for r in got)
    summary = pd.read_csv(out / "summary.csv")
    assert summary.n_failed.sum() == 2 and summary.n_ok.sum() == 0


def test_infeasible_cells_are_skipped_with_a_reason(run_cli, tmp_path):
    out = tmp_path / "skip"
    done = run_cli(
        "sweep=smoke",
        "dataset=cifar10_sample",
        "model=lenet",
        "hydra.sweeper.params.batch_size='2,12'",
        "hydra.sweeper.params.method=idlg",
        f"hydra.sweep.dir={out}",
    )
    assert done.returncode == 0, done.stderr
    by_batch = {r["batch_size"]: r for r in records(out).values()}
    assert by_batch[2]["status"] == "ok"
    assert by_batch[12]["status"] == "skipped" and "distinct classes" in by_batch[12]["reason"]


def test_the_sweeper_composes_no_job_before_the_launcher_does():
    """Hydra's basic sweeper composes every combination upfront; ours leaves it to bench.run's check and the
    launcher (the composition is the cost: hydra_plugins/gia_bench_sweeper)."""
    from types import SimpleNamespace

    from bench.run import register_sweeper

    register_sweeper()  # Hydra's plugin scan re-executes basic_sweeper: import both classes after it
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    from hydra_plugins.gia_bench_sweeper import CheckedSweeper

    composed = []
    context = SimpleNamespace(config_loader=SimpleNamespace(load_sweep_config=lambda **job: composed.append(job)))
    batch = [["method=dlg", "batch_size=1"], ["method=idlg", "batch_size=2"]]
    for sweeper_class in (BasicSweeper, CheckedSweeper):
        sweeper = sweeper_class(max_batch_size=None, params=None)
        sweeper.hydra_context, sweeper.config = context, {}
        sweeper.validate_batch_is_legal(batch)
    assert len(composed) == len(batch)  # Hydra's own sweeper composed each job; ours none
