"""Defences: each on a known tensor, DP-SGD against a loop in float64, epsilon against the accountant library,
Soteria's mask, bad strengths, the trial key, and a tiny defence sweep (deterministic, resumable)."""

import importlib.util
import math
import sys
import warnings

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from bench.client import client_round
from bench.defences import (
    ClientBatch,
    build_defence,
    defence_key,
    defence_params,
    global_norm,
    list_defences,
    per_example_gradients,
)
from bench.errors import UserError
from bench.models import build_model
from bench.report.defences import write_defence_report
from methods.base import NotApplicableError
from tests.test_sweeps import records


def batch_of(*gradients: torch.Tensor) -> ClientBatch:
    return ClientBatch(model=nn.Identity(), inputs=torch.zeros(1), labels=torch.zeros(1), gradients=gradients)


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


KNOWN = (torch.tensor([[3.0, 0.0], [0.0, 4.0]]), torch.tensor([0.0, 0.0, 12.0]))  # global norm 13


def test_registry_lists_every_defence():
    assert list_defences() == ["clip", "dpsgd", "gaussian", "none", "prune", "quantise", "soteria"]


def test_clip_scales_to_max_norm_and_leaves_small_updates_alone():
    clipped = build_defence("clip", max_norm=1.3).apply(batch_of(*KNOWN), generator())
    assert float(global_norm(clipped)) == pytest.approx(1.3)
    assert torch.allclose(clipped[1], torch.tensor([0.0, 0.0, 1.2]))
    kept = build_defence("clip", max_norm=20.0).apply(batch_of(*KNOWN), generator())
    assert all(torch.equal(a, b) for a, b in zip(kept, KNOWN, strict=True))


def test_gaussian_noise_has_sigma_and_comes_from_the_generator_only():
    zeros = (torch.zeros(200_000),)
    noisy = build_defence("gaussian", sigma=0.5).apply(batch_of(*zeros), generator(1))
    assert float(noisy[0].std()) == pytest.approx(0.5, rel=0.01)
    torch.manual_seed(123)
    again = build_defence("gaussian", sigma=0.5).apply(batch_of(*zeros), generator(1))
    assert torch.equal(noisy[0], again[0])
    other = build_defence("gaussian", sigma=0.5).apply(batch_of(*zeros), generator(2))
    assert not torch.equal(noisy[0], other[0])
    # relative: the noise's norm is about sigma times the update's norm
    update = (torch.full((100_000,), 3.0),)
    relative = build_defence("gaussian", sigma=0.1, relative=True).apply(batch_of(*update), generator())
    ratio = float(global_norm((relative[0] - update[0],))) / float(global_norm(update))
    assert ratio == pytest.approx(0.1, rel=0.02)


def test_prune_zeroes_the_smallest_fraction_per_layer():
    layer = torch.tensor([5.0, -1.0, 0.5, -7.0, 2.0, 3.0, -0.25, 8.0, 4.0, -6.0])
    (pruned,) = build_defence("prune", p=0.3).apply(batch_of(layer), generator())
    assert int((pruned == 0).sum()) == 3
    assert torch.equal(pruned, torch.tensor([5.0, 0.0, 0.0, -7.0, 2.0, 3.0, 0.0, 8.0, 4.0, -6.0]))
    big = torch.randn(1000, generator=generator())
    (pruned,) = build_defence("prune", p=0.9).apply(batch_of(big), generator())
    assert int((pruned == 0).sum()) == 900
    assert float(pruned.abs().max()) == float(big.abs().max())


def test_quantise_levels():
    layer = torch.linspace(-1.0, 2.0, 101)
    (two_bit,) = build_defence("quantise", bits=2).apply(batch_of(layer), generator())
    assert sorted(set(two_bit.tolist())) == pytest.approx([-1.0, 0.0, 1.0, 2.0])
    assert float((two_bit - layer).abs().max()) <= 0.5 + 1e-6  # half a step
    (sign,) = build_defence("quantise", bits=1).apply(batch_of(layer), generator())
    magnitude = float(layer.abs().mean())
    assert sorted(set(sign.tolist())) == pytest.approx([-magnitude, magnitude])
    assert torch.equal(sign > 0, layer >= 0)
    (eight_bit,) = build_defence("quantise", bits=8).apply(batch_of(layer), generator())
    assert len(set(eight_bit.tolist())) <= 256 and float((eight_bit - layer).abs().max()) <= 3 / 255 / 2 + 1e-6


