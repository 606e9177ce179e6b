"""The README and docs say what the code does: generated tables in sync, every file in the layout table."""

from bench.config import settings_table
from tests.conftest import REPO


def test_the_readme_lists_every_setting_of_the_schema():
    assert settings_table() in (REPO / "README.md").read_text(), "run python scripts/settings_table.py"


def test_the_readme_layout_names_every_source_file():
    readme = (REPO / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    missing = []
    for folder in ("bench", "methods", "scripts"):
        for path in sorted((REPO / folder).glob("*.py")) + sorted((REPO / folder).glob("*.sh")):
            if path.name in ("__init__.py", "__main__.py"):
                continue
            if path.name not in layout and path.stem not in layout:
                missing.append(f"{folder}/{path.name}")
    assert not missing, f"README's layout table does not name {missing}"
