"""Every registered attack learns from the gradient: true gradient vs a wrong one, and vs the flat floors.

For each registered attack (reference floors such as ``noise`` and ``mean`` excluded) one ground-truth batch
is drawn as a trial draws it (``gia_bench.settings_for`` + ``draw_round``: the seed picks the batch, the model
and the attack's initialisation). The attack runs twice with the same initialisation: on the true
observation, and on the observation of a *different* batch (classes the true batch does not contain, so other
photos) from the same model. Both reconstructions are matched to the TRUE batch (``bench.metrics.match``) and
scored per image. The quality assertion (``assert_learns_from_gradient``), per image:

- true PSNR >= wrong PSNR + the method's margin (it used the information in *its* gradient);
- true PSNR >= the ``mean`` floor (the dataset-mean grey image) + 3 dB;
- true PSNR >= the flat image of its own mean colour (``flat_colour_psnr``, an oracle floor) + 3 dB.

``test_the_assertion_fails_without_the_gradient_term`` shows the assertion can fail: it multiplies every
gradient distance by zero (the classes of the ``GRADIENT_LOSSES`` registry, which ``build_gradient_loss``,
DLG and ``matching.invert`` build and GradInversion instantiates directly), checks the zeroed loss was
really called, and expects the same assertion to fail for every method.

Settings: B = 1 on the embedded ``cifar10_sample`` images (a seed draws the same image for every method);
DLG and iDLG on DLG's sigmoid LeNet, the others on the default convnet (width 16, untrained). Numbers: seeds 0-4,
``python scripts/gradient_use_margins.py`` (one thread, CPU), PSNR in dB of the one image; "flat" is its own
flat colour, "mean" the grey floor; a "+" marks a seed that passes the whole assertion.

    seed                          0       1       2       3       4
    floors   mean               11.85   13.42   10.46    9.32   11.68
             flat               12.00   13.59   10.53   10.84   13.14
    dlg      40 L-BFGS   true    6.1    19.9+   16.1+   15.6+   21.1+    (quick profile, 10 steps: 6.4 12.0
                         wrong  11.9     7.5     8.9     6.8     5.1      10.8 10.7 14.0; no seed passes)
    idlg     40 L-BFGS   true    5.3    21.2+    4.7    16.3+   20.8+    (quick, 10 steps: 7.3 12.4 4.7 11.0
                         wrong  11.9     7.6     6.8     6.8     5.9      13.7; no seed passes)
    ig       300 Adam    true   15.46+  17.29+  14.37+  11.79   14.55    (fails at seeds 3, 4: 0.95 and 1.41
                         wrong  12.93   11.46   10.10    9.18   11.04     over the flat floor)
    afgi     200 (quick) true   17.36+  19.51+  16.47+  12.52   15.82    (100 steps: 16.48 17.53 15.27 11.95
                         wrong  12.68    9.57    9.87    8.51   10.62     14.49; seeds 3, 4 fail at both)
    gradinv. 300 Adam,   true   16.22+  18.27+  15.38+  11.97   15.30    (gradient_scale 1, see below; 200 steps:
             scale 1     wrong  13.04   10.89    9.98    9.04   10.86     15.30 17.07 14.52 11.47 14.26 true)

Why these budgets: the quick profiles of DLG and iDLG (10 L-BFGS steps) pass on no seed, so they get 40 steps;
the seeds where they fail (0 for both, 2 for iDLG) are L-BFGS without line search stalling or diverging from
its random start, DLG's known sensitivity (docs/methods/dlg.md). IG runs 300 of its 500 quick steps and AFGI its
full quick 200 (100 fail the floor where 200 pass) to keep the file near a minute of CPU.

Margins (true over wrong, per image): 3 dB for DLG, iDLG and AFGI, whose smallest gap on a passing seed is 7.2,
9.5 and 4.7 dB; 2 dB for IG, whose smallest is 2.53 (seed 0). Safe both ways: the fast test runs seed 1, where
the gaps are 12.4, 13.6, 5.8 (IG) and 9.9 dB and the floors are beaten by 6.3, 7.6, 3.7 (IG) and 5.9 dB. With
the gradient term zeroed (``--zero-gradient-term``, seed 1) true and wrong runs give the same image for every
method (gap 0.00 dB) and every method ends below the flat floor: DLG/iDLG 9.78 (their random start), IG 13.40,
AFGI 13.36, GradInversion 13.18 (300 steps) against 13.59. The 3 dB over the floors is the issue's.

GradInversion runs with ``gradient_scale=1`` (its default 0.01, 100x smaller). Why: with the default, at its full
quick profile its result is within 0.4 dB of the grey floor and no better on its true gradient than on a wrong one
(seed 0: 12.22 true, 12.36 wrong; seed 1: 13.84, 13.10), because on these untrained models TV (weight 0.1)
outweighs the relative gradient distance at weight 0.01 (the result's pixel std is 0.010 against the truth's
0.171). The default was chosen on a trained model, where 0.01 reached 17.3 dB and 1 reached 13.0 dB on one B = 1
batch (docs/methods/gradinversion.md); with the gradient weighted 1 here it learns from its gradient as the others
do (3/5 seeds, as IG and AFGI). Its margin is 2 dB, as IG's: its smallest gap on a passing seed is 3.18 (seed 0);
on seed 1 (the fast test) the gap is 7.38 dB and the flat floor is beaten by 4.68 dB.

Findings, not hidden: every method fails the floors on some seeds at these budgets (the slow test asserts the
measured share: 4/5 DLG, 3/5 iDLG, IG, AFGI and GradInversion).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

import gia_bench as gb
from bench.client import client_update
from bench.data import ImageDataset
from bench.metrics import flat_colour_psnr, match, psnr
from bench.trial import derive_seed
from methods import build_method, get_method, get_method_class, is_reference, list_methods
from methods.base import Observation
from methods.losses import GRADIENT_LOSSES

CPU = torch.device("cpu")
FLOOR_MARGIN = 3.0  # dB over the mean floor and over each image's own flat colour


@dataclass(frozen=True)
class Setting:
    """Where a method is tested: data, model, batch size, budget (on top of the quick profile), margin, seeds."""

    model: Mapping[str, Any]
    options: Mapping[str, Any] = field(default_factory=dict)
    margin: float = 3.0  # dB by which the true run must beat the wrong-gradient run, per image
    seeds: tuple[int, ...] = (1,)  # the seeds of the fast test
    passing: int = 5  # of the slow test's seeds 0-4, how many pass (measured; a regression if fewer)
    works: bool = True  # False: the method fails the assertion even with the true gradient (strict xfail)
    dataset: str = "cifar10_sample"
    batch_size: int = 1


CONVNET = {"name": "convnet", "width": 16}
LENET = {"name": "lenet"}  # DLG's sigmoid LeNet, where DLG and iDLG are meant to work
SETTINGS: dict[str, Setting] = {
    "dlg": Setting(LENET, {"iterations": 40}, passing=4),
    "idlg": Setting(LENET, {"iterations": 40}, passing=3),
    "ig": Setting(CONVNET, {"iterations": 300}, margin=2.0, passing=3),
    "afgi": Setting(CONVNET, {"iterations": 200}, passing=3),  # the quick profile when it was measured
    # its default gradient weight (0.01, chosen on trained models) lets TV decide the image here: see the docstring
    "gradinversion": Setting(CONVNET, {"iterations": 300, "gradient_scale": 1.0}, margin=2.0, passing=3),
}

ATTACKS = [name for name in list_methods() if not is_reference(get_method_class(name))]


@dataclass
class Scores:
    """Per-image PSNR (dB) against the true batch: the attack on the true and on the wrong gradient, the floors."""

    method: str
    seed: int
    true: list[float]
    wrong: list[float]
    mean: list[float]
    flat: list[float]


def other_batch(dataset: ImageDataset, true_labels: torch.Tensor, size: int, seed: int) -> tuple[torch.Tensor, ...]:
    """A batch of ``size`` images of distinct classes that the true batch does not contain (so other photos)."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(derive_seed(seed, "wrong batch")))
    taken, used = [], set(true_labels.tolist())
    for index in order.tolist():
        label = int(dataset.labels[index])
        if label not in used:
            taken.append(index)
            used.add(label)
        if len(taken) == size:
            return dataset.batch(torch.tensor(taken))
    raise ValueError(f"{dataset.name} has too few other classes for a wrong batch of {size}")


