from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# One thread, as the runner's default: two threads on a busy 2-core machine can be ten times slower.
torch.set_num_threads(1)


@pytest.fixture
def run_cli(tmp_path):
    """Run ``python -m bench.run`` with results under tmp_path (a child of the fork server: tests/processes.py)."""
    import subprocess

    from tests import processes

    def run(*overrides: str, timeout: float = 300, cwd: Path = REPO) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
        args = [
            sys.executable,
            "-m",
            "bench.run",
            f"results_root={tmp_path}/results",
            "quiet=true",
            *CPU,
            *without_figures(overrides),
            *overrides,
        ]
        return processes.run(args, cwd=cwd, env=env, timeout=timeout)

    return run


@pytest.fixture
def refused(tmp_path):
    """``refused(*overrides)``: the exit code and stderr of the command line ``run_cli`` would run, run as ``cli()``
    in a fork of this process (``refused_in_a_fork``), for the one-line errors of bad input."""

    def run(*overrides: str) -> tuple[int, str]:
        arguments = [f"results_root={tmp_path}/results", "quiet=true", *CPU, *without_figures(overrides), *overrides]
        return refused_in_a_fork(arguments)

    return run


def refused_in_a_fork(arguments: list[str]) -> tuple[int, str]:
    """``cli()`` in a forked copy of this process: the interpreter and its imports are already there, and whatever
    Hydra does to logging and streams dies with the child."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: stderr into the pipe, stdout away, then the command line
        code = 1
        try:
            os.close(read_end)
            os.dup2(write_end, 2)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            sys.stderr, sys.stdout = open(2, "w", closefd=False), open(1, "w", closefd=False)  # noqa: SIM115
            os.chdir(REPO)  # as the processes run: relative paths resolve against the repository
            sys.argv = ["bench.run", *arguments]
            from hydra.core.global_hydra import GlobalHydra

            from bench.run import cli

            GlobalHydra.instance().clear()
            cli()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        stderr = pipe.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), stderr


def without_figures(overrides: tuple[str, ...] | list[str]) -> list[str]:
    """``figures=false`` unless the test sets ``figures`` itself: drawing them is most of a small run's report time,
    and only the tests that look at figures need them (tests/test_report.py draws them all)."""
    return [] if any(o.startswith("figures=") for o in overrides) else ["figures=false"]


# The CLI tests compare records exactly: they pin the device (device=auto would pick a GPU where there is one).
CPU = ("device=cpu",)
SMOKE = ("sweep=smoke", "threads=1", "quiet=true", *CPU)


def smoke_command(out: Path, *extra: str) -> list[str]:
    """The smoke sweep (dlg, idlg; B in {1, 2}; one seed) into ``out``."""
    return [
        sys.executable,
        "-m",
        "bench.run",
        *SMOKE,
        *without_figures(extra),
        f"hydra.sweep.dir={out}",
        f"results_root={out.parent}",
        *extra,
    ]


@pytest.fixture(scope="session")
def smoke_results(tmp_path_factory) -> Path:
    """One real smoke sweep per test run, shared read-only by every xdist worker: copy it before changing anything.

    A fresh interpreter, not the fork server (tests/processes.py): the runs compared with it go through the server,
    so every such comparison also checks that a forked command gives a fresh one's records."""
    import subprocess

    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()  # under xdist: <this run's folder>/popen-gw<N>, one per worker
    shared = base.parent if "PYTEST_XDIST_WORKER" in os.environ else base
    out = shared / "smoke" / "sweep"
    with FileLock(str(shared / "smoke.lock")):
        if not (out.parent / "done").exists():
            done = subprocess.run(smoke_command(out), cwd=REPO, capture_output=True, text=True, timeout=900)
            assert done.returncode == 0, done.stderr
            (out.parent / "done").touch()
    return out


# The longest files first, so that two xdist workers end together instead of one waiting on the SLURM cluster at the
# end (measured on 2 idle cores: `pytest --durations=0`).
LONGEST_FIRST = ("test_slurm", "test_resume", "test_defences", "test_sweeps", "test_plugin", "test_labels_sweep")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        module = item.path.stem
        return LONGEST_FIRST.index(module) if module in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within a file is kept