@pytest.mark.parametrize("name", ["lenet", "convnet"])
def test_dpsgd_per_example_clipping_matches_a_loop_in_float64(name):
    model = build_model(name, num_classes=5, image_shape=(3, 16, 16), seed=0).double().train()
    inputs = torch.randn(3, 3, 16, 16, generator=generator(), dtype=torch.float64)
    labels = torch.tensor([0, 3, 3])
    params = [p for p in model.parameters() if p.requires_grad]
    expected = [torch.zeros_like(p) for p in params]
    norms = []
    for i in range(3):  # each example alone: a batch of one (BatchNorm with that example's statistics)
        loss = nn.functional.cross_entropy(model(inputs[i : i + 1]), labels[i : i + 1])
        grads = torch.autograd.grad(loss, params)
        norm = float(global_norm(grads))
        norms.append(norm)
        for total, g in zip(expected, grads, strict=True):
            total += g * min(1.0, 0.5 / (norm + 1e-6))
    assert min(norms) > 0.5  # every example is actually clipped
    dpsgd = build_defence("dpsgd", max_norm=0.5, noise_multiplier=0.0)
    gradients = tuple(torch.zeros_like(p) for p in params)
    got = dpsgd.apply(ClientBatch(model, inputs, labels, gradients), generator())
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b / 3, rtol=1e-10, atol=1e-12)
    # without clipping, the per-example gradients sum to B times the batch gradient (no BatchNorm in LeNet)
    if name == "lenet":
        batch_grad = torch.autograd.grad(nn.functional.cross_entropy(model(inputs), labels), params)
        per_example = per_example_gradients(model, inputs, labels)
        for a, b in zip(per_example, batch_grad, strict=True):
            torch.testing.assert_close(a.sum(0), 3 * b, rtol=1e-10, atol=1e-12)


def test_dpsgd_noise_is_noise_multiplier_times_max_norm_over_batch():
    model = build_model("lenet", num_classes=5, image_shape=(3, 16, 16), seed=0)
    inputs, labels = torch.randn(4, 3, 16, 16, generator=generator()), torch.tensor([0, 1, 2, 3])
    gradients = tuple(torch.zeros_like(p) for p in model.parameters())
    batch = ClientBatch(model, inputs, labels, gradients)
    clean = build_defence("dpsgd", max_norm=2.0, noise_multiplier=0.0).apply(batch, generator())
    noisy = build_defence("dpsgd", max_norm=2.0, noise_multiplier=3.0).apply(batch, generator())
    noise = torch.cat([(a - b).flatten() for a, b in zip(noisy, clean, strict=True)])
    assert float(noise.std()) == pytest.approx(3.0 * 2.0 / 4, rel=0.02)


def test_epsilon_of_one_step_matches_the_accountant_library():
    dp_accounting = pytest.importorskip("dp_accounting")
    dpsgd = build_defence("dpsgd", max_norm=1.0, noise_multiplier=1.1, delta=1e-5)
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(1.1), 1)
    privacy = dpsgd.privacy()
    assert privacy["epsilon"] == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)
    assert privacy["delta"] == 1e-5
    # below the classic RDP-to-DP conversion of the Gaussian mechanism, min over orders a of a/(2 s^2) + log(1/d)/(a-1)
    classic = min(a / (2 * 1.1**2) + math.log(1e5) / (a - 1) for a in [1 + k / 100 for k in range(1, 5000)])
    assert 0.5 * classic < privacy["epsilon"] <= classic
    assert build_defence("dpsgd", noise_multiplier=0.0).privacy()["epsilon"] == math.inf


