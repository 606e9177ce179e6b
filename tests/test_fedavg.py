"""FedAvg clients: one full-batch step is FedSGD, IG's multi-step variant, gradient-only methods skipped, the label
rule, the schema and a CLI trial (docs/fedavg.md)."""

import json

import pytest
import torch
from omegaconf import OmegaConf

import gia_bench as gb
from bench.client import FedAvg, build_client, client_update
from bench.config import GROUP_SETTINGS
from bench.data import load_dataset
from bench.errors import UserError
from bench.metrics import psnr
from bench.models import build_model
from bench.trial import settings_for, trial_config
from methods import get_method
from methods.base import NotApplicableError
from methods.fedavg import LocalTraining, sequential_minibatches, simulated_update
from methods.labels import infer_labels
from tests.conftest import REPO


@pytest.fixture(scope="module")
def crops():
    return load_dataset("crops", crops_per_image=4)


def observe(dataset, indices, model, client=None, seed=0):
    images, labels = dataset.batch(torch.tensor(indices))
    observation = client_update(
        model,
        images,
        labels,
        mean=dataset.mean,
        std=dataset.std,
        num_classes=dataset.num_classes,
        client=client,
        client_generator=torch.Generator().manual_seed(seed),
    )
    return observation, images, labels


def lenet(dataset, seed=0):
    return build_model("lenet", num_classes=dataset.num_classes, image_shape=dataset.image_shape, seed=seed)


def convnet(dataset, seed=0):
    return build_model("convnet", num_classes=dataset.num_classes, image_shape=dataset.image_shape, seed=seed, width=16)


def relative_error(update, reference) -> float:
    """||update - reference|| / ||reference||, each taken as one concatenated vector."""
    flat = [torch.cat([t.flatten() for t in tensors]) for tensors in (update, reference)]
    return float((flat[0] - flat[1]).norm() / flat[1].norm())


def test_one_full_batch_step_is_the_gradient_scaled_by_minus_lr(crops):
    for model in (convnet(crops), lenet(crops)):
        fedsgd, _, _ = observe(crops, [0, 9, 30], model)
        for lr in (1.0, 0.25):
            fedavg, _, _ = observe(crops, [0, 9, 30], model, FedAvg(1, lr, 3, 3))
            assert fedavg.is_weight_difference and fedavg.update.local_steps == 1
            # torch.func's backward may sum in another order than autograd's: float32 rounding only (the biases
            # before BatchNorm have a zero gradient in exact arithmetic, ~1e-7 of rounding in either)
            assert relative_error(fedavg.gradients, [-lr * g for g in fedsgd.gradients]) < 1e-5


def test_ig_on_one_full_batch_step_gives_the_fedsgd_reconstruction(crops):
    model = lenet(crops)
    fedsgd, images, _ = observe(crops, [0, 9], model)
    fedavg, _, _ = observe(crops, [0, 9], model, FedAvg(1, 1.0, 2, 2))
    runs = [
        get_method("ig", iterations=40, restarts=1).reconstruct(o, generator=torch.Generator().manual_seed(0))
        for o in (fedsgd, fedavg)
    ]
    first, second = (float(psnr(r.images, images).mean()) for r in runs)
    assert second == pytest.approx(first, abs=1e-4)
    assert runs[0].labels.tolist() == runs[1].labels.tolist()


def test_the_attackers_replay_reproduces_the_update_when_the_order_cannot_matter(crops):
    model = convnet(crops)
    # B = 1 (every order is the same) and full-batch steps (one mini-batch per epoch): the replay is exact
    for indices, training in (([5], FedAvg(3, 0.1, 1, 1)), ([0, 9, 30, 41], FedAvg(3, 0.1, 4, 4))):
        observation, images, labels = observe(crops, indices, model, training)
        replayed = simulated_update(observation)(observation.model, observation.normalise(images), labels)
        assert relative_error(replayed, observation.gradients) < 1e-5
    # with mini-batches, the client's shuffle decides the update: seeded, and not the attacker's sequential order
    indices, training = [0, 9, 30, 41], FedAvg(2, 0.1, 2, 4)
    (observation, images, labels), again = (observe(crops, indices, model, training, seed=3) for _ in range(2))
    other = observe(crops, indices, model, training, seed=4)[0]
    assert all(torch.equal(a, b) for a, b in zip(observation.gradients, again[0].gradients, strict=True))
    assert relative_error(other.gradients, observation.gradients) > 1e-3
    replayed = simulated_update(observation)(observation.model, observation.normalise(images), labels)
    assert relative_error(replayed, observation.gradients) > 1e-3  # the attacker's order is not the client's


