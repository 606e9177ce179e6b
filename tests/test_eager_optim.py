"""Start-up cost: an attack runs without importing torch._dynamo (``methods.eager_optim``: L-BFGS through torch's
own cache, Adam as ``EagerAdam``) or sympy (``bench.models`` builds on the meta device without
``Module.to_empty``): 1-2 s of CPU each, per process. ``EagerAdam`` is torch's Adam, bit for bit."""

import subprocess
import sys

import torch

from methods.eager_optim import EagerAdam
from tests.conftest import REPO

PROBE = """
import sys
import torch
from methods import build_method
import gia_bench as gb

for method, options in (("idlg", {"iterations": 2}), ("ig", {"iterations": 2, "restarts": 1})):
    settings = gb.settings_for(method, model={"name": "lenet"}, batch_size=1, seed=0)
    drawn = gb.draw_round(settings, torch.device("cpu"))
    attack = build_method(method, "quick", options)
    attack.reconstruct(drawn.observation, generator=torch.Generator().manual_seed(0))
    print(method, "torch._dynamo" in sys.modules, "sympy" in sys.modules)
"""


def test_lbfgs_and_adam_attacks_never_import_torch_dynamo_or_sympy():
    # a fresh process: the test session itself may have imported torch._dynamo already
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-2:] == ["idlg False False", "ig False False"]


def descend(optimiser_class: type[torch.optim.Optimizer], **options) -> tuple[torch.Tensor, dict]:
    """300 steps on signed gradients under a decaying learning rate, as the attacks step."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=generator).requires_grad_(True)
    target = torch.randn(2, 3, 8, 8, generator=generator)
    optimiser = optimiser_class([x], lr=0.1, **options)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda it: 1 / (1 + it))

    def closure() -> torch.Tensor:
        optimiser.zero_grad(set_to_none=True)
        loss = (x.tanh() - target).pow(2).sum()
        loss.backward()
        x.grad.sign_()
        return loss

    for _ in range(300):
        optimiser.step(closure)
        scheduler.step()
    return x.detach(), optimiser.state_dict()


def test_eager_adam_steps_exactly_as_torchs_adam():
    for options in ({}, {"amsgrad": True, "weight_decay": 0.01}):
        ours, our_state = descend(EagerAdam, **options)
        torchs, torch_state = descend(torch.optim.Adam, **options)
        assert torch.equal(ours, torchs)
        assert our_state["param_groups"] == torch_state["param_groups"]
        for key, value in torch_state["state"][0].items():
            assert torch.equal(our_state["state"][0][key], value), key
