"""The worked example of docs/adding_a_method.md, run from outside the package through python -m bench.run."""

import json
import re

from tests.conftest import REPO


def example_source() -> str:
    text = (REPO / "docs" / "adding_a_method.md").read_text()
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def test_external_method_from_the_docs_runs_through_the_cli(run_cli, tmp_path):
    plugin = tmp_path / "my_attack.py"
    plugin.write_text(example_source())
    out = tmp_path / "plugin-run"
    done = run_cli(
        f"plugins=[{plugin}]",
        "method=external",
        "method.name=cosine_tv",
        "+method.params.tv_weight=0.02",
        "sweep=none",
        "batch_size=2",
        "iterations=30",
        "dataset=cifar10_sample",
        "model=lenet",
        f"hydra.run.dir={out}",
    )
    assert done.returncode == 0, done.stderr
    (path,) = (out / "records").glob("*.json")
    record = json.loads(path.read_text())
    assert record["status"] == "ok" and record["method"] == "cosine_tv" and record["iterations"] == 30
    assert record["config"]["method"]["tv_weight"] == 0.02
    assert record["label_accuracy"] == 1.0 and record["psnr"] > 8


def test_an_option_the_method_lacks_is_a_one_line_error(refused, tmp_path):
    plugin = tmp_path / "my_attack.py"
    plugin.write_text(example_source())
    code, stderr = refused(
        f"plugins=[{plugin}]", "method=external", "method.name=cosine_tv", "sweep=none", "+method.params.nope=1"
    )
    assert code == 2, stderr
    assert len(stderr.strip().splitlines()) == 1
    assert "has no option nope" in stderr and "tv_weight" in stderr


def test_a_method_in_one_temporary_file_runs_through_a_sweep_the_report_and_perf(run_cli, tmp_path):
    """Adding a method touches nothing in the repository: the sweep, the report and perf take it from the registry."""
    import subprocess
    import sys

    import pandas as pd

    plugin = tmp_path / "my_attack.py"
    plugin.write_text(example_source())
    out = tmp_path / "results" / "sweep"
    done = run_cli(
        f"plugins=[{plugin}]",
        "sweep=smoke",
        "method=cosine_tv,idlg",
        "iterations=3",
        "figures=true",
        f"hydra.sweep.dir={out}",
    )
    assert done.returncode == 0, done.stderr
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary.method) == {"cosine_tv", "idlg"} and summary.n_ok.sum() == 4
    assert "cosine_tv" in (out / "report.md").read_text() and (out / "figures" / "psnr_vs_batch_size.pdf").is_file()
    perf = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.perf",
            "--plugins",
            str(plugin),
            "--methods",
            "cosine_tv",
            "--models",
            "lenet",
            "--batch-sizes",
            "1",
            "--iterations",
            "2",
            "--repeats",
            "1",
            "--experiments",
            "none",
            "--no-harness",
            "--out",
            str(tmp_path / "perf.json"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert perf.returncode == 0, perf.stderr[-2000:]
    (cell,) = json.loads((tmp_path / "perf.json").read_text())["cells"]
    assert cell["method"] == "cosine_tv" and cell["status"] == "ok" and cell["ours_s_per_iter"] > 0
