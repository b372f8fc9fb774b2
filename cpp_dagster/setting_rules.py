"""How a setting is declared, parsed and shown: the parsers (raw text -> value, or a
ValueError saying what is expected), `setting()` (a dataclass field read from one `CPP_*`
variable), and groups whose repr never shows a secret. `settings.py` declares the
project's settings with these.
"""

from __future__ import annotations

import math
import os
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


class SettingsError(ValueError):
    """One or more `CPP_*` variables hold a value that cannot be used; one line each."""


# the password of `scheme://user:password@host` (up to the last @ before the path)
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^/\s]*@")
# `password=...` as a URL query parameter or a key/value DSN word, quoted or not
_KEY_PASSWORD = re.compile(
    r"""(?ix) (\b(?:ssl)?password \s*=\s*) ( '(?:[^'\\]|\\.)*'? | "(?:[^"\\]|\\.)*"? | [^\s&;'"]* )"""
)


def redact_url(text: str) -> str:
    """A database URL or DSN, or a message holding one, fit for a log line: every password
    replaced by *** (`postgresql://u:pw@h/db`, `...?password=pw`, `host=h password=pw`,
    `password='a b\\'c'`)."""
    return _KEY_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", text))


def redact_endpoint(url: str) -> str:
    """A URL whose path and query may be its secret (a Slack incoming webhook's token,
    `https://user:pw@host/...`), fit for a log line: only `scheme://host[:port]/***`."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if _port(parts) else ""
    return f"{parts.scheme}://{host}{port}/***"


def _port(parts) -> int | None:
    try:
        return parts.port
    except ValueError:
        return None


# --- parsers: raw text -> value, or ValueError saying what is expected -------------------


def text(raw: str) -> str:
    return raw


def path(raw: str) -> Path:
    return Path(raw).expanduser().resolve()


def folder_list(raw: str) -> tuple[Path, ...]:
    """`/a:/b` -> absolute folders, normalised but not resolved: compared as written with
    the paths imagedb holds."""
    parts = [part.strip() for part in raw.split(":") if part.strip()]
    if not parts or any(not Path(part).expanduser().is_absolute() for part in parts):
        raise ValueError("expected absolute folders separated by ':' (e.g. /share/mikro:/share/mikro2)")
    return tuple(Path(os.path.normpath(Path(part).expanduser())) for part in parts)


def _number(kind: type, zero_allowed: bool, expected: str) -> Callable[[str], Any]:
    def parse(raw: str):
        try:
            value = kind(raw)
        except ValueError:
            raise ValueError(f"expected {expected}") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero_allowed):
            raise ValueError(f"expected {expected}")
        return value

    return parse


positive_number = _number(float, False, "a positive number")
positive_int = _number(int, False, "a positive whole number")
count = _number(int, True, "a whole number, 0 or more")
duration = _number(float, True, "a number of seconds, 0 or more")
days = _number(float, True, "a number of days, 0 or more (e.g. 7 or 0.5)")


def boolean(raw: str) -> bool:
    value = raw.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def one_of(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in choices:
            raise ValueError("expected " + " or ".join(f"'{c}'" for c in choices))
        return raw

    return parse


def command(raw: str) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(raw))
    except ValueError as error:
        raise ValueError(f"not a command line ({error})") from None


def version_map(raw: str) -> tuple[tuple[str, str], ...]:
    """`4.2.8=/opt/cp428/bin/cellprofiler,4.2.9=/opt/cp429/bin/cellprofiler` as pairs."""
    pairs = []
    for part in (p.strip() for p in raw.split(",")):
        version, sep, executable = part.partition("=")
        if not part:
            continue
        if not sep or not version.strip() or not executable.strip():
            raise ValueError(f"{part!r} is not VERSION=EXECUTABLE (e.g. 4.2.8=/opt/cp428/bin/cellprofiler)")
        pairs.append((version.strip(), executable.strip()))
    if len({v for v, _ in pairs}) != len(pairs):
        raise ValueError("a version is named twice")
    return tuple(pairs)


def url_template(raw: str) -> str:
    if "{path}" not in raw:
        raise ValueError("must contain {path}, e.g. https://files.lab/{path}")
    return raw


def http_url(raw: str) -> str:
    """An http(s) URL with a host: no other scheme (file:, ftp:), no space or control
    character (it goes into a request line as it is)."""
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL with a host, e.g. https://hooks.lab/cpp")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in raw) or not raw.isascii():
        raise ValueError("a URL may not hold spaces, control or non-ASCII characters (percent-encode them)")
    if _port(parts) is None and parts.netloc.rsplit("]", 1)[-1].rsplit("@", 1)[-1].count(":"):
        raise ValueError("the URL's port is not a number from 0 to 65535")
    return raw


def seconds_up_to(maximum: float) -> Callable[[str], float]:
    """A number of seconds above 0 and at most `maximum`."""
    expected = f"a number of seconds above 0 and at most {maximum:g}"

    def parse(raw: str) -> float:
        value = _number(float, False, expected)(raw)
        if value > maximum:
            raise ValueError(f"expected {expected}")
        return value

    return parse


# --- declaring a setting ----------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """How one field is read: its variable, what it means, its default as the README shows
    it, how its text is parsed, and whether it is a secret (`url`: redact the password;
    `endpoint`: show only scheme, host and port; `token`: never shown)."""

    variable: str
    meaning: str
    shown_default: str
    parse: Callable[[str], Any]
    default: Any = None
    derived: Callable[[Callable[[str], Any]], Any] | None = None
    secret: str | None = None


def setting(
    variable: str,
    meaning: str,
    default: Any = None,
    parse: Callable[[str], Any] = text,
    *,
    shown: str | None = None,
    derived: Callable | None = None,
    secret: str | None = None,
) -> Any:
    """A dataclass field read from `variable`. `derived(get)` computes a default from other
    variables (`get("CPP_NAS_ROOT")`); such a field has no default when built by hand."""
    if shown is None:
        shown = (
            "unset"
            if default is None
            else (
                str(default).lower()
                if isinstance(default, bool)
                else f"`{default}`"
                if isinstance(default, str)
                else str(default)
            )
        )
    spec = Spec(variable, meaning, shown, parse, default, derived, secret)
    if derived is not None:
        return field(metadata={"setting": spec})
    return field(default=default, metadata={"setting": spec})


def shown_value(value: Any, secret: str | None) -> Any:
    if value is None or not secret:
        return value
    if secret == "url":
        return redact_url(value) if isinstance(value, str) else tuple((k, redact_url(v)) for k, v in value)
    if secret == "endpoint":
        return redact_endpoint(value)
    return "***"


class Group:
    """A frozen group of settings whose repr never shows a secret."""

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={shown_value(getattr(self, f.name), spec_of(f) and spec_of(f).secret)!r}" for f in fields(self)
        )
        return f"{type(self).__name__}({shown})"

    __str__ = __repr__


def spec_of(f) -> Spec | None:
    return f.metadata.get("setting")


group = dataclass(frozen=True, repr=False)
