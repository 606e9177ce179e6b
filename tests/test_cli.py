"""The command line, end to end, with tiny budgets on the embedded sample."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image


def records(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((folder / "records").glob("*.json"))]


def test_one_trial(run_cli, tmp_path):
    out = tmp_path / "one"
    done = run_cli(
        "sweep=none",
        "figures=true",  # the console check below is about the figures' PDF font subsetting
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
    assert record["label_accuracy"] == 1.0
    # The recorded PSNR is the PSNR of the images the run saved: recomputed here from the 8-bit strips (10 log10 of
    # 1 / MSE), it agrees to the rounding of 8 bits, which moves it by under 0.01 dB at these errors (measured:
    # under 1e-3 dB). Three iterations of iDLG do not reconstruct yet (4.7-10.4 dB over seeds 0-2, below a grey
    # image), so a quality floor here would test nothing: the method tests hold those.
    truth, reconstruction = (strip(out, record["key"], part) for part in ("truth", "reconstruction"))
    mse = float(((reconstruction - truth) ** 2).mean())
    assert abs(record["psnr"] - 10 * math.log10(1 / mse)) < 0.01
    assert record["per_image_psnr"] == [record["psnr"]]
    assert (out / "summary.md").exists() and (out / "summary.csv").exists()
    assert list((out / "grids").glob("*.png"))
    assert "PSNR" in done.stdout and str(out) in done.stdout
    # the PDF figures' font subsetting must not flood the console (it logged ~200 INFO lines per report)
    assert "fontTools" not in done.stdout + done.stderr


def strip(out: Path, key: str, part: str) -> np.ndarray:
    return np.asarray(Image.open(out / "strips" / f"{key}-{part}.png").convert("RGB"), dtype=np.float64) / 255


def test_least_duplication_at_batch_48(run_cli, tmp_path):
    """dup_ratio=least at B = 48 on crops (images in 19 of its classes): 19 distinct labels, r = (48 - 19) / 47.

    iDLG with one iteration on LeNet: the cheapest attack trial that still draws, attacks, scores and records the batch.
    """
    out = tmp_path / "least"
    done = run_cli(
        "sweep=none",
        "method=idlg",
        "model=lenet",
        "iterations=1",
        "batch_size=48",
        "dup_ratio=least",
        f"hydra.run.dir={out}",
    )
    assert done.returncode == 0, done.stderr
    (record,) = records(out)
    assert record["status"] == "ok" and record["dataset"] == "crops"
    assert record["config"]["dup_ratio"] == "least" and record["dup_ratio"] == (48 - 19) / (48 - 1)
    assert len(record["true_labels"]) == 48 and len(set(record["true_labels"])) == 19


def test_smoke_sweep_and_resume(smoke_results, tmp_path):
    import shutil

    from tests import processes
    from tests.conftest import REPO, smoke_command

    got = records(smoke_results)
    assert len(got) == 4 and {r["status"] for r in got} == {"ok"}
    summary = pd.read_csv(smoke_results / "summary.csv")
    assert set(summary.method) == {"dlg", "idlg"} and (summary.n_ok == 1).all()
    # run with figures=false (tests/conftest.py): the tables and report.md, no figures, and how to draw them
    assert not (smoke_results / "figures").exists()
    assert f"python -m bench.report {smoke_results}" in (smoke_results / "report.md").read_text()
    out = tmp_path / "sweep"
    shutil.copytree(smoke_results, out)
    again = processes.run(smoke_command(out), cwd=REPO, timeout=600)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already done") == 4
    assert "[4/4, 0 left]" in again.stdout
    assert records(out) == got
    # a sweep value given on the command line replaces the sweep file's in the progress count (4 -> 2 trials)
    narrowed = processes.run(smoke_command(out, "batch_size=1"), cwd=REPO, timeout=600)
    assert narrowed.returncode == 0, narrowed.stderr
    assert "[2/2, 0 left]" in narrowed.stdout and "/4" not in narrowed.stdout


def test_unknown_method_is_one_line_and_exit_2(refused):
    code, stderr = refused("sweep=none", "method=external", "method.name=nope")
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown method 'nope'" in lines[0] and "idlg" in lines[0]
