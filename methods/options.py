"""A method's options, declared once: dataclass fields with their type, default, range and help.

A method is a dataclass; each field is an option. ``option()`` attaches a range
and a one-line help to a field, the type comes from its annotation (``int``,
``float``, ``bool``, ``str`` or a ``Literal`` of choices), and the class
attribute ``profiles`` names the budgets (``quick``, ``paper``) as overrides of
the defaults. ``resolve_options`` and ``check_options`` turn that declaration
into the keyword config of one run, so no YAML file restates it.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, Literal


def option(
    default: Any,
    *,
    help: str = "",  # noqa: A002  (the natural name for a field's documentation)
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    below: float | None = None,
) -> Any:
    """A dataclass field with a range: ``minimum``/``maximum`` are inclusive bounds, ``above``/``below`` exclusive."""
    bounds = {"minimum": minimum, "maximum": maximum, "above": above, "below": below}
    metadata = {"help": help, **{k: v for k, v in bounds.items() if v is not None}}
    return dataclasses.field(default=default, metadata=metadata)


def option_fields(cls: type) -> dict[str, dataclasses.Field]:
    """The options of a method class: its dataclass fields (none for a class that is not a dataclass)."""
    if not dataclasses.is_dataclass(cls):
        return {}
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def defaults(cls: type) -> dict[str, Any]:
    """Every option's default value."""
    values = {}
    for name, spec in option_fields(cls).items():
        if spec.default is not dataclasses.MISSING:
            values[name] = spec.default
        elif spec.default_factory is not dataclasses.MISSING:
            values[name] = spec.default_factory()
    return values


def profiles(cls: type) -> dict[str, dict[str, Any]]:
    return dict(getattr(cls, "profiles", None) or {})


def resolve_options(cls: type, profile: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The keyword config of one run: the defaults, then the profile's values, then ``overrides``.

    ``None`` in ``overrides`` means "not set" (the runner's config lists every option as ``null``). A class with no
    ``profiles`` runs every profile at its defaults.
    """
    named = profiles(cls)
    if named and profile not in named:
        raise ValueError(f"unknown profile {profile!r} for method {cls.name!r}; choose one of {', '.join(named)}")
    known = option_fields(cls)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(given) - set(known)) if known else []
    if unknown:
        raise ValueError(
            f"method {cls.name!r} has no option {', '.join(unknown)}; its options are {', '.join(sorted(known))}"
        )
    return {**defaults(cls), **named.get(profile, {}), **given}


class OptionError(ValueError):
    """An option's value has the wrong type or lies outside its declared range."""

    def __init__(self, method: str, option: str, value: Any, problem: str) -> None:
        super().__init__(f"{method}: option {option}={value!r} is not valid: {problem}")
        self.method, self.option, self.value, self.problem = method, option, value, problem


def check_options(cls: type, values: Mapping[str, Any]) -> None:
    """Raise ``OptionError`` (one line naming the option) for a value of the wrong type or out of its range."""
    fields = option_fields(cls)
    hints = typing.get_type_hints(cls) if fields else {}
    for name, value in values.items():
        if name not in fields:
            continue
        problem = _type_problem(hints.get(name, Any), value) or _range_problem(fields[name].metadata, value)
        if problem:
            raise OptionError(cls.name, name, value, problem)


def _type_problem(hint: Any, value: Any) -> str | None:
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        return None if value in choices else f"choose one of {', '.join(map(str, choices))}"
    if hint is bool:
        return None if isinstance(value, bool) else "give true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "give an integer"
    if hint is float:
        return None if isinstance(value, int | float) and not isinstance(value, bool) else "give a number"
    if hint is str:
        return None if isinstance(value, str) else "give a string"
    return None


def _range_problem(metadata: Mapping[str, Any], value: Any) -> str | None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    if "minimum" in metadata and value < metadata["minimum"]:
        return f"must be >= {metadata['minimum']}"
    if "maximum" in metadata and value > metadata["maximum"]:
        return f"must be <= {metadata['maximum']}"
    if "above" in metadata and value <= metadata["above"]:
        return f"must be > {metadata['above']}"
    if "below" in metadata and value >= metadata["below"]:
        return f"must be < {metadata['below']}"
    return None


def options_table(cls: type) -> str:
    """The Markdown table of a method's options (docs/methods/<name>.md embeds it; a test keeps it in sync)."""
    hints = typing.get_type_hints(cls) if option_fields(cls) else {}
    named = profiles(cls)
    rows = [
        "| option | type | default | " + " | ".join(named) + " | meaning |",
        "|---" * (4 + len(named)) + "|",
    ]
    for name, spec in option_fields(cls).items():
        hint = hints.get(name, Any)
        kind = "/".join(map(str, typing.get_args(hint))) if typing.get_origin(hint) is Literal else hint.__name__
        default = defaults(cls).get(name)
        by_profile = [_cell(named[p][name]) if name in named[p] else "" for p in named]
        rows.append(f"| `{name}` | {kind} | {_cell(default)} | " + " | ".join(by_profile) + f" | {_help(spec)} |")
    return "\n".join(rows)


def _cell(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else f"{value:,}" if isinstance(value, int) else str(value)


def _help(spec: dataclasses.Field) -> str:
    bounds = {"minimum": ">= {}", "maximum": "<= {}", "above": "> {}", "below": "< {}"}
    limits = [form.format(spec.metadata[key]) for key, form in bounds.items() if key in spec.metadata]
    text = spec.metadata.get("help", "").replace("|", "\\|")
    return text + (f" ({', '.join(limits)})" if limits else "")
