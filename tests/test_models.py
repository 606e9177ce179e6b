import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import UserError
from bench.models import (
    MODELS,
    build_model,
    classifier,
    list_models,
    load_state_dict_checked,
    register_model,
)
from bench.training import prepare_model
from methods.registry import UnknownNameError

SHAPE = (3, 32, 32)


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_registry_lists_all_models_sorted():
    assert list_models() == sorted(list_models())
    assert {"lenet", "convnet", "resnet18", "resnet50"} <= set(list_models())


def test_unknown_model_and_option_are_user_errors():
    with pytest.raises(UnknownNameError, match="unknown model 'nope'; available: .*lenet"):
        build_model("nope", num_classes=10, image_shape=SHAPE, seed=0)
    with pytest.raises(UserError, match="does not take option"):
        build_model("lenet", num_classes=10, image_shape=SHAPE, seed=0, width=3)


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_model("lenet")(lambda **kw: nn.Linear(1, 1))
    assert "lenet" in MODELS


@pytest.mark.parametrize("name", list_models())
def test_every_model_builds_and_ends_in_classifier(name):
    model = build_model(name, num_classes=10, image_shape=SHAPE, seed=0)
    with torch.no_grad():
        logits = model.eval()(torch.rand(2, *SHAPE))
    assert logits.shape == (2, 10)
    head = classifier(model)
    assert head is list(model.modules())[-1]
    assert isinstance(head, nn.Linear) and head.out_features == 10
    last_two = list(model.parameters())[-2:]
    assert last_two[0] is head.weight and last_two[1] is head.bias
    assert head.bias.shape == (10,)


@pytest.mark.parametrize("name", list_models())
def test_init_is_a_pure_function_of_seed_and_leaves_global_rng_alone(name):
    torch.manual_seed(1)
    before = torch.random.get_rng_state()
    a = build_model(name, num_classes=10, image_shape=SHAPE, seed=3).state_dict()
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.rand(100)  # move the global RNG; the next build must not notice
    b = build_model(name, num_classes=10, image_shape=SHAPE, seed=3).state_dict()
    c = build_model(name, num_classes=10, image_shape=SHAPE, seed=4).state_dict()
    assert _states_equal(a, b)
    assert not _states_equal(a, c)
    assert all(torch.isfinite(v.float()).all() for v in a.values())


@pytest.mark.parametrize("name", list_models())
def test_builders_draw_only_from_their_generator(name):
    # build_model shields the global RNG anyway; call the builder directly to show it never needs to.
    builder = MODELS.get(name)
    torch.manual_seed(0)
    a = builder(num_classes=5, image_shape=SHAPE, generator=torch.Generator().manual_seed(7)).state_dict()
    torch.manual_seed(99)
    b = builder(num_classes=5, image_shape=SHAPE, generator=torch.Generator().manual_seed(7)).state_dict()
    assert _states_equal(a, b)


def test_lenet_weights_and_biases_uniform_half():
    model = build_model("lenet", num_classes=10, image_shape=SHAPE, seed=0)
    for p in model.parameters():
        assert p.min() >= -0.5 and p.max() <= 0.5
    assert classifier(model).in_features == 768  # DLG's 32x32 LeNet


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 30, 30), (3, 64, 48), (1, 7, 9)])
def test_lenet_and_convnet_fit_other_resolutions(shape):
    for name in ("lenet", "convnet"):
        model = build_model(name, num_classes=4, image_shape=shape, seed=0)
        with torch.no_grad():
            assert model.eval()(torch.rand(2, *shape)).shape == (2, 4)


def test_convnet_width():
    model = build_model("convnet", num_classes=10, image_shape=SHAPE, seed=0, width=4)
    assert classifier(model).in_features == 4 * 4 * 16


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return hub


def test_resnet50_pretrained_without_cache_warns_and_is_untrained(empty_hub):
    with pytest.warns(UserWarning, match=r"not cached at .*resnet50-0676ba61\.pth; using an untrained model"):
        model = build_model("resnet50", num_classes=1000, image_shape=SHAPE, seed=0, pretrained=True)
    plain = build_model("resnet50", num_classes=1000, image_shape=SHAPE, seed=0)
    assert _states_equal(model.state_dict(), plain.state_dict())