def measure(method: str, seed: int) -> Scores:
    """The attack on the true and on a wrong gradient of one drawn round, and the floors, scored on the truth."""
    if method not in SETTINGS:
        pytest.fail(f"attack {method!r} has no setting here: add one to SETTINGS in tests/test_gradient_use.py")
    setting = SETTINGS[method]
    settings = gb.settings_for(
        method, dataset=setting.dataset, model=dict(setting.model), batch_size=setting.batch_size, seed=seed
    )
    drawn = gb.draw_round(settings, CPU)
    truth = drawn.truth
    images, labels = other_batch(drawn.dataset, drawn.true_labels, setting.batch_size, seed)
    # the same global model (the attacker's copy of it), another client's batch
    wrong = client_update(
        drawn.observation.model,
        images,
        labels,
        mean=drawn.dataset.mean,
        std=drawn.dataset.std,
        num_classes=drawn.dataset.num_classes,
        mode=settings["client_mode"],
    )

    def matched_psnr(observation: Observation) -> list[float]:
        attack = build_method(method, "quick", setting.options)
        generator = torch.Generator().manual_seed(derive_seed(seed, "attack"))  # as a trial seeds it
        reconstruction = attack.reconstruct(observation, generator=generator).images
        return psnr(reconstruction[match(reconstruction, truth)], truth).tolist()

    grey = get_method("mean").reconstruct(drawn.observation, generator=torch.Generator()).images
    return Scores(
        method,
        seed,
        true=matched_psnr(drawn.observation),
        wrong=matched_psnr(wrong),
        mean=psnr(grey, truth).tolist(),
        flat=flat_colour_psnr(truth),
    )


