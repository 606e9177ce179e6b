"""Every registered attack, run twice with the same settings, gives the same record and the same images.

The normal suite runs each method twice in one process through the Python API (which gives the command line's
record: tests/test_python_api.py) and compares the records and the reconstruction tensors exactly. The slow
suite (-m slow) runs each method twice through the command line, in separate processes, and compares the
records and the PNG bytes.

Settings: ``sweep=none batch_size=2 iterations=5 threads=1 device=cpu``, with each method's random parts switched
on: IG with two restarts, GradInversion with its Langevin noise (its default), AFGI with both stages (its stage two
starts at round(target_fraction * iterations), which must lie inside the budget). Records are compared without
their wall-clock fields (``tests.test_sweeps.TIMING``); the PNG grids and strips byte for byte.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.records import canonical_json
from methods.base import get_method_class, is_reference, list_methods
from methods.options import defaults
from tests.test_sweeps import comparable, records

ITERATIONS = 5
SETTINGS = ("sweep=none", "batch_size=2", f"iterations={ITERATIONS}", "threads=1", "device=cpu")
OPTIONS = {"ig": ("method.params.restarts=2",)}
API_OPTIONS = {"ig": {"restarts": 2}}
# what "the random parts switched on" means for each method, read back from the record's resolved options
EXPECTED_OPTIONS = {"ig": {"restarts": 2}}


def afgi_stage_two_starts() -> int:
    return round(defaults(get_method_class("afgi"))["target_fraction"] * ITERATIONS)


def images(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for folder in ("grids", "strips") for p in (out / folder).glob("*")}


def check_random_parts_are_on(method: str, record: dict) -> None:
    resolved = record["config"]["method"]
    for option, value in EXPECTED_OPTIONS.get(method, {}).items():
        assert resolved[option] == value
    if method == "gradinversion":
        assert resolved["noise"] > 0
    if method == "afgi":
        assert 0 < afgi_stage_two_starts() < ITERATIONS
        assert round(resolved["target_fraction"] * ITERATIONS) == afgi_stage_two_starts()
        assert all(resolved[k] for k in ("use_mean", "use_edge"))


@pytest.mark.parametrize("method", list_methods())
def test_every_method_gives_identical_records_and_tensors_twice_in_one_process(method):
    import gia_bench as gb

    def run() -> gb.TrialResult:
        return gb.trial(
            method,
            batch_size=2,
            iterations=ITERATIONS,
            threads=1,
            device="cpu",
            quiet=True,
            score_every=2,
            **API_OPTIONS.get(method, {}),
        )

    first, second = run(), run()
    expected = 0 if is_reference(get_method_class(method)) else ITERATIONS  # the floors optimise nothing
    assert first.record["status"] == "ok" and first.record["iterations"] == expected, first.record.get("reason")
    # as the record files hold them (NaN, e.g. LPIPS without its weights, is null there and never equals itself)
    assert canonical_json(comparable(first.record)) == canonical_json(comparable(second.record))
    assert torch.equal(first.reconstruction, second.reconstruction)
    assert torch.equal(first.predicted_labels, second.predicted_labels)
    check_random_parts_are_on(method, first.record)


@pytest.mark.slow
@pytest.mark.parametrize("method", list_methods())
def test_every_method_gives_identical_records_and_images_twice(method, run_cli, tmp_path):
    outs = [tmp_path / "first", tmp_path / "second"]
    for out in outs:
        done = run_cli(*SETTINGS, f"method={method}", *OPTIONS.get(method, ()), f"hydra.run.dir={out}")
        assert done.returncode == 0, done.stderr
    first, second = (records(out) for out in outs)
    (record,) = first.values()
    expected = 0 if is_reference(get_method_class(method)) else ITERATIONS  # the floors optimise nothing
    assert record["status"] == "ok" and record["iterations"] == expected, record.get("reason")
    assert first == second
    first_images = images(outs[0])
    assert len(first_images) == 3 and first_images == images(outs[1])
    check_random_parts_are_on(method, record)
    assert record["seed"] == 0 and record["versions"]["torch"] and record["device"]
    assert {"config", "git_commit"} <= set(record)
