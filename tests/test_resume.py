"""A sweep killed (SIGKILL) or interrupted (Ctrl-C) inside a trial resumes to the records of an uninterrupted run.

Each round starts the sweep into the same folder, waits until a record exists and a trial of this process is in
progress, signals it at a random moment (a seeded RNG draws the delay, up to about one trial's length, so most
signals land inside the trial and some after it), then the next round resumes. A trial is "in progress" when
Hydra has written its ``jobs/<n>/.hydra/overrides.yaml`` in this process (Hydra rewrites it at each job's start,
before the trial runs) and its record does not exist yet.

Records are compared without their wall-clock fields (``tests.test_sweeps.TIMING``: created, trial_seconds,
attack_seconds, seconds_per_iteration, resumed, and the seconds column of trace/progress); everything else,
metrics, traces, labels, config, environment, must be equal, and the grids byte for byte.
"""

from __future__ import annotations

import random
import signal
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests import processes
from tests.conftest import REPO, smoke_command
from tests.test_sweeps import records

POLL_SECONDS = 0.02
IDENTITY = ("method", "batch_size", "seed")  # what tells the smoke sweep's trials apart


@dataclass
class Round:
    signalled: bool  # False: the sweep finished before the signal was due
    in_trial: bool  # the signal landed while a trial of this process had started and had no record
    returncode: int
    stderr: str


def job_starts(out: Path) -> dict[Path, int]:
    """When each job last started: the modification time of its ``.hydra/overrides.yaml``."""
    starts = {}
    for overrides in (out / "jobs").glob("*/.hydra/overrides.yaml"):
        try:
            starts[overrides] = overrides.stat().st_mtime_ns
        except FileNotFoundError:
            continue
    return starts


def trial_in_progress(out: Path, before: dict[Path, int]) -> dict | None:
    """The job this process started last (one not started, or started again, since ``before``), if its trial
    has no record yet."""
    started = [(int(p.parent.parent.name), p) for p, when in job_starts(out).items() if before.get(p) != when]
    if not started:
        return None
    try:
        given = dict(line.split("=", 1) for line in yaml.safe_load(max(started)[1].read_text()))
    except (TypeError, ValueError, yaml.YAMLError):  # caught half-written: the job is starting
        return None
    wanted = {key: str(given[key]) for key in IDENTITY}
    for record in records(out).values():
        if {key: str(record[key]) for key in IDENTITY} == wanted:
            return None
    return wanted


def signal_inside_a_trial(command: list[str], out: Path, sig: signal.Signals, delay: float) -> Round:
    before = job_starts(out)
    process = processes.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # a shell without job control starts background commands with SIGINT ignored, and the child would inherit
        # that (Python then installs no KeyboardInterrupt handler): give the sweep the terminal's default
        default_sigint=True,
    )
    deadline = time.monotonic() + 600
    while process.poll() is None and time.monotonic() < deadline:
        if records(out) and trial_in_progress(out, before):
            break
        time.sleep(POLL_SECONDS)
    if process.poll() is not None:
        return Round(False, False, process.returncode, process.stderr.read())
    time.sleep(delay)
    in_trial = trial_in_progress(out, before) is not None
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=300)
    return Round(True, in_trial, process.returncode, stderr)


def left_behind(out: Path) -> list[Path]:
    """Temporary files of atomic writes (``.<name>.*.tmp``) and records set aside as corrupt."""
    return [*out.rglob(".*.tmp"), *(out / "records" / "corrupt").glob("*")]


def kill_and_resume(out: Path, reference: Path, sig: signal.Signals, rounds: int, seed: int, *extra: str) -> None:
    trial_seconds = statistics.median(r["trial_seconds"] for r in map(_raw, (reference / "records").glob("*.json")))
    chance = random.Random(seed)
    command = smoke_command(out, *extra)
    outcomes = []
    for _ in range(rounds):
        outcome = signal_inside_a_trial(command, out, sig, chance.uniform(0, 1.2 * trial_seconds))
        if not outcome.signalled or outcome.returncode == 0:  # the run ended before the signal took effect
            assert outcome.returncode == 0, outcome.stderr
            assert len(records(out)) == len(records(reference)), "a run that exits 0 has finished every trial"
            outcomes.append(Round(False, False, 0, outcome.stderr))
            continue
        outcomes.append(outcome)
        if sig == signal.SIGKILL:
            assert outcome.returncode == -signal.SIGKILL
        else:  # Ctrl-C: exit code 130 and how to resume, with the folder
            assert outcome.returncode == 130, outcome.stderr
            assert "resume with the same command" in outcome.stderr and f"hydra.sweep.dir={out}" in outcome.stderr
            assert not left_behind(out), left_behind(out)  # the interrupted writer removed its temporary file
    assert any(o.in_trial for o in outcomes), f"no {sig.name} landed inside a trial: {outcomes}"
    print(f"{sig.name}: {sum(o.in_trial for o in outcomes)} of {rounds} landed inside a trial")
    if sig == signal.SIGKILL:
        # and for certain what a SIGKILL between a temporary file and its rename leaves (the rounds may not have)
        for stale in (out / "records" / ".0123456789abcdef.json.k1ll3d.tmp", out / ".experiment.json.k1ll3d.tmp"):
            stale.write_text('{"status": "o')
    resumed = processes.run(command, cwd=REPO, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    assert not left_behind(out), left_behind(out)  # a resume discards what a killed writer left
    assert records(out) == records(reference)
    for grid in (reference / "grids").glob("*.png"):
        assert (out / "grids" / grid.name).read_bytes() == grid.read_bytes(), grid.name


def _raw(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def longer_smoke(tmp_path_factory) -> Path:
    """The smoke sweep with two seeds (eight trials): enough trials for ten kills to land in different ones."""
    out = tmp_path_factory.mktemp("longer") / "sweep"
    done = processes.run(smoke_command(out, "seeds=2"), cwd=REPO, timeout=1800)
    assert done.returncode == 0, done.stderr
    return out


def test_sigkill_inside_a_trial_then_resume_loses_nothing(smoke_results, tmp_path):
    """And the resume discards the temporary files (``.<name>.*.tmp``) of writes a kill interrupted."""
    kill_and_resume(tmp_path / "killed", smoke_results, signal.SIGKILL, rounds=3, seed=7)


def test_ctrl_c_inside_a_trial_says_how_to_resume_and_loses_nothing(smoke_results, tmp_path):
    kill_and_resume(tmp_path / "interrupted", smoke_results, signal.SIGINT, rounds=2, seed=11)


@pytest.mark.slow
def test_ten_sigkills_inside_trials_then_resume_lose_nothing(longer_smoke, tmp_path):
    kill_and_resume(tmp_path / "killed", longer_smoke, signal.SIGKILL, 10, 3, "seeds=2")


@pytest.mark.slow
def test_ten_ctrl_c_inside_trials_then_resume_lose_nothing(longer_smoke, tmp_path):
    kill_and_resume(tmp_path / "interrupted", longer_smoke, signal.SIGINT, 10, 5, "seeds=2")
