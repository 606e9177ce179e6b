"""Every method on CUDA: device placement and determinism. Skipped, with the reason, without a GPU."""

import pytest
import torch

import gia_bench as gb

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
]
TIMING = {"attack_seconds", "seconds_per_iteration", "trial_seconds", "created", "trace", "progress"}


@pytest.mark.parametrize("method", gb.list_methods())
def test_every_method_runs_on_cuda_deterministically(method):
    runs = [
        gb.trial(method, device="cuda", batch_size=2, iterations=5, quiet=True, score_every=0, model="convnet")
        for _ in range(2)
    ]
    first, second = (run.record for run in runs)
    assert first["status"] == "ok", first.get("reason")
    assert first["config"]["device"] == "cuda" and first["config"]["allow_tf32"] is False
    assert runs[0].reconstruction.device.type == "cuda"
    assert {k: v for k, v in first.items() if k not in TIMING} == {k: v for k, v in second.items() if k not in TIMING}
    assert torch.equal(runs[0].reconstruction, runs[1].reconstruction)


def test_a_seed_means_the_same_batch_and_model_on_every_device():
    settings = gb.settings_for("ig", batch_size=2)
    cpu = gb.draw_round(settings, torch.device("cpu"))
    gpu = gb.draw_round(settings, torch.device("cuda"))
    assert torch.equal(cpu.truth, gpu.truth.cpu())
    for a, b in zip(cpu.observation.gradients, gpu.observation.gradients, strict=True):
        torch.testing.assert_close(a, b.cpu(), rtol=1e-4, atol=1e-6)
