"""What one SLURM job costs beyond its trial: runs the smoke sweep through the SLURM launcher and times each job.

    scripts/slurm_local.sh up && eval "$(scripts/slurm_local.sh env)"
    python scripts/slurm_overhead.py [--repeats 3]

Per job, from the files the sweep leaves behind (millisecond clocks of one machine):
  submitted  the mtime of the sbatch script submitit writes just before it calls sbatch;
  ready      when a CPU was free for the job: the submission, or, when every CPU was busy, the end of the
             job whose CPU it took (jobs replayed in start order over the node's job slots);
  started    submitit's "Starting with JobEnvironment" line in the job's log (its Python is up);
  recorded   the mtime of the trial's record (records/<key>.json).
overhead = (recorded - ready) - trial_seconds: scheduling, process start, imports, config and data
set-up; the time spent queued behind other jobs for a free CPU is excluded.
"""

from __future__ import annotations

import argparse
import pickle
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAUNCHER = (
    "hydra/launcher=slurm",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2",
    "hydra.launcher.timeout_min=10",
)
STARTED = re.compile(r"submitit INFO \((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\) - Starting with JobEnvironment")


@dataclass
class JobTimes:
    job: str
    submitted: float
    started: float
    recorded: float
    trial_seconds: float
    ready: float = 0.0

    @property
    def overhead(self) -> float:
        return self.recorded - self.ready - self.trial_seconds


def job_times(out: Path) -> list[JobTimes]:
    jobs = []
    for folder in sorted(p for p in (out / ".submitit").iterdir() if re.fullmatch(r"\d+_\d+", p.name)):
        array = folder.name.split("_")[0]
        submitted = (out / ".submitit" / array / f"{array}_submission.sh").stat().st_mtime
        log = next(folder.glob("*_log.out")).read_text()
        started = datetime.strptime(STARTED.search(log).group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        with next(folder.glob("*_result.pkl")).open("rb") as handle:
            outcome, job_return = pickle.load(handle)
        if outcome != "success":
            raise SystemExit(f"job {folder.name} failed: {job_return}")
        record = job_return.return_value
        recorded = (out / "records" / f"{record['key']}.json").stat().st_mtime
        jobs.append(JobTimes(folder.name, submitted, started, recorded, record["trial_seconds"]))
    return jobs


def replay_slots(jobs: list[JobTimes], slots: int) -> None:
    """Set each job's ``ready``: the submission, or when the slot it took was freed by an earlier job."""
    free_at = [min(job.submitted for job in jobs)] * slots
    for job in sorted(jobs, key=lambda j: j.started):
        slot = min(range(slots), key=lambda s: free_at[s])
        job.ready = max(job.submitted, free_at[slot])
        free_at[slot] = job.recorded


def node_slots() -> int:
    cpus = subprocess.run(["sinfo", "--noheader", "--format=%c"], capture_output=True, text=True, check=True)
    return sum(int(line) for line in cpus.stdout.split())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="smoke sweeps to run (4 jobs each)")
    parser.add_argument("--partition", default=None, help="SLURM partition (default: the cluster's default)")
    args = parser.parse_args()
    if shutil.which("sbatch") is None:
        raise SystemExit('error: sbatch is not on PATH; start a cluster: scripts/slurm_local.sh up; eval "$(...)"')
    slots = node_slots()
    launcher = [*LAUNCHER, *([f"hydra.launcher.partition={args.partition}"] if args.partition else [])]
    print(f"{slots} one-CPU job slots; smoke sweep (4 trials) x {args.repeats}")
    print(f"{'job':>8} {'wait':>6} {'to start':>8} {'to record':>9} {'trial':>6} {'overhead':>8}  (seconds)")
    medians = []
    with tempfile.TemporaryDirectory() as root:
        for repeat in range(args.repeats):
            out = Path(root) / f"sweep{repeat}"
            command = [sys.executable, "-m", "bench.run", "sweep=smoke", "quiet=true", f"results_root={root}"]
            began = time.time()
            done = subprocess.run(
                [*command, f"hydra.sweep.dir={out}", *launcher], cwd=REPO, capture_output=True, text=True
            )
            ended = time.time()
            if done.returncode != 0:
                raise SystemExit(f"the sweep failed:\n{done.stderr[-2000:]}")
            jobs = job_times(out)
            replay_slots(jobs, slots)
            for job in jobs:
                print(
                    f"{job.job:>8} {job.ready - job.submitted:6.2f} {job.started - job.ready:8.2f} "
                    f"{job.recorded - job.ready:9.2f} {job.trial_seconds:6.2f} {job.overhead:8.2f}"
                )
            medians.append(statistics.median(job.overhead for job in jobs))
            first_submission = min(job.submitted for job in jobs)
            last_record = max(job.recorded for job in jobs)
            print(
                f"sweep {repeat}: {ended - began:.1f} s wall: {first_submission - began:.1f} s to submit, "
                f"{last_record - first_submission:.1f} s of jobs, {ended - last_record:.1f} s after the last record "
                f"(report); median overhead {medians[-1]:.2f} s per job"
            )
    if len(medians) > 1:
        print(f"median overhead per job, per sweep: {', '.join(f'{m:.2f}' for m in medians)} s")


if __name__ == "__main__":
    main()
