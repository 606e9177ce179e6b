"""The SLURM launcher on clusters that keep no accounting: job states from ``squeue`` instead of ``sacct``.

hydra-submitit-launcher polls ``sacct`` for the state of its jobs. Where accounting is off
(``AccountingStorageType=accounting_storage/none``, common on small clusters), every poll fails with a
warning, and a job that ends without a result (cancelled, pre-empted, killed) stays "UNKNOWN" for ever:
the launcher waits for it endlessly. ``squeue --states=all`` knows every job the controller still
holds, so on such clusters the launcher watches jobs through it; a job that has left the queue without
writing its result is reported as ended, and resubmitting the sweep runs what is missing.

``conf/hydra/launcher/slurm.yaml`` adds :class:`QueueStateCallback` to the sweep; on clusters with
accounting nothing changes.
"""

from __future__ import annotations

import getpass
import logging
import subprocess
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

# The state given to a job the controller no longer lists (ended over MinJobAge ago, or cancelled while pending).
LEFT_QUEUE = "LEFT_QUEUE"
ACCOUNTING_OFF = "accounting storage is disabled"

log = logging.getLogger(__name__)


def accounting_is_off() -> bool:
    """True when ``sacct`` answers that this cluster keeps no accounting (any other failure stays visible)."""
    try:
        probe = subprocess.run(
            ["sacct", "--noheader", "--allocations", "--format=JobID", "--jobs=1"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode != 0 and ACCOUNTING_OFF in (probe.stderr + probe.stdout).lower()


def parse_queue(text: str, watched: set[str]) -> dict[str, dict[str, str]]:
    """States from ``squeue --array --format=%i|%T|%N`` lines; watched jobs absent from them have left the queue."""
    states: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 3 or not parts[0]:
            continue
        job_id, state, nodes = parts
        states[job_id] = {"JobID": job_id, "State": state, "NodeList": nodes}
    for job_id in watched - set(states):
        states[job_id] = {"JobID": job_id, "State": LEFT_QUEUE, "NodeList": ""}
    return states


class QueueInfoWatcher(SlurmInfoWatcher):
    """submitit's SLURM watcher, reading ``squeue`` (one call for all of the user's jobs) instead of ``sacct``."""

    def _make_command(self) -> list[str] | None:
        if not self._registered - self._finished:
            return None
        return ["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T|%N", f"--user={getpass.getuser()}"]

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        text = string.decode() if isinstance(string, bytes) else string
        return parse_queue(text, self._registered - self._finished)


def watch_jobs_through_squeue() -> None:
    """Make submitit's SLURM jobs (in this process) read their states from ``squeue``."""
    if not isinstance(SlurmJob.watcher, QueueInfoWatcher):
        # The same polling schedule as submitit's own SLURM watcher.
        SlurmJob.watcher = QueueInfoWatcher(delay_s=SlurmJob.watcher._delay_s)


class QueueStateCallback(Callback):
    """Before a SLURM sweep is submitted: without accounting, watch its jobs through ``squeue``."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if accounting_is_off():
            log.info("SLURM accounting is off: following the jobs with squeue")
            watch_jobs_through_squeue()
