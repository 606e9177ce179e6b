"""The SLURM launcher on a real cluster: one job per trial, resumable, failures recorded, one report at the end.

The tests marked ``slurm`` run when ``sbatch`` is on PATH and a controller answers
(``scripts/slurm_local.sh up`` starts a single-node one; CI does). Their jobs go to the partition in
GIA_BENCH_SLURM_PARTITION (default ``debug``, the local cluster's), one CPU and 2 GB each.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests import processes
from tests.conftest import REPO, smoke_command
from tests.test_sweeps import records

# One pytest-xdist worker runs them all: the local cluster has two CPUs, and two workers' jobs would queue.
pytestmark = pytest.mark.xdist_group("slurm")

PARTITION = os.environ.get("GIA_BENCH_SLURM_PARTITION", "debug")
LAUNCHER = (
    "hydra/launcher=slurm",
    f"hydra.launcher.partition={PARTITION}",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2",
    "hydra.launcher.timeout_min=10",
)
SWEEP_TIMEOUT = 600
# A plugin method that fails inside its job when the batch holds two images, and returns noise otherwise.
FAILING_PLUGIN = """
from dataclasses import dataclass
from typing import ClassVar

import torch

from methods import Reconstruction, register_method


@register_method()
@dataclass
class FailsOnPairs:
    name: ClassVar[str] = "fails_on_pairs"
    paper: ClassVar[str] = "tests/test_slurm.py"

    iterations: int = 1

    def reconstruct(self, observation, *, generator, callback=None, callback_every=0, progress=False):
        if observation.batch_size == 2:
            raise RuntimeError("deliberate failure inside a SLURM job")
        shape = (observation.batch_size, *observation.image_shape)
        images = torch.rand(shape, generator=generator, device=generator.device)
        labels = torch.zeros(observation.batch_size, dtype=torch.long, device=generator.device)
        return Reconstruction(images=images, labels=labels, trace=[])
"""


def cluster_problem() -> str | None:
    """Why no SLURM test can run here, or None when a controller answers."""
    if shutil.which("sbatch") is None:
        return "sbatch is not on PATH: no SLURM cluster (scripts/slurm_local.sh up starts a local one)"
    try:
        import hydra_plugins.hydra_submitit_launcher  # noqa: F401
    except ImportError:
        return 'hydra-submitit-launcher is not installed: pip install -e ".[slurm]"'
    try:
        answer = subprocess.run(
            ["sinfo", "--noheader", "--partition", PARTITION], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"sinfo failed ({error})"
    if answer.returncode != 0 or not answer.stdout.strip():
        detail = answer.stderr.strip().splitlines()[-1:] or ["no such partition"]
        return (
            f"sbatch is on PATH but no SLURM controller answers for partition {PARTITION} ({detail[0]}); "
            'for the local cluster: eval "$(scripts/slurm_local.sh env)"'
        )
    return None


# Session scope: the SLURM sweep runs once per worker even if pytest tears module fixtures down in between (with
# the xdist group split, as pytest 9.2 did silently, a module-scoped slurm_smoke ran its sweep twice).
@pytest.fixture(scope="session")
def cluster() -> None:
    problem = cluster_problem()
    if problem is None:
        return
    if os.environ.get("GIA_BENCH_SLURM_REQUIRED") == "1":  # set by .ci/run once its cluster is up
        pytest.fail(f"the SLURM cluster was started but is not usable: {problem}")
    pytest.skip(problem)


def slurm_sweep(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return processes.run([*smoke_command(out, *LAUNCHER, *extra)], cwd=REPO, timeout=SWEEP_TIMEOUT)


def job_ids(out: Path) -> list[str]:
    """The SLURM ids (array_index) of a sweep's jobs, from the folders submitit makes for them, in sweep order."""
    names = [p.name for p in (out / ".submitit").glob("*_*") if re.fullmatch(r"\d+_\d+", p.name)]
    return sorted(names, key=lambda name: tuple(int(part) for part in name.split("_")))


def job_logs(out: Path) -> str:
    return "".join(p.read_text() for p in sorted((out / ".submitit").glob("*/*_log.*")))


