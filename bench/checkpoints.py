"""A trial's checkpoint on disk: ``<results folder>/checkpoints/<trial key>.pt``, written atomically.

What a checkpoint holds and how a trial continues from it is ``methods.checkpoint``'s; this module
writes and reads the file, and keeps the harness's own part of it (the scored progress points and how
often the trial has been resumed). The file is deleted once the trial's record is written.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from bench import records as rec


class CorruptCheckpointError(ValueError):
    pass


def checkpoint_path(out_dir: Path, key: str) -> Path:
    return out_dir / "checkpoints" / f"{key}.pt"


def write_checkpoint(path: Path, key: str, state: Mapping[str, Any]) -> None:
    """Serialise ``state`` (tagged with the trial's key) straight into a temporary file, then rename it over."""
    rec.write_atomic(path, lambda handle: torch.save({"key": key, **state}, handle))


def read_checkpoint(path: Path, key: str, device: torch.device) -> dict[str, Any] | None:
    """The checkpoint of trial ``key``, its tensors on ``device``; None when there is none."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except (OSError, EOFError, RuntimeError, pickle.UnpicklingError, ValueError) as error:
        raise CorruptCheckpointError(f"{path}: unreadable ({str(error).splitlines()[0]})") from None
    if not isinstance(state, dict) or state.get("key") != key:
        raise CorruptCheckpointError(f"{path}: not the checkpoint of trial {key}")
    return state


def set_aside(path: Path) -> Path:
    """Move a checkpoint that cannot be used out of the way (kept for inspection); the trial starts over."""
    target = path.parent / "unused" / path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, target)
    return target


def describe(state: Mapping[str, Any]) -> str:
    """Where a checkpoint stands, for people: calls finished and the running call's iteration."""
    running = state.get("running")
    where = f", call {running['call'] + 1} at iteration {running['iteration']}" if running else ""
    return f"{len(state['completed'])} call(s) of the attack loop finished{where}"


class TrialProgress:
    """The harness's part of a checkpoint: the scored progress points so far and the number of resumes."""

    def __init__(self, points: list[list[float]]) -> None:
        self.points = points
        self.resumes = 0

    def state_dict(self) -> dict[str, Any]:
        return {"points": [list(p) for p in self.points], "resumes": self.resumes}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.points[:] = [list(p) for p in state["points"]]
        self.resumes = int(state["resumes"]) + 1
