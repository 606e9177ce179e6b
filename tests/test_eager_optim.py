"""Start-up cost: an L-BFGS attack runs without importing torch._dynamo (``methods.eager_optim``) or sympy
(``bench.models`` builds on the meta device without ``Module.to_empty``): 1-2 s of CPU each, per process."""

import subprocess
import sys

from tests.conftest import REPO

PROBE = """
import sys
import torch
from methods import build_method
import gia_bench as gb

settings = gb.settings_for("idlg", model={"name": "lenet"}, batch_size=1, seed=0)
drawn = gb.draw_round(settings, torch.device("cpu"))
attack = build_method("idlg", "quick", {"iterations": 2})
attack.reconstruct(drawn.observation, generator=torch.Generator().manual_seed(0))
print("torch._dynamo" in sys.modules, "sympy" in sys.modules)
"""


def test_an_lbfgs_attack_never_imports_torch_dynamo_or_sympy():
    # a fresh process: the test session itself may have imported torch._dynamo already
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "False False"