@pytest.fixture(scope="session")
def slurm_smoke(cluster, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("slurm") / "smoke"
    return out, slurm_sweep(out)


@pytest.mark.slurm
def test_smoke_sweep_through_slurm_writes_the_basic_launchers_records(slurm_smoke, smoke_results):
    out, done = slurm_smoke
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(job_ids(out)) == 4, "one SLURM job per trial"
    assert records(out) == records(smoke_results)


@pytest.mark.slurm
def test_the_report_is_built_once_after_every_job_has_ended(slurm_smoke):
    out, done = slurm_smoke
    assert done.returncode == 0, done.stderr[-3000:]
    # The submitting process builds it, once; no job does.
    assert done.stdout.count(f"results: {out.resolve()}") == 1
    assert "results: " not in job_logs(out) and "| method |" not in job_logs(out)
    last_record = max(p.stat().st_mtime for p in (out / "records").glob("*.json"))
    last_job = max(p.stat().st_mtime for p in (out / ".submitit").glob("*/*_result.pkl"))
    for table in ("summary.csv", "trials.csv", "summary.md"):
        assert (out / table).stat().st_mtime >= max(last_record, last_job), f"{table} was written before a job ended"
    assert len(pd.read_csv(out / "trials.csv")) == 4


@pytest.mark.slurm
def test_no_sacct_warnings_without_accounting(slurm_smoke):
    _, done = slurm_smoke
    assert "sacct" not in done.stdout + done.stderr


def queued_jobs(out: Path, count: int, timeout: float = 120) -> list[str]:
    """A sweep's SLURM ids, as soon as all of its jobs are submitted."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = job_ids(out)
        if len(jobs) >= count:
            return jobs
        time.sleep(0.2)
    raise AssertionError(f"the sweep did not submit {count} jobs within {timeout:.0f} s")


def wait_until_gone(jobs: list[str], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = subprocess.run(
            ["squeue", "--noheader", "--array", "--format=%i"], capture_output=True, text=True, timeout=30
        ).stdout.split()
        if not set(jobs) & set(listed):
            return
        time.sleep(1)
    raise AssertionError(f"jobs {jobs} still queued or running after {timeout:.0f} s")


@pytest.mark.slurm
def test_resubmitting_after_scancel_completes_the_sweep_with_identical_records(cluster, tmp_path, smoke_results):
    out = tmp_path / "cancelled"
    process = processes.Popen(
        smoke_command(out, *LAUNCHER), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        jobs = queued_jobs(out, 4)
        # The last two: on the local two-CPU node they are still pending. (A running job that is cancelled
        # may still finish: submitit ignores SIGTERM, and SLURM kills the job only KillWait seconds later.)
        cancelled = jobs[2:]
        subprocess.run(["scancel", *cancelled], check=True, timeout=30)
        _, stderr = process.communicate(timeout=SWEEP_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
    # The first submission ends with an error naming a cancelled job instead of waiting for it for ever.
    assert process.returncode != 0 and any(job in stderr for job in cancelled), stderr[-3000:]
    wait_until_gone(jobs)
    survivors = {p.name: p.read_text() for p in (out / "records").glob("*.json")}
    assert len(survivors) < 4, "the cancellation left trials to resume"

    resumed = slurm_sweep(out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert records(out) == records(smoke_results)
    for name, text in survivors.items():  # finished trials are not run again
        assert (out / "records" / name).read_text() == text


@pytest.mark.slurm
def test_a_trial_that_raises_in_its_job_is_recorded_as_failed_and_the_sweep_finishes(cluster, tmp_path):
    plugin = tmp_path / "fails_on_pairs.py"
    plugin.write_text(FAILING_PLUGIN)
    out = tmp_path / "failing"
    done = slurm_sweep(out, f"plugins=[{plugin}]", "hydra.sweeper.params.method=external", "method.name=fails_on_pairs")
    assert done.returncode == 0, done.stderr[-3000:]
    by_batch = {r["batch_size"]: r for r in (json.loads(p.read_text()) for p in (out / "records").glob("*.json"))}
    assert sorted(by_batch) == [1, 2]
    assert by_batch[1]["status"] == "ok"
    assert by_batch[2]["status"] == "failed"
    assert by_batch[2]["reason"] == "RuntimeError: deliberate failure inside a SLURM job"
    summary = pd.read_csv(out / "summary.csv")
    assert summary["n_failed"].sum() == 1 and summary["n_ok"].sum() == 1
    assert done.stdout.count("results: ") == 1


def test_job_states_come_from_squeue_and_a_job_that_left_the_queue_has_ended(monkeypatch):
    pytest.importorskip("submitit", reason='hydra-submitit-launcher is not installed: pip install -e ".[slurm]"')
    from bench.slurm import LEFT_QUEUE, QueueInfoWatcher

    squeue = "41_0|COMPLETED|node1\n41_1|RUNNING|node1\n41_2|PENDING|\n"
    watcher = QueueInfoWatcher(delay_s=60)
    for job in ("41_0", "41_1", "41_2", "41_3"):
        watcher.register_job(job)
    assert watcher._make_command()[0] == "squeue"
    monkeypatch.setattr(
        watcher, "_make_command", lambda: [sys.executable, "-c", f"print({squeue!r})"]
    )  # squeue's answer, replayed
    watcher.update()
    states = {job: watcher.get_state(job, mode="cache") for job in ("41_0", "41_1", "41_2", "41_3")}
    # 41_3 is not listed: cancelled while pending, or purged after MinJobAge. It has ended; nothing waits for it.
    assert states == {"41_0": "COMPLETED", "41_1": "RUNNING", "41_2": "PENDING", "41_3": LEFT_QUEUE}
    assert [watcher.is_done(job, mode="cache") for job in sorted(states)] == [True, False, False, True]
