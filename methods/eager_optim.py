"""torch.optim without importing torch._dynamo: 1-2 s of CPU less per process that runs an attack.

torch wraps the methods of ``torch.optim.Optimizer`` and the functional optimiser steps (``adam``, ``sgd``, ...) in
``torch._disable_dynamo``, whose first call imports ``torch._dynamo`` (and with it most of the compiler stack) only
to mark the function as "do not trace". A benchmark process that never compiles an optimiser pays for it once per
process: as much CPU as importing torch itself, on every trial, every SLURM job and every CLI test.

``torch._disable_dynamo`` caches what it builds on the wrapped function as ``__dynamo_disable``; pre-filling that
cache with the function itself makes the wrapper call the function directly. The only behaviour that changes is
under ``torch.compile`` of code that steps an optimiser, which gia-bench never does (IG's ``compile_loss``
compiles the loss terms only). Nothing is touched once ``torch._dynamo`` is loaded, so a process that compiles
first keeps torch's own markers. (``torch.func`` transforms import it themselves: the vmapped paths of IG and
GradInversion still pay for it.)

Adam's ``step`` is wrapped once more, in ``_use_grad_for_differentiable``, which imports ``torch._dynamo`` on every
call to place a graph break for the compiler, then sets the grad mode to ``differentiable`` (False unless asked).
``EagerAdam`` is torch's Adam whose ``step`` runs torch's own step function under ``torch.no_grad()`` without that
wrapper: the same arithmetic, bit for bit (tests/test_eager_optim.py), the same state_dict.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable

import torch

_CACHE = "__dynamo_disable"  # the attribute torch._compile._disable_dynamo caches its result in


def skip_dynamo_import() -> int:
    """Pre-fill torch's cache on every wrapped optimiser function; returns how many were filled (0 once
    ``torch._dynamo`` is imported)."""
    if "torch._dynamo" in sys.modules:
        return 0
    filled = 0
    classes = inspect.getmembers(torch.optim, inspect.isclass)
    owners = [cls for _, cls in classes if issubclass(cls, torch.optim.Optimizer)]
    modules = [module for name, module in vars(torch.optim).items() if inspect.ismodule(module)]
    for owner in [*owners, *modules]:
        for _, member in inspect.getmembers(owner, callable):
            wrapped = getattr(member, "__wrapped__", None)
            if wrapped is not None and inspect.isfunction(wrapped) and not hasattr(wrapped, _CACHE):
                setattr(wrapped, _CACHE, wrapped)
                filled += 1
    return filled


_ADAM_STEP = inspect.unwrap(torch.optim.Adam.step)  # torch's step itself, below its decorators


class EagerAdam(torch.optim.Adam):
    """``torch.optim.Adam`` stepped without the wrapper that imports ``torch._dynamo`` (see the module docstring)."""

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        if self.defaults["differentiable"]:  # a differentiable step needs torch's own grad handling
            return super().step(closure)
        with torch.no_grad():
            return _ADAM_STEP(self, closure)