def test_minibatches_cycle_through_epochs_in_the_attackers_order():
    steps = sequential_minibatches(LocalTraining(local_steps=5, local_lr=0.1, local_batch_size=2, num_samples=3))
    assert [s.tolist() for s in steps] == [[0, 1], [2], [0, 1], [2], [0, 1]]


def test_ig_multi_step_at_b1_matches_its_fedsgd_result_at_the_quick_budget(crops):
    """The issue asks >= 25 dB; IG's quick budget reaches ~17 dB on this image on FedSGD too (docs/fedavg.md)."""
    model = lenet(crops)
    fedsgd, images, labels = observe(crops, [0], model)
    fedavg, _, _ = observe(crops, [0], model, FedAvg(2, 0.1, 1, 1))
    assert not torch.allclose(fedavg.gradients[-1], -0.2 * fedsgd.gradients[-1], rtol=1e-3)  # truly two steps
    reached = {}
    for name, observation in (("fedsgd", fedsgd), ("fedavg", fedavg)):
        attack = gb.build_method("ig", "quick")
        result = attack.reconstruct(observation, generator=torch.Generator().manual_seed(0))
        reached[name] = float(psnr(result.images, images))
        assert result.labels.tolist() == labels.tolist()
    # measured: 16.60 dB on FedSGD and 16.56 dB on two local steps; uniform noise scores 8-10 dB
    assert reached["fedavg"] >= 15.0, reached
    assert abs(reached["fedavg"] - reached["fedsgd"]) < 1.0, reached


def test_a_gradient_only_method_is_skipped_with_its_reason(crops):
    observation, _, _ = observe(crops, [0, 9], lenet(crops), FedAvg(2, 0.1, 1, 2))
    for name in ("dlg", "idlg", "gradinversion"):
        with pytest.raises(NotApplicableError, match="gradients only"):
            get_method(name, iterations=1).reconstruct(observation, generator=torch.Generator().manual_seed(0))
    record = gb.trial(
        "dlg",
        model="lenet",
        batch_size=2,
        iterations=2,
        quiet=True,
        score_every=0,
        device="cpu",
        client={"name": "fedavg", "local_steps": 2, "local_batch_size": 1},
    ).record
    assert record["status"] == "skipped" and "weight difference" in record["reason"]
    assert record["client"] == "fedavg" and record["local_steps"] == 2


def test_label_strategies_read_a_weight_difference_as_its_mean_gradient(crops):
    model = convnet(crops)
    indices = [0, 9, 30, 41]
    fedsgd, _, labels = observe(crops, indices, model)
    one_step, _, _ = observe(crops, indices, model, FedAvg(1, 0.5, 4, 4))
    several, _, _ = observe(crops, indices, model, FedAvg(4, 0.05, 2, 4))
    for strategy in ("analytic", "yin", "llg", "count", "ilrg", "lrb"):
        expected = infer_labels(strategy, fedsgd).tolist()
        assert infer_labels(strategy, one_step).tolist() == expected, strategy  # the rule undoes lr and sign
    assert sorted(infer_labels("count", several).tolist()) == sorted(labels.tolist())


def test_bad_client_settings_are_one_line_errors():
    with pytest.raises(UserError, match=r"local_batch_size=8 is larger than batch_size=4"):
        build_client({"name": "fedavg", "local_lr": 0.1, "local_batch_size": 8}, 4)
    with pytest.raises(UserError, match="client=fedsgd takes no parameters"):
        build_client({"name": "fedsgd", "local_steps": 3}, 4)
    with pytest.raises(UserError, match="steps >= 1"):
        build_client({"name": "fedavg", "local_lr": 0.1, "local_steps": 0}, 4)
    with pytest.raises(UserError, match="unknown client"):
        build_client({"name": "fedprox"}, 4)
    with pytest.raises(UserError, match=r"client.local_steps=0 is not valid"):
        gb.trial("ig", client={"name": "fedavg", "local_steps": 0})
    # local_epochs: one epoch of mini-batches of 3 over 8 images is 3 steps
    assert (
        build_client({"name": "fedavg", "local_epochs": 1, "local_lr": 0.1, "local_batch_size": 3}, 8).local_steps == 3
    )


def test_fedsgd_trials_keep_their_keys_and_the_yaml_matches_the_schema():
    settings = settings_for("ig", batch_size=2, device="cpu")
    assert "client" not in trial_config(settings, torch.device("cpu"))
    fedavg = settings_for("ig", batch_size=2, device="cpu", client="fedavg")
    assert trial_config(fedavg, torch.device("cpu"))["client"]["name"] == "fedavg"
    node = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "client" / "fedavg.yaml"))
    assert {f"client.{k}": v for k, v in node.items()} == {k: key.default for k, key in GROUP_SETTINGS.items()} | {
        "client.name": "fedavg"
    }


