"""Bad input gets one line and exit code 2; faults lose nothing; runs are reproducible."""

import json
import re
import subprocess
import sys

import pytest
import torch

from bench.client import client_update
from bench.config import SCHEMA
from bench.data import load_dataset
from bench.errors import UserError
from bench.models import build_model
from bench.run import check_command_line
from methods.base import GradientError, Observation
from tests import processes
from tests.conftest import REPO, refused_in_a_fork, smoke_command
from tests.test_sweeps import comparable, records

BAD_INPUT = {
    "unknown method": (["method=nope"], "unknown method 'nope'; available: afgi, dlg"),
    "unknown dataset": (["dataset=nope"], "unknown dataset 'nope'; available: cifar10"),
    "unknown model": (["model=nope"], "unknown model 'nope'; available: convnet"),
    "unknown sweep": (["sweep=nope"], "unknown sweep 'nope'; available: afgi_ablation, batchsize"),
    "unknown label strategy": (["sweep=none", "task=labels", "label_strategy=nope"], "available: analytic"),
    "batch size zero": (["sweep=none", "batch_size=0"], "batch_size=0 is not valid; give a value >= 1"),
    "batch size not an integer": (["sweep=none", "batch_size=1.5"], "batch_size=1.5 is not valid; give an integer"),
    "ratio outside [0,1]": (["sweep=none", "dup_ratio=1.5"], "dup_ratio=1.5 is not valid; give a value <= 1"),
    "too many classes": (["sweep=none", "batch_size=9", "dataset=cifar10_sample"], "needs 9 distinct classes"),
    "too few images in a class": (
        ["sweep=none", "batch_size=5", "dup_ratio=1", "dataset=cifar10_sample"],
        "at least 5 images",
    ),
    "missing dataset offline": (["sweep=none", "dataset=cifar10", "dataset.download=false"], "put cifar-10-batches-py"),
    "malformed override": (["sweep=none", "iterations=abc"], "iterations='abc' is not valid"),
    "output outside the results root": (["sweep=none", "hydra.run.dir=../escape"], "lies outside results_root"),
    "unwritable results folder": (["sweep=none", f"results_root={REPO / 'README.md'}"], "is not writable"),
    "resolution too small for the model": (["sweep=none", "dataset.resolution=7"], "use a larger dataset.resolution"),
    "zero threads": (["sweep=none", "threads=0"], "threads=0 is not valid; give a value >= 1"),
    "threat model not a boolean": (["sweep=none", "labels_known=maybe"], "labels_known='maybe' is not valid"),
    "negative learning rate": (["sweep=none", "method.params.lr=-1"], "method.params.lr=-1 is not valid for method"),
    "zero restarts": (["sweep=none", "method=ig", "method.params.restarts=0"], "method.params.restarts=0 is not valid"),
    "unknown method option": (["sweep=none", "method=ig", "method.params.nope=1"], "method 'ig' has no option 'nope'"),
    "unknown launcher": (["sweep=none", "hydra/launcher=nope"], "unknown launcher 'nope'; available: basic"),
    "unknown key": (["sweep=none", "nope=1"], "unknown key 'nope'"),
    "bad value inside a sweep": (["sweep=smoke", "batch_size=1,0"], "batch_size=0 is not valid"),
}


# Run as real processes (exit status, and nothing else on stderr: no Hydra log line, no warning): one refused by the
# command-line check, one by Hydra's composition, one inside a trial. The rest run ``cli()`` in a fork of the test's
# process (``refused_in_a_fork``): the same code and the same one line, without a new interpreter's ~3 s start-up.
IN_A_PROCESS = ("unknown method", "unknown launcher", "too few images in a class")


def refused_by_a_process(arguments: list[str]) -> tuple[int, str]:
    command = [sys.executable, "-m", "bench.run", *arguments]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    return done.returncode, done.stderr


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_one_line_with_exit_code_2(case, tmp_path):
    overrides, expected = BAD_INPUT[case]
    arguments = ["quiet=true", "iterations=2", "device=cpu"]
    if not any(o.startswith("results_root=") for o in overrides):
        arguments.append(f"results_root={tmp_path}")
    if case in IN_A_PROCESS:
        code, stderr = refused_by_a_process([*arguments, *overrides])
    else:
        code, stderr = refused_in_a_fork([*arguments, *overrides])
    assert code == 2, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert expected in lines[0]


