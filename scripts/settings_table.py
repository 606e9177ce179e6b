"""Write the settings table of bench/config.py into README.md: python scripts/settings_table.py.

The table sits between ``<!-- settings:begin -->`` and ``<!-- settings:end -->``; tests/test_docs.py fails when it
differs from the schema.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.config import settings_table  # noqa: E402

BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        sys.exit(f"README.md has no {BEGIN} ... {END} block")
    updated = text[: text.index(BEGIN)] + f"{BEGIN}\n{settings_table()}\n{END}" + text[text.index(END) + len(END) :]
    if updated != text:
        readme.write_text(updated)
        print("updated README.md")


if __name__ == "__main__":
    main()
