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


def test_an_option_the_method_lacks_is_a_one_line_error(run_cli, tmp_path):
    plugin = tmp_path / "my_attack.py"
    plugin.write_text(example_source())
    done = run_cli(
        f"plugins=[{plugin}]", "method=external", "method.name=cosine_tv", "sweep=none", "+method.params.nope=1"
    )
    assert done.returncode == 2
    assert "has no option nope" in done.stderr and "tv_weight" in done.stderr