def test_epsilon_without_the_extra_is_nan_with_a_warning(monkeypatch):
    monkeypatch.setitem(sys.modules, "dp_accounting", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        epsilon = build_defence("dpsgd").privacy()["epsilon"]
    assert math.isnan(epsilon)
    assert len(caught) == 1 and "dp-accounting" in str(caught[0].message)


def test_soteria_zeroes_the_classifier_columns_of_the_lowest_scoring_features():
    model = build_model("lenet", num_classes=5, image_shape=(3, 16, 16), seed=0)
    images, labels = torch.rand(2, 3, 16, 16, generator=generator()), torch.tensor([1, 4])
    soteria = build_defence("soteria", p=0.5)
    clean = client_round(model, images, labels, mean=(0.5,) * 3, std=(0.5,) * 3, num_classes=5)
    defended = client_round(
        model,
        images,
        labels,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        num_classes=5,
        defence=soteria,
        defence_generator=generator(),
    )
    before, after = clean.observation.gradients, defended.observation.gradients
    features = after[-2].shape[1]
    zero_columns = (after[-2] == 0).all(dim=0)
    assert int(zero_columns.sum()) == features // 2
    assert defended.observation.defence.name == "soteria" and defended.observation.defence.params == {"p": 0.5}
    # the zeroed columns are those of the lowest scores; every other gradient is untouched
    scores = soteria.scores(model.train(), (images - 0.5) / 0.5)
    assert float(scores[zero_columns].max()) <= float(scores[~zero_columns].min())
    for a, b in zip(before[:-2] + before[-1:], after[:-2] + after[-1:], strict=True):
        assert torch.equal(a, b)
    assert 0 < defended.update_cosine < 1


def test_soteria_does_not_apply_without_a_final_linear_layer():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.Softmax(dim=1))
    inputs = torch.randn(2, 3, 2, 2)
    gradients = tuple(torch.zeros_like(p) for p in model.parameters())
    with pytest.raises(NotApplicableError, match="not an nn.Linear"):
        build_defence("soteria").apply(ClientBatch(model, inputs, torch.tensor([0, 1]), gradients), generator())


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("gaussian", {"sigma": -1.0}, "sigma must be a non-negative"),
        ("prune", {"p": 1.0}, r"p must lie in \[0, 1\)"),
        ("prune", {"p": -0.1}, r"p must lie in \[0, 1\)"),
        ("quantise", {"bits": 0}, "bits must be an integer of at least 1"),
        ("clip", {"max_norm": 0.0}, "max_norm must be a positive"),
        ("clip", {"norm": 1.0}, "has no parameter norm"),
        ("blur", {}, "unknown defence 'blur'"),
    ],
)
def test_bad_strengths_are_user_errors(name, params, message):
    with pytest.raises(UserError, match=message):
        build_defence(name, **params)


def test_level_picks_the_swept_strength():
    config = {"name": "prune", "p": 0.7, "level": 2, "strengths": {"p": [0.3, 0.7, 0.9, 0.99]}}
    assert defence_params(config) == {"p": 0.9}
    with pytest.raises(UserError, match="defence.level=7"):
        defence_params({**config, "level": 7})


def test_undefended_trials_keep_their_keys():
    plain = OmegaConf.create(
        {"defence": {"name": "none", "level": 3, "strengths": {}}, "defence_training": {"steps": 0}}
    )
    assert defence_key(plain) == {}
    clipped = OmegaConf.create(
        {"defence": {"name": "clip", "max_norm": 1.0, "level": None, "strengths": {"max_norm": [1.0]}}}
    )
    assert defence_key(clipped) == {"defence": {"name": "clip", "max_norm": 1.0}}


