"""Reading a tree of setting groups (`setting_rules.Group` dataclasses) from an
environment, and showing what was read: each variable parsed once, on demand (a derived
default may use another variable), every bad value reported at once in one SettingsError.
`settings.py` declares the project's groups; this module knows none of them.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from cpp_dagster.setting_rules import SettingsError, Spec, shown_value, spec_of

# a variable read by a function of its own from the whole environment (a family of
# variables such as CPP_DATABASE_<NAME>_URL, shown as one row of the table)
Special = Callable[[Mapping[str, str]], Any]


class _Failed(Exception):
    """A variable that did not parse (already reported)."""


class _Reader:
    def __init__(self, environ: Mapping[str, str], specs: Sequence[Spec], special: Mapping[str, Special]):
        self.environ, self.special = environ, special
        self.by_variable = {spec.variable: spec for spec in specs}
        self.values: dict[str, Any] = {}
        self.errors: list[str] = []

    def get(self, variable: str) -> Any:
        if variable not in self.values:
            self.values[variable] = self._read(self.by_variable[variable])
        if isinstance(self.values[variable], _Failed):
            raise self.values[variable]
        return self.values[variable]

    def _read(self, spec: Spec) -> Any:
        if spec.variable in self.special:
            return self.special[spec.variable](self.environ)
        raw = (self.environ.get(spec.variable) or "").strip()
        if not raw:
            return spec.derived(self.get) if spec.derived else spec.default
        try:
            return spec.parse(raw)
        except ValueError as error:
            shown = "***" if spec.secret else repr(raw)
            self.errors.append(f"{spec.variable}={shown}: {error}")
            return _Failed()


def _build(cls: type, reader: _Reader):
    values = {}
    for f in fields(cls):
        spec = spec_of(f)
        if spec is None:
            values[f.name] = _build(f.default_factory, reader)
            continue
        try:
            values[f.name] = reader.get(spec.variable)
        except _Failed:
            continue
    return cls(**values) if not reader.errors else None


def build(cls: type, environ: Mapping[str, str], specs: Sequence[Spec], special: Mapping[str, Special]):
    """`cls` (a group, its sub-groups included) from `environ`; SettingsError listing
    every bad value, one line each."""
    reader = _Reader(environ, specs, special)
    built = _build(cls, reader)
    if reader.errors:
        raise SettingsError("\n".join(reader.errors))
    return built


def table(specs: Sequence[Spec]) -> str:
    """A markdown table: variable, meaning, default."""
    rows = ["| variable | meaning | default |", "|---|---|---|"]
    rows += [f"| `{s.variable}` | {s.meaning} | {s.shown_default} |" for s in specs]
    return "\n".join(rows)


def current_values(settings: Any, families: Collection[str] = ()) -> list[str]:
    """`VARIABLE=value` per setting of a built group, secrets redacted; a variable of
    `families` holds (variable, value) pairs, a line each."""
    lines = []
    for f in fields(settings):
        spec, value = spec_of(f), getattr(settings, f.name)
        if spec is None:
            lines += current_values(value, families)
        elif spec.variable in families:
            lines += [f"{k}={v}" for k, v in shown_value(value, spec.secret)]
        else:
            lines.append(f"{spec.variable}={_as_text(shown_value(value, spec.secret))}")
    return lines


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple) and all(isinstance(v, Path) for v in value):
        return ":".join(map(str, value))
    return shlex.join(value) if isinstance(value, tuple) else str(value)
