"""LPIPS as a user with AlexNet weights sees it, with a stand-in checkpoint: torchvision's alexnet(), random weights.

The real weights cannot be downloaded here, so without this test the LPIPS code path would never run. The stand-in
sits under the file name torchvision's loader (and so ``lpips``) looks for, in a temporary TORCH_HOME.
"""

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import torchvision

from bench.data import load_dataset
from bench.metrics import ALEXNET_FILE, LPIPSScorer, score

pytestmark = pytest.mark.xdist_group("lpips")  # one worker: the module's checkpoint is written once


@pytest.fixture(scope="module")
def alexnet_home(tmp_path_factory) -> Path:
    """A TORCH_HOME holding a randomly initialised AlexNet checkpoint (seed 0), written once for this file."""
    home = tmp_path_factory.mktemp("torch_home")
    checkpoints = home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        torch.save(torchvision.models.alexnet().state_dict(), checkpoints / ALEXNET_FILE)
    return home


@pytest.fixture
def torch_home(alexnet_home, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(alexnet_home))  # also reaches the CLI subprocesses, which copy os.environ
    return alexnet_home


def images(n: int) -> torch.Tensor:
    batch, _ = load_dataset("cifar10_sample").batch(torch.arange(n))
    return batch


def test_the_scorer_finds_the_checkpoint_in_torch_home(torch_home):
    scorer = LPIPSScorer()
    assert scorer.weights_path() == torch_home / "hub" / "checkpoints" / ALEXNET_FILE
    x = images(4)
    values = scorer(x, x.flip(0))
    assert values.shape == (4,) and torch.isfinite(values).all() and (values > 0).all()


def test_lpips_of_an_image_with_itself_is_zero(torch_home):
    x = images(6)
    assert torch.equal(LPIPSScorer()(x, x), torch.zeros(6))


def test_inputs_reach_the_network_scaled_to_minus_one_one(torch_home):
    scorer = LPIPSScorer()
    x = images(2)
    x[0] = 0.0  # a black and a partly white image: both ends of [0, 1]
    x[1, :, :8] = 1.0
    scorer(x, x)  # loads the network
    seen = []
    # lpips's first layer (its ImageNet scaling) receives what LPIPSScorer passes in
    handle = scorer._net.scaling_layer.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    try:
        scorer(x, 1 - x)
    finally:
        handle.remove()
    assert len(seen) == 2
    assert torch.allclose(seen[0], 2 * x - 1, atol=1e-6) and torch.allclose(seen[1], 1 - 2 * x, atol=1e-6)
    assert float(seen[0].min()) == -1.0 and float(seen[0].max()) == 1.0


def test_lpips_is_scored_on_the_matched_order(torch_home):
    truth = images(4)
    noise = torch.rand(truth.shape, generator=torch.Generator().manual_seed(0))
    # image i carries noise of strength 0.05 * (i + 1), so each has its own LPIPS; then the batch is shuffled
    strength = 0.05 * torch.arange(1, 5).view(4, 1, 1, 1)
    noisy = (truth + strength * (noise - 0.5)).clamp(0, 1)
    permutation = torch.tensor([2, 0, 3, 1])
    labels = torch.arange(4)
    scorer = LPIPSScorer()
    result = score(noisy[permutation], truth, labels, labels, scorer)
    assert result.order == torch.argsort(permutation).tolist()
    per_image = scorer(noisy, truth)
    assert result.lpips == pytest.approx(float(per_image.mean()), rel=1e-6)
    assert result.lpips < float(scorer(noisy[permutation], truth).mean())  # unmatched pairs score worse
    assert torch.all(per_image[1:] > per_image[:-1])  # more noise, larger LPIPS: the score follows the pairing
    assert result.lpips < float(scorer(torch.rand(truth.shape), truth).mean())


def test_the_lpips_column_fills_in_records_summaries_and_figures(torch_home, run_cli, tmp_path):
    out = tmp_path / "sweep"
    done = run_cli(
        "sweep=smoke",
        "threads=1",
        "figures=true",
        "hydra.sweeper.params.method='noise,mean'",
        f"hydra.sweep.dir={out}",
    )
    assert done.returncode == 0, done.stderr
    assert "LPIPS is reported as NaN" not in done.stderr
    records = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
    assert len(records) == 4
    assert all(math.isfinite(r["lpips"]) and r["lpips"] > 0 for r in records)
    summary = pd.read_csv(out / "summary.csv")
    assert summary["lpips_mean"].notna().all() and (summary["lpips_mean"] > 0).all()
    noise, mean = (summary.loc[summary.method == m, "lpips_mean"] for m in ("noise", "mean"))
    assert len(noise) == 2 and len(mean) == 2
    assert (out / "figures" / "lpips_vs_batch_size.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