@pytest.mark.parametrize(
    "override", ["defence.sigma=-1", "defence.relative=maybe"], ids=["negative-sigma", "relative-not-bool"]
)
def test_bad_gaussian_strength_is_one_line_and_exit_2(refused, override):
    code, stderr = refused("sweep=none", "defence=gaussian", override)
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: bad strength for defence 'gaussian'")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("defence=prune", "defence.p=1.5"), "error: bad strength for defence 'prune': p must lie in [0, 1), got 1.5"),
        (("defence=quantise", "defence.bits=0"), "error: bad strength for defence 'quantise': bits must be an integer"),
    ],
    ids=["p-above-one", "zero-bits"],
)
def test_bad_prune_and_bits_are_one_line_and_exit_2(refused, overrides, message):
    code, stderr = refused("sweep=none", *overrides)
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message)


TINY = (
    "sweep=defences",
    "method=idlg",
    "defence=none,dpsgd",
    "defence.level=0,3",
    "batch_size=2",
    "iterations=3",
    "score_every=0",
    "defence_training.steps=2",
    "defence_training.batch=4",
    "dataset=cifar10_sample",
    "model=lenet",
)


def test_tiny_defence_sweep_is_deterministic_and_resumable(run_cli, tmp_path):
    import shutil

    first, second = tmp_path / "first", tmp_path / "second"
    done = run_cli(*TINY, f"hydra.sweep.dir={first}", f"cache_dir={tmp_path / 'cache-a'}", timeout=600)
    assert done.returncode == 0, done.stderr
    got = records(first)
    assert len(got) == 3  # none once (its levels are one trial), dpsgd at two strengths
    by_setting = {(r["defence"], r["defence_strength"]): r for r in got.values()}
    assert set(by_setting) == {("none", None), ("dpsgd", 0.001), ("dpsgd", 1.0)}
    assert all(r["status"] == "ok" and 0 <= r["defended_train_accuracy"] <= 1 for r in got.values())
    assert by_setting[("none", None)]["update_cosine"] == pytest.approx(1.0, abs=1e-12)
    assert by_setting[("dpsgd", 1.0)]["update_cosine"] < by_setting[("dpsgd", 0.001)]["update_cosine"] < 1
    if importlib.util.find_spec("dp_accounting") is not None:
        assert by_setting[("dpsgd", 0.001)]["epsilon"] > by_setting[("dpsgd", 1.0)]["epsilon"] > 0
    # Resumed in a copy without two of its records and with an empty training cache: the record left is not run
    # again, and the two trials run again in a new process (training cost included) give the same records.
    shutil.copytree(first, second)
    kept = next(name for name, r in got.items() if r["defence_strength"] == 0.001)
    for name in set(got) - {kept}:
        (second / "records" / f"{name}.json").unlink()
    again = run_cli(*TINY, f"hydra.sweep.dir={second}", f"cache_dir={tmp_path / 'cache-b'}", timeout=600)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already done") == 2  # the record kept, and none's second level (the same trial)
    assert records(second) == got
    # the defence report: one row per method x defence x strength, the figures, the success rate from the images
    markdown = write_defence_report(first)
    table = pd.read_csv(first / "defences.csv")
    assert list(zip(table.defence, table.strength.fillna(-1), strict=True)) == [
        ("none", -1),
        ("dpsgd", 0.001),
        ("dpsgd", 1.0),
    ]
    for row in table.itertuples():
        record = by_setting[(row.defence, None if row.defence == "none" else row.strength)]
        assert row.psnr == pytest.approx(record["psnr"])
        assert row.success_rate == sum(p >= 20 for p in record["per_image_psnr"]) / 2
    assert "| idlg | dpsgd | noise_multiplier=1.000 |" in markdown
    for stem in ("defence_strength", "defence_utility", "defence_training"):
        assert (first / "figures" / f"{stem}.png").stat().st_size > 0


def test_defence_report_of_a_folder_without_defended_trials_is_an_error(tmp_path, capsys):
    from bench.report.defences import main

    assert main([str(tmp_path / "missing")]) == 2
    (tmp_path / "records").mkdir()
    assert main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("error:") == 2
    assert write_defence_report(tmp_path) is None and not (tmp_path / "defences.md").exists()
