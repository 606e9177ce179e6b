"""Equal budgets: every method's gradient evaluations are counted, and ``budget=`` gives each the same number.

The count under test (``methods.budget``) is checked against an independent one: a forward hook on the
attacker's model that counts, for every forward pass with autograd on, how many batches of the client's
size went through it (a vmapped pass over G candidates or R restarts carries G or R of them).
"""

from __future__ import annotations

import pytest
import torch
from torch._C import _functorch

import bench.trial as trial_module
from bench.errors import UserError
from bench.trial import trial, trial_config
from methods.base import get_method_class, is_reference, list_methods
from methods.budget import Budget, iterations_within
from methods.options import resolve_options

pytestmark = pytest.mark.xdist_group("budget")  # one worker: the memory estimates below are made once

ATTACKS = [name for name in list_methods() if not is_reference(get_method_class(name))]
QUICK_EVALUATIONS = 240  # docs/budgets.md: what every method spends in the quick profile


def physical(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor under functorch's wrappers (vmap's batch dimension included)."""
    while _functorch.is_functorch_wrapped_tensor(tensor):
        tensor = _functorch.get_unwrapped(tensor)
    return tensor


@pytest.fixture(scope="module", autouse=True)
def memory_estimates_made():
    """The memory probe (methods.memory) passes batches through the model once per process and architecture, to
    decide whether candidates/restarts fit side by side; it is not the attack's work (its meter is its own), so
    the forward-hook count below must not see it: make the estimates before any test hooks a model."""
    trial("gradinversion", batch_size=2, iterations=1, quiet=True, score_every=0, grid_images=1)
    trial("ig", batch_size=1, restarts=2, iterations=1, quiet=True, score_every=0, grid_images=1)


@pytest.fixture
def hooked_forward(monkeypatch):
    """Counts gradient evaluations by the model's forward passes: batches of B images through it, grad on."""
    counted = {"evaluations": 0}
    build = trial_module.prepare_model

    def prepare_with_hook(*args, **kwargs):
        model = build(*args, **kwargs)
        num_classes = kwargs["num_classes"]

        def hook(module, inputs, output):
            if torch.is_grad_enabled():
                counted["evaluations"] += physical(output).numel() // (num_classes * counted["batch_size"])

        model.register_forward_hook(hook)  # deep copies (methods.batched) carry the hook along
        return model

    monkeypatch.setattr(trial_module, "prepare_model", prepare_with_hook)
    return counted


def attack_evaluations(counted: dict, record: dict) -> int:
    # the client's own gradient is one forward pass with grad on, before the attack
    return counted["evaluations"] - 1


@pytest.mark.parametrize("method", ATTACKS)
def test_budget_gives_every_method_the_same_evaluation_count(method, hooked_forward):
    budget = 24
    hooked_forward["batch_size"] = 2
    record = trial(
        method, batch_size=2, seed=0, quiet=True, score_every=5, budget=f"evaluations:{budget}", grid_images=2
    ).record
    assert record["status"] == "ok", record.get("reason")
    assert record["gradient_evaluations"] == budget
    assert attack_evaluations(hooked_forward, record) == budget
    trace_evaluations = [point[3] for point in record["trace"]]
    assert trace_evaluations == sorted(trace_evaluations) and 0 < trace_evaluations[-1] <= budget
    assert record["progress"] and all(point[3] <= budget for point in record["progress"])
    assert record["config"]["budget"] == f"evaluations:{budget}"


@pytest.mark.parametrize("method", ATTACKS)
def test_the_count_without_a_budget_matches_the_model_passes(method, hooked_forward):
    hooked_forward["batch_size"] = 1
    record = trial(method, batch_size=1, seed=1, quiet=True, score_every=0, iterations=3, grid_images=1).record
    assert record["status"] == "ok", record.get("reason")
    assert record["gradient_evaluations"] == attack_evaluations(hooked_forward, record) > 0
    assert "budget" not in record["config"]


@pytest.mark.parametrize("method", ["dlg", "idlg"])
def test_an_lbfgs_step_is_shortened_to_the_evaluations_left(method, hooked_forward):
    hooked_forward["batch_size"] = 1
    record = trial(method, budget="evaluations:7", quiet=True, score_every=0).record  # one step would take 20
    assert record["gradient_evaluations"] == attack_evaluations(hooked_forward, record) == 7
    assert record["iterations"] == 1


@pytest.mark.parametrize("restarts_side_by_side", [True, False])
def test_restarts_split_the_budget_equally(restarts_side_by_side, hooked_forward):
    hooked_forward["batch_size"] = 1
    record = trial(
        "ig",
        restarts=3,
        batch_restarts_up_to=16 if restarts_side_by_side else 0,
        budget="evaluations:30",
        quiet=True,
        score_every=0,
    ).record
    assert record["gradient_evaluations"] == attack_evaluations(hooked_forward, record) == 30
    assert record["config"]["method"]["iterations"] == 10  # per restart
    assert record["iterations"] == (10 if restarts_side_by_side else 30)  # sequential restarts continue the trace


@pytest.mark.parametrize("method", ATTACKS)
def test_a_tiny_seconds_budget_stops_before_the_iterations_run_out(method):
    record = trial(method, batch_size=1, quiet=True, score_every=0, iterations=200, budget="seconds:0.001").record
    assert record["status"] == "ok", record.get("reason")
    assert 1 <= record["iterations"] < 200
    assert record["config"]["method"]["iterations"] == 200  # a seconds budget leaves the schedule's length alone


def test_the_quick_profile_gives_every_method_the_same_evaluations():
    for name in ATTACKS:
        cls = get_method_class(name)
        quick = cls(**resolve_options(cls, "quick"))
        assert iterations_within(quick, QUICK_EVALUATIONS) == quick.iterations, name


def test_bad_budgets_are_one_line_errors():
    for text in ("evaluations:many", "minutes:3", "evaluations:0", "evaluations:2.5", "seconds:-1"):
        with pytest.raises(UserError, match="budget="):
            trial("ig", budget=text, quiet=True)
    with pytest.raises(UserError, match="too small for method 'gradinversion'.*evaluations:4"):
        trial("gradinversion", budget="evaluations:3", quiet=True)
    assert str(Budget.parse("seconds:1.5")) == "seconds:1.5"


def test_one_image_has_one_class_at_every_duplicate_ratio():
    """B = 1 at r = 1 repeats B = 1 at r = 0 exactly, so both are one trial (a default sweep runs it once)."""
    from bench.trial import settings_for

    device = torch.device("cpu")
    keys = [trial_config(settings_for("ig", batch_size=1, dup_ratio=r), device) for r in (0.0, 1.0)]
    assert keys[0] == keys[1]
    keys = [trial_config(settings_for("ig", batch_size=4, dup_ratio=r), device) for r in (0.0, 1.0)]
    assert keys[0] != keys[1]
