"""Write each registered method's options table into its docs page: python scripts/options_tables.py.

The table sits between the markers ``<!-- options:begin -->`` and ``<!-- options:end -->`` of
docs/methods/<name>.md (appended as an "Options" section when the page has none);
tests/test_methods.py fails when a page's table differs from its class.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import methods  # noqa: E402
from methods.options import options_table  # noqa: E402

BEGIN, END = "<!-- options:begin -->", "<!-- options:end -->"


def embed(text: str, table: str) -> str:
    block = f"{BEGIN}\n{table}\n{END}"
    if BEGIN in text and END in text:
        return text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) :]
    intro = "Generated from the class by `python scripts/options_tables.py`; set one with `method.params.<option>=`."
    return text.rstrip("\n") + f"\n\n## Options\n\n{intro}\n\n{block}\n"


def main() -> None:
    for name in methods.list_methods():
        page = ROOT / "docs" / "methods" / f"{name}.md"
        if not page.is_file():
            print(f"{page} is missing: write the method's page first", file=sys.stderr)
            continue
        text = page.read_text()
        updated = embed(text, options_table(methods.get_method_class(name)))
        if updated != text:
            page.write_text(updated)
            print(f"updated {page.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
