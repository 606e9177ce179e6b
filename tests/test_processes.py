"""The fork server (tests/forkserver.py, tests/processes.py) runs a command line as a fresh interpreter would.

Most command-line tests go through it, and every one that compares its records with the shared smoke sweep (a
fresh interpreter) checks it again. Here the same commands run both ways, side by side: the refused one gives
the same exit status and stderr; a trial run from another folder, with a relative results folder and its own
``TORCH_HOME`` (named in the LPIPS warning), gives the same records, stdout lines and stderr.
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests import processes
from tests.conftest import REPO
from tests.test_sweeps import records

TRIAL = ["sweep=none", "method=idlg", "batch_size=2", "iterations=3", "quiet=true", "device=cpu", "figures=false"]


def command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "bench.run", *arguments]


def test_a_refused_command_line_gives_the_same_status_and_stderr_both_ways(tmp_path):
    refused = command("method=nope", f"results_root={tmp_path}")
    fresh = processes.run(refused, cwd=REPO, timeout=120, fresh=True)
    forked = processes.run(refused, cwd=REPO, timeout=120)
    assert isinstance(processes.Popen(refused, cwd=REPO, fresh=True), subprocess.Popen)
    assert fresh.returncode == forked.returncode == 2
    assert forked.stderr == fresh.stderr and fresh.stderr.startswith("error: unknown method 'nope'")


def test_a_trial_from_another_folder_gives_the_same_records_output_and_warning_both_ways(tmp_path):
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch-home")}
    outputs = {}
    for way, fresh in (("fresh", True), ("forked", False)):
        folder = tmp_path / way
        folder.mkdir()
        done = processes.run(
            command(*TRIAL, "results_root=results", "hydra.run.dir=results/trial"),
            cwd=folder,
            env=env,
            timeout=300,
            fresh=fresh,
        )
        assert done.returncode == 0, done.stderr
        outputs[way] = done
    assert records(tmp_path / "forked" / "results" / "trial") == records(tmp_path / "fresh" / "results" / "trial")
    assert len(records(tmp_path / "fresh" / "results" / "trial")) == 1
    warning = f"the AlexNet weights are not at {tmp_path / 'torch-home'}"
    assert warning in outputs["fresh"].stderr and warning in outputs["forked"].stderr
    assert outputs["forked"].stderr == outputs["fresh"].stderr
    # the trial's line without its seconds ("idlg B=2 r=0 seed=0: PSNR 9.45 dB, SSIM 0.091, labels 100%, 2.2 s")
    # and where the results went, relative to the working folder
    first = {way: done.stdout.splitlines()[0].rsplit(",", 1)[0] for way, done in outputs.items()}
    assert first["forked"] == first["fresh"] and " PSNR " in first["fresh"]
    last = {way: done.stdout.splitlines()[-1].replace(str(tmp_path / way), "HERE") for way, done in outputs.items()}
    assert last["forked"] == last["fresh"] == "results: HERE/results/trial"


def test_only_bench_run_without_its_own_python_variables_is_forked():
    assert processes.forkable(command("sweep=none"), None)
    assert not processes.forkable([sys.executable, "-c", "pass"], None)
    assert not processes.forkable(command("sweep=none"), {**os.environ, "PYTHONPATH": "elsewhere"})
    assert processes.forkable(command("sweep=none"), {**os.environ, "PYTHONUNBUFFERED": "1"})
