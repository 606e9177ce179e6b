"""User modules that register their own attacks: ``plugins=[my_attack.py]`` (docs/adding_a_method.md)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from bench.errors import UserError


def load_plugins(plugins: list[str]) -> None:
    """Import user modules (dotted names or .py paths) whose ``@register_method`` adds attacks; once each."""
    for plugin in plugins:
        if plugin.endswith(".py"):
            path = Path(plugin).expanduser().resolve()
            if not path.is_file():
                raise UserError(f"plugin file {path} does not exist; pass plugins=[path/to/my_attack.py]")
            module_name = f"gia_bench_plugin_{path.stem}"
            if module_name in sys.modules:
                continue
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            try:
                spec.loader.exec_module(module)
            except Exception:
                del sys.modules[module_name]
                raise
        else:
            try:
                importlib.import_module(plugin)
            except ModuleNotFoundError as error:
                raise UserError(f"cannot import plugin {plugin!r} ({error}); is it on PYTHONPATH?") from None
