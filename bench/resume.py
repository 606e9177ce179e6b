"""Output-folder checks before a run: the folder is writable and holds one experiment, so resuming is safe."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench import records as rec
from bench.errors import UserError

MIN_FREE_BYTES = 100 * 2**20


def check_output_dir(out_dir: Path, results_root: Path) -> None:
    """Refuse, before any trial runs, a results folder that escapes the root or cannot be written."""
    if not out_dir.is_absolute():
        resolved, root = (Path.cwd() / out_dir).resolve(), (Path.cwd() / results_root).resolve()
        if not resolved.is_relative_to(root):
            raise UserError(
                f"output folder {out_dir} lies outside results_root={results_root}; use a path inside it "
                "or an absolute path"
            )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise UserError(
            f"results folder {out_dir} is not writable ({error.strerror or error}); "
            "choose another hydra.sweep.dir / results_root"
        ) from None
    free = shutil.disk_usage(out_dir).free
    if free < MIN_FREE_BYTES:
        raise UserError(f"only {free / 2**20:.0f} MB free under {out_dir}; free some space or choose another folder")


def check_experiment(out_dir: Path, fixed: Mapping[str, Any]) -> None:
    """A results folder holds one experiment: refuse to resume it with fixed settings that would mix two.

    ``fixed`` holds the settings every trial of the sweep shares (not the swept ones, not the run-only ones).
    The first run writes them to ``experiment.json``; later runs must match.
    """
    path = out_dir / "experiment.json"
    if path.exists():
        try:
            previous = json.loads(path.read_text())["fixed"]
        except (OSError, ValueError, KeyError, TypeError):
            raise UserError(f"{path} is unreadable; delete it to re-run this folder as a new experiment") from None
        differing = sorted(k for k in set(previous) | set(fixed) if previous.get(k) != fixed.get(k))
        if differing:
            raise UserError(
                f"{out_dir} holds an experiment with different {', '.join(differing)}; resuming would mix "
                "two experiments: use a new hydra.sweep.dir"
            )
        return
    rec.write_atomic(path, rec.canonical_json({"fixed": dict(fixed)}) + "\n")