def test_a_fedavg_trial_from_the_command_line_records_its_client(run_cli, refused, tmp_path):
    out = tmp_path / "one"
    done = run_cli(
        "sweep=none",
        "method=ig",
        "model=lenet",
        "batch_size=2",
        "iterations=4",
        "score_every=0",
        "client=fedavg",
        "client.local_steps=2",
        "client.local_batch_size=1",
        f"hydra.run.dir={out}",
    )
    assert done.returncode == 0, done.stderr
    (path,) = (out / "records").glob("*.json")
    record = json.loads(path.read_text())
    assert record["status"] == "ok"
    assert (record["client"], record["local_steps"], record["local_batch_size"], record["local_lr"]) == (
        "fedavg",
        2,
        1,
        0.1,
    )
    assert record["config"]["client"]["local_steps"] == 2
    assert (out / "fedavg.md").is_file()
    code, stderr = refused("sweep=none", "batch_size=2", "client=fedavg", "client.local_batch_size=4")
    assert code == 2 and stderr.strip().count("\n") == 0, stderr
    assert "client.local_batch_size=4 is larger than batch_size=2" in stderr


def test_update_level_defences_act_on_the_weight_difference_and_the_others_are_skipped(crops):
    """clip, gaussian, prune and quantise read only the update, so a FedAvg client applies them to its weight
    difference exactly as to a gradient; DP-SGD and Soteria act inside the FedSGD gradient computation."""
    from bench.client import client_round
    from bench.defences import DEFENCES, ClientBatch, build_defence, global_norm

    model, client = lenet(crops), FedAvg(2, 0.1, 1, 2)
    images, labels = crops.batch(torch.tensor([0, 9]))

    def defended(defence):
        return client_round(
            model,
            images,
            labels,
            mean=crops.mean,
            std=crops.std,
            num_classes=crops.num_classes,
            defence=defence,
            defence_generator=torch.Generator().manual_seed(5),
            client=client,
            client_generator=torch.Generator().manual_seed(0),
        )

    strengths = {"clip": {"max_norm": 1e-3}, "gaussian": {"sigma": 1e-3}, "prune": {"p": 0.7}, "quantise": {"bits": 2}}
    assert {name for name in DEFENCES if DEFENCES.get(name).update_only} == {"none", *strengths}
    plain = defended(build_defence("none"))
    assert plain.observation.is_weight_difference and plain.update_cosine == pytest.approx(1.0, abs=1e-12)
    for name, params in strengths.items():
        defence = build_defence(name, **params)
        round_ = defended(defence)
        assert round_.observation.is_weight_difference
        assert all(torch.equal(a, b) for a, b in zip(round_.undefended, plain.observation.gradients, strict=True))
        batch = ClientBatch(model=model, inputs=images, labels=labels, gradients=round_.undefended)
        expected = defence.apply(batch, torch.Generator().manual_seed(5))
        assert all(torch.equal(a, b) for a, b in zip(round_.observation.gradients, expected, strict=True)), name
        assert round_.update_cosine < 1 or name == "clip", name
    clipped = defended(build_defence("clip", max_norm=1e-3))
    assert float(global_norm(clipped.observation.gradients)) == pytest.approx(1e-3, rel=1e-5)
    assert clipped.update_cosine == pytest.approx(1.0, abs=1e-9)
    for name in ("dpsgd", "soteria"):
        with pytest.raises(NotApplicableError, match="not on a weight difference"):
            defended(build_defence(name))
    # through the trial pipeline: the defended weight difference is attacked and recorded, DP-SGD is skipped
    fedavg = {"name": "fedavg", "local_steps": 2, "local_batch_size": 1}
    records = {
        name: gb.trial(
            "ig",
            model="lenet",
            batch_size=2,
            iterations=2,
            restarts=1,
            quiet=True,
            score_every=0,
            device="cpu",
            client=fedavg,
            defence={"name": name, **strengths.get(name, {})},
        ).record
        for name in ("clip", "dpsgd")
    }
    assert records["clip"]["status"] == "ok" and records["clip"]["client"] == "fedavg"
    assert records["clip"]["defence"] == "clip" and records["clip"]["update_cosine"] == pytest.approx(1.0, abs=1e-9)
    assert records["dpsgd"]["status"] == "skipped" and "not on a weight difference" in records["dpsgd"]["reason"]
