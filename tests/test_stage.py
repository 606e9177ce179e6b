"""The training stage (model.state=trained@E): checkpoints of one seeded run, the same weights in any request order,
E=0 is the run's initialisation, the held-out accuracy in the record, bad states, and the stage report."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.config import validate
from bench.data import ImageDataset, TensorImages
from bench.errors import UserError
from bench.models import build_model
from bench.report.stage import write_stage_report
from bench.stage import prepare_stage, stage_epochs, steps_per_epoch
from bench.trial import settings_for, trial

SHAPE = (3, 16, 16)
SPEC = {"name": "toy"}


def toy_dataset(n: int = 50, classes: int = 4) -> ImageDataset:
    # class-dependent colour plus noise: a few epochs measurably help
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % classes
    colours = torch.rand(classes, 3, 1, 1, generator=g)
    images = (0.6 * colours[labels] + 0.4 * torch.rand(n, *SHAPE, generator=g)).clamp(0, 1)
    return ImageDataset("toy", TensorImages(images), labels, classes, (0.5,) * 3, (0.25,) * 3, SHAPE)


def at(epochs: int, cache: Path, dataset: ImageDataset | None = None, **model: object) -> tuple[dict, dict]:
    spec = {"name": "convnet", "state": f"trained@{epochs}", "width": 4, "train_batch": 8, **model}
    found, fields = prepare_stage(spec, dataset or toy_dataset(), dataset_spec=SPEC, seed=3, cache_dir=cache)
    return found.state_dict(), fields


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_epoch_is_one_pass_over_the_training_split():
    assert steps_per_epoch(40, 8) == 5
    assert steps_per_epoch(41, 8) == 5  # the incomplete last batch is dropped
    assert steps_per_epoch(6, 32) == 1  # a batch larger than the split is the whole split


def test_the_same_epoch_has_the_same_weights_in_either_request_order(tmp_path, capsys):
    later_first, earlier_first = tmp_path / "later-first", tmp_path / "earlier-first"
    two_a, _ = at(2, later_first)  # from scratch to 2
    one_a, _ = at(1, later_first)  # from scratch to 1 (nothing cached before it)
    one_b, _ = at(1, earlier_first)
    capsys.readouterr()
    two_b, _ = at(2, earlier_first)  # continued from the cached epoch 1: momentum and sampler restored
    assert "from epoch 1 to 2" in capsys.readouterr().err
    assert same(one_a, one_b) and same(two_a, two_b)
    assert not same(one_a, two_a)
    again, _ = at(2, earlier_first)  # cached: loaded with weights_only
    assert "loading convnet at epoch 2" in capsys.readouterr().err
    assert same(again, two_a)
    # the cache is keyed by what changes the weights: another mini-batch is another run
    other, _ = at(2, earlier_first, train_batch=4)
    assert not same(other, two_a)


def test_epoch_zero_is_the_runs_initialisation_and_writes_nothing(tmp_path):
    weights, fields = at(0, tmp_path)
    init = build_model("convnet", num_classes=4, image_shape=SHAPE, seed=3, width=4).state_dict()
    assert same(weights, init)
    assert fields["model_epoch"] == 0 and not list(tmp_path.iterdir())


def test_accuracy_is_recorded_on_held_out_images_and_training_raises_it(tmp_path):
    _, start = at(0, tmp_path, lr=0.02)
    _, trained = at(5, tmp_path, lr=0.02)
    assert start["model_held_out"] == trained["model_held_out"] == 10  # every fifth of 50
    for fields in (start, trained):
        assert 0 <= fields["model_accuracy"] <= 1
    assert trained["model_accuracy"] >= start["model_accuracy"] + 0.5  # 10 images: 1.0 against 0.2 when measured


def test_a_trial_record_carries_the_epoch_and_accuracy_and_plain_states_do_not(tmp_path):
    common = dict(batch_size=1, seed=0, dataset="cifar10_sample", score_every=0, quiet=True, cache_dir=str(tmp_path))
    staged = trial("mean", model={"name": "lenet", "state": "trained@1"}, **common).record
    assert staged["model_state"] == "trained@1" and staged["model_epoch"] == 1
    assert 0 <= staged["model_accuracy"] <= 1 and staged["model_held_out"] == 4  # every fifth of 20
    plain = trial("mean", model={"name": "lenet", "state": "untrained"}, **common).record
    assert not {"model_epoch", "model_accuracy", "model_held_out"} & set(plain)


@pytest.mark.parametrize(
    "state", ["trained@x", "trained@-1", "trained@", "trained@1.5", "trained@01", "trained5", "Trained"]
)
def test_a_bad_state_is_a_user_error_saying_what_to_write(state):
    with pytest.raises(UserError) as info:
        validate(settings_for("mean", model={"name": "lenet", "state": state}))
    message = str(info.value)
    assert message.startswith(f"model.state={state!r} is not valid; use model.state=untrained, trained or trained@E")
    assert "\n" not in message


def test_train_steps_does_not_apply_to_epochs(tmp_path):
    with pytest.raises(UserError, match=r"model.train_steps does not apply to model.state=trained@1 .*; drop it"):
        at(1, tmp_path, train_steps=10)


def test_good_states_parse():
    assert [stage_epochs(s) for s in ("untrained", "trained", "trained@0", "trained@20")] == [None, None, 0, 20]


def test_a_bad_state_on_the_command_line_is_one_line_and_exit_2(refused):
    code, stderr = refused("sweep=stage", "method=mean", "model.state=trained@0,trained@x")
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model.state='trained@x' is not valid")


def test_a_tiny_stage_sweep_makes_the_table_and_figure(run_cli, tmp_path):
    out = tmp_path / "sweep"
    done = run_cli(
        "sweep=stage",
        "method=idlg",
        "batch_size=1",
        "model.state=trained@0,trained@1",
        "iterations=3",
        "score_every=0",
        "dataset=cifar10_sample",
        "model=lenet",
        "figures=true",
        f"hydra.sweep.dir={out}",
        f"cache_dir={tmp_path / 'cache'}",
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    records = [json.loads(p.read_text()) for p in sorted((out / "records").glob("*.json"))]
    assert sorted(r["model_epoch"] for r in records) == [0, 1]
    table = pd.read_csv(out / "stage.csv")  # written by the sweep's report
    assert list(zip(table.method, table.model_epoch, strict=True)) == [("idlg", 0), ("idlg", 1)]
    by_epoch = {r["model_epoch"]: r for r in records}
    for row in table.itertuples():
        assert row.psnr == pytest.approx(by_epoch[row.model_epoch]["psnr"])
        assert row.model_accuracy == pytest.approx(by_epoch[row.model_epoch]["model_accuracy"])
    assert (out / "figures" / "stage.png").stat().st_size > 0
    assert "| idlg | 1 |" in (out / "stage.md").read_text()


def test_no_stage_report_without_stage_trials(tmp_path, capsys):
    from bench.report.stage import main

    assert main([str(tmp_path / "missing")]) == 2
    (tmp_path / "records").mkdir()
    assert main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("error:") == 2
    assert write_stage_report(tmp_path) is None and not (tmp_path / "stage.md").exists()