def assert_learns_from_gradient(scores: Scores, margin: float) -> None:
    """Per image: beat the wrong-gradient run by ``margin`` and both flat floors by ``FLOOR_MARGIN`` dB."""
    problems = []
    for i, (true, wrong, mean, flat) in enumerate(
        zip(scores.true, scores.wrong, scores.mean, scores.flat, strict=True)
    ):
        if not true >= wrong + margin:
            problems.append(f"image {i}: {true:.2f} dB is not {margin} dB over the wrong gradient's {wrong:.2f}")
        if not true >= mean + FLOOR_MARGIN:
            problems.append(f"image {i}: {true:.2f} dB is not {FLOOR_MARGIN} dB over the grey mean's {mean:.2f}")
        if not true >= flat + FLOOR_MARGIN:
            problems.append(f"image {i}: {true:.2f} dB is not {FLOOR_MARGIN} dB over its flat colour's {flat:.2f}")
    assert not problems, f"{scores.method} (seed {scores.seed}): " + "; ".join(problems)


def zero_gradient_losses(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Multiply every registered gradient distance by zero (both the single and the per-group form).

    The registry's entries are the loss classes themselves, so patching them reaches every user: the
    registry lookups of ``build_gradient_loss`` (DLG, ``matching.invert``) and GradInversion's direct
    ``EuclideanLoss``. Returns a count of the zeroed calls, so a test can see that the patch was used.
    """
    calls: Counter = Counter()
    for name in GRADIENT_LOSSES:
        loss_class = GRADIENT_LOSSES.get(name)
        for attribute in ("__call__", "per_group"):
            original = getattr(loss_class, attribute)

            def zeroed(self, dummy, original=original, key=f"{name}.{attribute}"):
                calls[key] += 1
                return 0 * original(self, dummy)

            monkeypatch.setattr(loss_class, attribute, zeroed)
    return calls


def fast_cases() -> list:
    """(method, seed) of the fast tests; a method that does not work is a strict xfail (a fix makes it fail)."""
    cases = []
    for method in ATTACKS:
        setting = SETTINGS.get(method, Setting(LENET))
        marks = [] if setting.works else [pytest.mark.xfail(strict=True, reason=f"{method} fails even on its gradient")]
        cases += [pytest.param(method, seed, marks=marks, id=f"{method}-{seed}") for seed in setting.seeds]
    return cases


@pytest.mark.parametrize(("method", "seed"), fast_cases())
def test_every_attack_learns_from_its_gradient(method, seed):
    assert_learns_from_gradient(measure(method, seed), SETTINGS[method].margin)


@pytest.mark.parametrize(
    ("method", "seed"), [pytest.param(m, SETTINGS.get(m, Setting(LENET)).seeds[0]) for m in ATTACKS]
)
def test_the_assertion_fails_without_the_gradient_term(method, seed, monkeypatch):
    calls = zero_gradient_losses(monkeypatch)
    scores = measure(method, seed)
    assert sum(calls.values()) > 0, f"{method} never called a registered gradient loss; zero its term here too"
    with pytest.raises(AssertionError):
        assert_learns_from_gradient(scores, SETTINGS[method].margin)


@pytest.mark.slow
@pytest.mark.parametrize("method", ATTACKS)
def test_attacks_learn_from_their_gradient_on_the_measured_share_of_seeds(method):
    """Seeds 0-4: at least as many pass the assertion as passed when the settings were measured."""
    failures = []
    for seed in range(5):
        try:
            assert_learns_from_gradient(measure(method, seed), SETTINGS[method].margin)
        except AssertionError as error:
            failures.append(str(error))
    passed, setting = 5 - len(failures), SETTINGS[method]
    assert passed >= setting.passing, failures
    if not setting.works:
        assert passed == 0, f"{method} now passes on {passed} seeds: mark it as working in SETTINGS"
