"""The command line, end to end, with tiny budgets on the embedded sample."""

import json
from pathlib import Path

import pandas as pd


def records(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((folder / "records").glob("*.json"))]


def test_one_trial(run_cli, tmp_path):
    out = tmp_path / "one"
    done = run_cli(
        "sweep=none",
        "method=idlg",
        "batch_size=1",
        "dup_ratio=0",
        "seed=0",
        "iterations=3",
        "dataset=cifar10_sample",
        "model=lenet",
        f"hydra.run.dir={out}",
    )
    assert done.returncode == 0, done.stderr
    (record,) = records(out)
    assert record["status"] == "ok" and record["method"] == "idlg" and record["iterations"] == 3
    assert record["label_accuracy"] == 1.0 and record["psnr"] > 0
    assert (out / "summary.md").exists() and (out / "summary.csv").exists()
    assert list((out / "grids").glob("*.png"))
    assert "PSNR" in done.stdout and str(out) in done.stdout
    # the PDF figures' font subsetting must not flood the console (it logged ~200 INFO lines per report)
    assert "fontTools" not in done.stdout + done.stderr


def test_smoke_sweep_and_resume(smoke_results, tmp_path):
    import shutil
    import subprocess

    from tests.conftest import REPO, smoke_command

    got = records(smoke_results)
    assert len(got) == 4 and {r["status"] for r in got} == {"ok"}
    summary = pd.read_csv(smoke_results / "summary.csv")
    assert set(summary.method) == {"dlg", "idlg"} and (summary.n_ok == 1).all()
    out = tmp_path / "sweep"
    shutil.copytree(smoke_results, out)
    again = subprocess.run(smoke_command(out), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already done") == 4
    assert records(out) == got


def test_unknown_method_is_one_line_and_exit_2(run_cli):
    done = run_cli("sweep=none", "method=external", "method.name=nope")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown method 'nope'" in lines[0] and "idlg" in lines[0]
