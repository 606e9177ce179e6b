"""Checkpoints inside a trial: a trial killed mid-run continues from its checkpoint to the record of an
uninterrupted run (timing fields aside).

In-process: every registered attack is interrupted by a trace clock that raises after a given number of readings
(the clock is read every iteration, so the interruption lands between two iterations, after some checkpoints and
with work lost since the last one), then run again into the same folder. Subprocess: a real SIGKILL.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from bench.checkpoints import checkpoint_path
from bench.errors import UserError
from bench.trial import run_trial, settings_for
from methods.base import get_method_class, is_reference, list_methods
from methods.checkpoint import Checkpointer
from methods.optimise import trace_clock
from tests.conftest import REPO

# what may differ between a resumed and an uninterrupted run: when and how long (and that it was resumed)
TIMING = {"created", "trial_seconds", "trial_cpu_seconds", "attack_seconds", "seconds_per_iteration", "resumes"}
ATTACKS = [name for name in list_methods() if not is_reference(get_method_class(name))]
SMALL = {
    "ig": {"iterations": 12, "restarts": 2},  # B = 2: the restarts side by side (one call of the loop)
    "gradinversion": {"iterations": 12},
    "afgi": {"iterations": 12},
    "dlg": {"iterations": 4, "lbfgs_max_iter": 4, "model": "lenet"},
    "idlg": {"iterations": 4, "lbfgs_max_iter": 4, "model": "lenet"},
}


def _stage_two(state: dict) -> bool:
    return state["running"] is not None and state["running"]["state"][0]["full"]


# (method, options, when the kill lands as a fraction of the clock's readings, what the checkpoint must hold then)
CASES = [(name, SMALL.get(name, {"iterations": 6}), 0.75, lambda c: True) for name in ATTACKS] + [
    # restarts one after another: killed in the second call of the loop, the first one finished
    ("ig", {"iterations": 12, "restarts": 2, "batch_restarts_up_to": 0}, 0.75, lambda c: len(c["completed"]) == 1),
    ("afgi", {"iterations": 12}, 0.75, _stage_two),  # stage two (from iteration 4): the M and E targets are saved
    ("afgi", {"iterations": 12}, 0.3, lambda c: not _stage_two(c)),  # stage one
]


class Killed(BaseException):
    """Stands for the process being killed: no ``except Exception`` of the harness catches it."""


def counting_clock(limit: float = math.inf) -> tuple[callable, list[int]]:
    readings = [0]

    def clock() -> float:
        readings[0] += 1
        if readings[0] > limit:
            raise Killed
        return time.perf_counter()

    return clock, readings


def comparable(record: dict) -> dict:
    """A record without its timing: the trace and progress keep iterations and values, not seconds."""
    kept = {k: v for k, v in record.items() if k not in TIMING}
    for key in ("trace", "progress"):
        kept[key] = [[point[0], point[2]] for point in kept.get(key, [])]
    return {k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in kept.items()}


def settings(method: str, options: dict, **given) -> dict:
    base = {"batch_size": 2, "device": "cpu", "quiet": True, "score_every": 3, "checkpoint_minutes": 0}
    return settings_for(method, **(base | given), **options)


@pytest.mark.parametrize(
    ("method", "options", "kill_at", "holds"), CASES, ids=[f"{m}-{k}-{sorted(o.items())}" for m, o, k, _ in CASES]
)
def test_interrupted_trial_resumes_to_the_uninterrupted_record(tmp_path, method, options, kill_at, holds):
    resumable = settings(method, options, checkpoint_every=2)
    clock, readings = counting_clock()
    with trace_clock(clock):
        reference = run_trial(resumable, tmp_path / "reference").record
    assert reference["status"] == "ok", reference.get("reason")
    out = tmp_path / "resumed"
    with pytest.raises(Killed), trace_clock(counting_clock(int(kill_at * readings[0]))[0]):
        run_trial(resumable, out)
    (checkpoint,) = (out / "checkpoints").glob("*.pt")
    assert not (out / "records").exists()
    assert holds(torch.load(checkpoint, weights_only=True))

    resumed = run_trial(resumable, out).record
    assert resumed["resumes"] == 1
    assert comparable(resumed) == comparable(reference)
    assert not checkpoint.exists()  # deleted once the record is written
    assert resumed["attack_seconds"] > 0


def test_a_corrupt_checkpoint_is_set_aside_and_the_trial_starts_over(tmp_path, capsys):
    given = settings("idlg", {"iterations": 3, "lbfgs_max_iter": 4}, checkpoint_every=1, model="lenet")
    reference = run_trial(given, tmp_path / "reference").record
    out = tmp_path / "out"
    path = checkpoint_path(out, reference["key"])
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    record = run_trial(given, out).record
    assert "starting the trial over" in capsys.readouterr().err
    assert (path.parent / "unused" / path.name).exists() and not path.exists()
    assert "resumes" not in record and comparable(record) == comparable(reference)


def test_a_checkpoint_that_does_not_fit_the_run_is_set_aside(tmp_path, capsys):
    given = settings("idlg", {"iterations": 4, "lbfgs_max_iter": 4}, checkpoint_every=1, model="lenet")
    clock, readings = counting_clock()
    with trace_clock(clock):
        reference = run_trial(given, tmp_path / "reference").record
    out = tmp_path / "out"
    with pytest.raises(Killed), trace_clock(counting_clock(int(0.75 * readings[0]))[0]):
        run_trial(given, out)
    (path,) = (out / "checkpoints").glob("*.pt")
    state = torch.load(path, weights_only=True)
    state["running"]["signature"]["config"] = "another optimiser"  # as if the code had changed in between
    torch.save(state, path)
    record = run_trial(given, out).record
    assert "does not fit this run" in capsys.readouterr().err
    assert (path.parent / "unused" / path.name).exists()
    assert "resumes" not in record and comparable(record) == comparable(reference)


def test_the_minutes_trigger_and_the_iteration_trigger():
    written, now = [], [0.0]
    checkpointer = Checkpointer(written.append, every=0, minutes=1.0, now=lambda: now[0])
    assert not checkpointer.due()
    now[0] = 59.0
    assert not checkpointer.due()
    now[0] = 60.0
    assert checkpointer.due()
    checkpointer.write(None)
    assert not checkpointer.due() and len(written) == 1
    counted = Checkpointer(written.append, every=3)
    assert [counted.due() for _ in range(3)] == [False, False, True]


def test_checkpoint_settings_are_checked_and_run_only():
    from bench import config as schema

    with pytest.raises(UserError, match="checkpoint_every=-1 is not valid"):
        schema.check_value("checkpoint_every", -1)
    assert {"checkpoint_every", "checkpoint_minutes"} <= schema.RUN_ONLY_KEYS
    assert not {"checkpoint_every", "checkpoint_minutes"} & set(schema.TRIAL_KEYS)


# --- a real SIGKILL -------------------------------------------------------------------------------------------------

KILL_CASES = {
    # restarts one after another: killed in the second call of the loop, the first one finished
    "ig": ({"iterations": 100, "restarts": 2, "batch_restarts_up_to": 0}, lambda c: len(c["completed"]) == 1),
    # killed in stage two (from iteration 45): the M and E targets read in stage one come from the checkpoint
    "afgi": ({"iterations": 150}, lambda c: c["running"] is not None and c["running"]["iteration"] > 60),
    "dlg": (
        {"iterations": 20, "lbfgs_max_iter": 5, "checkpoint_every": 2},
        lambda c: c["running"] is not None and c["running"]["iteration"] >= 4,
    ),
}


# AFGI and DLG are slow here (about 20 s each on a loaded 2-core machine); the in-process tests above cover them too
@pytest.mark.parametrize(
    "method", ["ig", pytest.param("afgi", marks=pytest.mark.slow), pytest.param("dlg", marks=pytest.mark.slow)]
)
def test_sigkill_mid_trial_then_resume(tmp_path, method):
    options, ready = KILL_CASES[method]
    given = {"model": "lenet", "batch_size": 1, "checkpoint_every": 5, "score_every": 5} | options
    out = tmp_path / "killed"
    driver = (
        "import sys, bench.trial as t; "
        f"t.trial({method!r}, out_dir={str(out)!r}, device='cpu', quiet=True, checkpoint_minutes=0, **{given!r})"
    )
    process = subprocess.Popen([sys.executable, "-c", driver], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    state = None
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            for path in (out / "checkpoints").glob("*.pt"):
                state = torch.load(path, weights_only=True)
            if state is not None and ready(state):
                break
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        returncode = process.wait()
    assert returncode == -signal.SIGKILL, "the trial ended before it could be killed mid-run"
    assert not (out / "records").exists()

    reference = run_trial(settings(method, {}, **(given | {"checkpoint_every": 0})), tmp_path / "reference").record
    resumed = run_trial(settings(method, {}, **given), out).record  # continues from the killed process's file
    assert resumed["status"] == "ok" and resumed["resumes"] == 1
    assert comparable(resumed) == comparable(reference)
    assert not list((out / "checkpoints").glob("*.pt"))
