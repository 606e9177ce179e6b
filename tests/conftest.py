from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def run_cli(tmp_path):
    """Run ``python -m bench.run`` in a subprocess with results under tmp_path."""
    import subprocess

    def run(*overrides: str, timeout: float = 300, cwd: Path = REPO) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
        args = [sys.executable, "-m", "bench.run", f"results_root={tmp_path}/results", "quiet=true", *overrides]
        return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)

    return run