def test_resnet50_pretrained_loads_cached_file(empty_hub):
    weights = build_model("resnet50", num_classes=1000, image_shape=SHAPE, seed=11).state_dict()
    (empty_hub / "checkpoints").mkdir(parents=True)
    torch.save(weights, empty_hub / "checkpoints" / "resnet50-0676ba61.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = build_model("resnet50", num_classes=1000, image_shape=SHAPE, seed=0, pretrained=True)
    assert _states_equal(model.state_dict(), weights)


def test_resnet50_pretrained_needs_imagenet_head(empty_hub):
    with pytest.raises(UserError, match="num_classes=1000"):
        build_model("resnet50", num_classes=10, image_shape=SHAPE, seed=0, pretrained=True)


def _toy_data(n: int = 64, classes: int = 4, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    # Class-dependent colour plus noise, so that a few SGD steps measurably help.
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % classes
    colours = torch.rand(classes, 3, 1, 1, generator=g)
    images = (0.6 * colours[labels] + 0.4 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)
    return images, labels


def _prepare(cache_dir: Path, state: str = "trained", **overrides) -> nn.Module:
    images, labels = _toy_data()
    kwargs = dict(
        state=state,
        num_classes=4,
        image_shape=(3, 16, 16),
        seed=0,
        train_images=images,
        train_labels=labels,
        mean=[0.5, 0.5, 0.5],
        std=[0.25, 0.25, 0.25],
        cache_dir=cache_dir,
        train_steps=30,
        train_batch=16,
        width=8,
    )
    kwargs.update(overrides)
    return prepare_model("convnet", **kwargs)


def _loss(model: nn.Module) -> float:
    images, labels = _toy_data()
    with torch.no_grad():
        return F.cross_entropy(model.eval()((images - 0.5) / 0.25), labels).item()


def test_prepare_untrained_is_the_seeded_model(tmp_path):
    model = _prepare(tmp_path, state="untrained")
    assert not model.training
    built = build_model("convnet", num_classes=4, image_shape=(3, 16, 16), seed=0, width=8)
    assert _states_equal(model.state_dict(), built.state_dict())
    assert not list(tmp_path.iterdir())


def test_prepare_trained_caches_and_improves(tmp_path, capsys):
    before = torch.random.get_rng_state()
    trained = _prepare(tmp_path)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert "training convnet" in capsys.readouterr().err
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].name.startswith("convnet-") and files[0].suffix == ".pt"
    assert not trained.training

    loaded = _prepare(tmp_path)
    assert "loading trained convnet" in capsys.readouterr().err
    assert _states_equal(trained.state_dict(), loaded.state_dict())

    untrained = _prepare(tmp_path, state="untrained")
    assert _loss(trained) < 0.8 * _loss(untrained)

    # A different seed is a different cache entry.
    _prepare(tmp_path, seed=1, train_steps=1)
    assert len(list(tmp_path.iterdir())) == 2


def test_prepare_trained_needs_data(tmp_path):
    with pytest.raises(UserError, match="needs training images"):
        _prepare(tmp_path, train_images=None)
    with pytest.raises(UserError, match="training labels must lie in"):
        _prepare(tmp_path, num_classes=2)


@pytest.mark.parametrize(
    "payload",
    [
        {"x": object()},  # pickled, but not weights_only loadable
        ["a", "list", "of", "strings"],
        {"0.weight": torch.zeros(1)},
    ],
    ids=["pickled-object", "string-list", "wrong-keys"],
)
def test_bad_cache_file_is_refused(tmp_path, payload):
    _prepare(tmp_path, train_steps=1)
    (path,) = tmp_path.iterdir()
    torch.save(payload, path)
    with pytest.raises(UserError, match="not a valid state dict for 'convnet'") as info:
        _prepare(tmp_path, train_steps=1)
    message = str(info.value)
    assert str(path) in message and "delete it to retrain" in message and "\n" not in message


def test_load_state_dict_checked_refuses_garbage_file(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"not a checkpoint")
    model = build_model("lenet", num_classes=10, image_shape=SHAPE, seed=0)
    with pytest.raises(UserError, match="not a valid state dict for 'lenet'"):
        load_state_dict_checked(model, path, "lenet")
    good = tmp_path / "good.pt"
    other = build_model("lenet", num_classes=10, image_shape=SHAPE, seed=1)
    torch.save(other.state_dict(), good)
    assert _states_equal(load_state_dict_checked(model, good, "lenet").state_dict(), other.state_dict())
