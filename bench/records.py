"""Trial records: one JSON file per trial, written atomically, keyed by a hash of the trial's config.

A sweep folder holds ``records/<key>.json``. A record that exists and parses is
a finished trial, which is what makes an interrupted sweep resumable.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

RECORD_VERSION = 1
MAX_TRACE_POINTS = 500


def _strict(value: Any) -> Any:
    """NaN becomes null and infinities the strings "inf"/"-inf", so that records are strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def canonical_json(value: Any) -> str:
    return json.dumps(_strict(value), sort_keys=True, separators=(",", ":"), default=str, allow_nan=False)


def trial_key(trial_config: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(trial_config).encode()).hexdigest()[:16]


def write_atomic(path: Path, text: str | Callable[[BinaryIO], None]) -> None:
    """Write via a temporary file in the same folder and rename, so readers never see half a file.

    ``text`` is the file's text, or a function that writes the file's bytes to the handle it is given.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w" if isinstance(text, str) else "wb") as handle:
            if isinstance(text, str):
                handle.write(text)
            else:
                text(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def discard_partial_writes(folder: Path) -> list[Path]:
    """Remove the temporary files (``.<name>.*.tmp``) of writes a kill interrupted; only while nothing writes."""
    stale = sorted(folder.glob(".*.tmp")) + sorted((folder / "records").glob(".*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def thin(points: list[Any], limit: int = MAX_TRACE_POINTS) -> list[Any]:
    """At most about ``limit`` evenly spaced points, the last one always kept (long traces stay small on disk)."""
    if len(points) <= limit:
        return points
    step = math.ceil(len(points) / limit)
    return points[::step] + ([points[-1]] if (len(points) - 1) % step else [])


def record_path(sweep_dir: Path, key: str) -> Path:
    return sweep_dir / "records" / f"{key}.json"


class CorruptRecordError(ValueError):
    pass


def read_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptRecordError(f"{path}: {error}") from None
    if not isinstance(record, dict) or record.get("record_version") != RECORD_VERSION or "status" not in record:
        raise CorruptRecordError(f"{path}: not a gia-bench record (version {RECORD_VERSION})")
    return record


def set_aside(path: Path) -> Path:
    """Move a corrupt record out of the way (kept for inspection) so its trial runs again."""
    target = path.parent / "corrupt" / path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, target)
    return target


def load_records(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every valid record under ``sweep_dir/records`` (corrupt ones are skipped here, set aside on resume)."""
    records = []
    for path in sorted((sweep_dir / "records").glob("*.json")):
        try:
            records.append(read_record(path))
        except CorruptRecordError:
            continue
    return records
