"""Rebuild ``datasets/sample/`` from the pinned foolbox wheel.

The embedded sample is the set of real images that ``foolbox==3.3.4`` ships in
``foolbox/data/``. We copy the files; foolbox itself is never imported.

    pip download --no-deps foolbox==3.3.4 -d /tmp/fb
    python scripts/build_sample.py /tmp/fb/foolbox-3.3.4-py3-none-any.whl
"""

from __future__ import annotations

import argparse
import hashlib
import re
import zipfile
from pathlib import Path

PINNED_WHEEL = "foolbox-3.3.4-py3-none-any.whl"
KEPT = re.compile(r"^foolbox/data/((cifar10|cifar100|imagenet)_\d\d_\d+\.(png|jpg))$")
TARGET = Path(__file__).resolve().parents[1] / "datasets" / "sample"


def extract(wheel: Path, target: Path = TARGET) -> list[Path]:
    if wheel.name != PINNED_WHEEL:
        raise SystemExit(f"expected {PINNED_WHEEL}, got {wheel.name}: run `pip download --no-deps foolbox==3.3.4`")
    written = []
    with zipfile.ZipFile(wheel) as archive:
        for member in sorted(archive.namelist()):
            match = KEPT.match(member)
            if not match:
                continue
            subset = match.group(2)
            out = target / subset / match.group(1)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(archive.read(member))
            written.append(out)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path, help=f"path to {PINNED_WHEEL}")
    args = parser.parse_args()
    files = extract(args.wheel)
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(TARGET)}" for p in files]
    (TARGET / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    print(f"wrote {len(files)} images under {TARGET}")


if __name__ == "__main__":
    main()
