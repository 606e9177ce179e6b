"""The Python API: the example in docs/python_api.md runs as written, and equals the command line's record."""

import functools
import re

import pytest

from tests.conftest import REPO


def test_the_documented_example_runs(capsys, tmp_path, monkeypatch):
    import gia_bench as gb

    # The trained model the example asks for is cached under tmp_path, not in the checkout's .cache: a copy left
    # there would spare every later run the training this one does (and hide a broken training path locally).
    monkeypatch.setattr(gb, "trial", functools.partial(gb.trial, cache_dir=str(tmp_path / "cache")))
    text = (REPO / "docs" / "python_api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "docs/python_api.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("ok ")
    assert "batch_size=0 is not valid" in printed[-1]
    assert list((tmp_path / "cache" / "models").glob("convnet-*.pt")), "the example's trained model is not cached"


def test_api_record_equals_the_command_line_record(run_cli, tmp_path):
    import json

    import gia_bench as gb

    api = gb.trial("idlg", batch_size=2, iterations=3, quiet=True, device="cpu", out_dir=tmp_path / "api")
    done = run_cli(
        "sweep=none",
        "method=idlg",
        "batch_size=2",
        "iterations=3",
        "device=cpu",
        f"hydra.run.dir={tmp_path}/results/cli",
    )
    assert done.returncode == 0, done.stderr
    (path,) = (tmp_path / "results" / "cli" / "records").glob("*.json")
    cli = json.loads(path.read_text())
    assert cli["key"] == api.record["key"]
    for key in ("psnr", "ssim", "label_accuracy", "per_image_psnr", "predicted_labels", "iterations"):
        assert cli[key] == api.record[key], key
    again = gb.trial("idlg", batch_size=2, iterations=3, quiet=True, device="cpu", out_dir=tmp_path / "api")
    assert again.record["resumed"] and again.reconstruction is None


def test_unknown_option_and_method_are_one_line_errors():
    import gia_bench as gb
    from bench.errors import UserError

    with pytest.raises(UserError, match="method 'ig' has no option nope"):
        gb.trial("ig", nope=1)
    with pytest.raises(UserError, match="unknown method 'nope'; available: .*ig"):
        gb.trial("nope")
