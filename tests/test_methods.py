"""Every registered method runs a few iterations on the embedded sample and honours the contract."""

import pytest
import torch

from bench.client import client_update
from bench.data import load_dataset
from bench.models import build_model
from methods import get_method, get_method_class, is_reference, list_methods


@pytest.fixture(scope="module")
def observation():
    dataset = load_dataset("crops")
    indices = torch.tensor([0, 1, 64, 65])  # two photos, two crops each: duplicate labels
    images, labels = dataset.batch(indices)
    model = build_model("convnet", num_classes=dataset.num_classes, image_shape=dataset.image_shape, seed=0)
    return client_update(model, images, labels, mean=dataset.mean, std=dataset.std, num_classes=dataset.num_classes)


@pytest.mark.parametrize("name", list_methods())
def test_every_method_honours_the_contract(name, observation):
    calls = []
    attack = get_method(name, iterations=2)
    result = attack.reconstruct(
        observation,
        generator=torch.Generator().manual_seed(0),
        callback=lambda it, seconds, images: calls.append((it, images.shape)),
        callback_every=1,
    )
    assert result.images.shape == (observation.batch_size, *observation.image_shape)
    assert result.images.min() >= 0 and result.images.max() <= 1 and torch.isfinite(result.images).all()
    assert result.labels.shape == (observation.batch_size,) and result.labels.dtype == torch.long
    assert get_method_class(name).paper
    if is_reference(get_method_class(name)):  # a reference floor optimises nothing: no trace, no progress to score
        assert result.trace == [] and calls == []
        return
    assert result.trace and all(b.seconds >= a.seconds for a, b in zip(result.trace, result.trace[1:], strict=False))
    assert calls and calls[-1][1] == result.images.shape


def test_only_the_reference_floors_are_marked_reference():
    assert [name for name in list_methods() if is_reference(get_method_class(name))] == ["mean", "noise"]


def test_unknown_method_lists_the_registered_names():
    with pytest.raises(KeyError, match="unknown method 'nope'; available: .*idlg"):
        get_method("nope")


@pytest.mark.parametrize("name", list_methods())
def test_every_method_declares_itself_once(name):
    """Options, defaults and profiles live in the class; the runner's config and the docs follow from it."""
    from bench.run import register_configs  # noqa: F401  (generates the method configs)
    from bench.trial import method_node
    from methods.options import defaults, option_fields, options_table, profiles, resolve_options
    from tests.conftest import REPO

    cls = get_method_class(name)
    assert "iterations" in option_fields(cls), "a method's budget is its `iterations` option"
    assert set(profiles(cls)) >= {"quick", "paper"}
    for profile in ("quick", "paper"):
        resolved = resolve_options(cls, profile)
        assert set(resolved) == set(defaults(cls)) and cls(**resolved).iterations >= 0
    assert set(method_node(name)["params"]) == set(option_fields(cls))
    page = REPO / "docs" / "methods" / f"{name}.md"
    assert page.is_file(), f"docs/methods/{name}.md is missing"
    text = page.read_text()
    stale = f"docs/methods/{name}.md's options table is stale: run python scripts/options_tables.py"
    assert options_table(cls) in text, stale