def observation(gradients=None):
    dataset = load_dataset("cifar10_sample")
    images, labels = dataset.batch(torch.tensor([0]))
    model = build_model("lenet", num_classes=10, image_shape=dataset.image_shape, seed=0)
    obs = client_update(model, images, labels, mean=dataset.mean, std=dataset.std, num_classes=10)
    if gradients is None:
        return obs
    return Observation(obs.model, gradients(obs.gradients), 1, obs.image_shape, 10, obs.mean, obs.std)


def test_nan_gradients_are_refused():
    def poison(grads):
        return (grads[0] * float("nan"), *grads[1:])

    with pytest.raises(GradientError, match="NaN or inf"):
        observation(poison)


def test_gradients_of_the_wrong_shape_are_refused():
    with pytest.raises(GradientError, match="do not belong to this model"):
        observation(lambda grads: (grads[0][:, :2], *grads[1:]))
    with pytest.raises(GradientError, match="trainable parameters"):
        observation(lambda grads: grads[:-1])


smoke = smoke_command


@pytest.fixture(scope="module")
def finished(smoke_results):
    return smoke_results


def test_corrupt_record_is_set_aside_and_rerun(finished, tmp_path):
    import shutil

    out = tmp_path / "sweep"
    shutil.copytree(finished, out)
    victim = sorted((out / "records").glob("*.json"))[0]
    expected = comparable(json.loads(victim.read_text()))
    victim.write_text(victim.read_text()[:40])
    done = processes.run(smoke(out), cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "moved it to" in done.stderr and (out / "records" / "corrupt" / victim.name).exists()
    assert comparable(json.loads(victim.read_text())) == expected


def test_resuming_with_an_incompatible_config_is_refused(finished, tmp_path):
    import shutil

    out = tmp_path / "sweep"
    shutil.copytree(finished, out)
    done = processes.run(smoke(out, "model=convnet"), cwd=REPO, timeout=120)
    assert done.returncode == 2
    assert "holds an experiment with different model" in done.stderr


def test_no_unsafe_loading_or_shell_in_the_code():
    sources = [p for folder in ("bench", "methods") for p in (REPO / folder).rglob("*.py")]
    for path in sources:
        text = path.read_text()
        assert "pickle.load" not in text and "shell=True" not in text and "os.system(" not in text, path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path}: {call}"


OUT_OF_MEMORY_PLUGIN = '''
from dataclasses import dataclass
from typing import ClassVar

import torch

from methods import register_method


@register_method()
@dataclass
class Greedy:
    """Stands in for a model too large for the device: the allocation fails the way torch reports it."""

    name: ClassVar[str] = "greedy"
    paper: ClassVar[str] = "a test double"
    iterations: int = 1

    def reconstruct(self, observation, *, generator, callback=None, callback_every=0, progress=False):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
'''


def test_out_of_memory_is_a_failed_trial_with_the_reason(run_cli, tmp_path):
    plugin = tmp_path / "greedy.py"
    plugin.write_text(OUT_OF_MEMORY_PLUGIN)
    out = tmp_path / "oom"
    done = run_cli(f"plugins=[{plugin}]", "method=external", "method.name=greedy", "sweep=none", f"hydra.run.dir={out}")
    assert done.returncode == 0, done.stderr
    (record,) = records(out).values()
    assert record["status"] == "failed"
    assert record["reason"].startswith("out of memory (CUDA out of memory") and "lower batch_size" in record["reason"]


def _invalid_value(key) -> str:
    """One value the schema must refuse for ``key``, derived from its declared type, choices and range."""
    if key.choices:
        return "bogus"
    if key.name == "device":
        return "gpu"
    return {int: "abc", float: "abc", bool: "maybe", list: "5", str: "[1,2]", dict: "5"}[key.kind]


@pytest.mark.parametrize("name", [key.name for key in SCHEMA])
def test_every_setting_refuses_an_invalid_value_before_any_trial(name):
    """Generated from the schema: every top-level key, one invalid value, one line naming the key."""
    key = next(k for k in SCHEMA if k.name == name)
    overrides = ["sweep=none", f"{name}={_invalid_value(key)}"]
    if name == "label_strategy":
        overrides = ["sweep=none", "task=labels", "label_strategy=bogus"]
    with pytest.raises(UserError) as error:
        check_command_line(overrides)
    message = str(error.value)
    assert "\n" not in message and name in message, message


@pytest.mark.parametrize("name", [key.name for key in SCHEMA if key.minimum is not None])
def test_every_range_is_enforced(name):
    key = next(k for k in SCHEMA if k.name == name)
    below = key.minimum - 1
    with pytest.raises(UserError, match=f"{name}={below!r} is not valid; give a value >= "):
        check_command_line(["sweep=none", f"{name}={below}"])
