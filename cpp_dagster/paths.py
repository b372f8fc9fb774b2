"""The one path rule: every path built from a database or user value goes through here.

A value from imagedb (a plate barcode, an acquisition or analysis id, a pipeline file),
from a training configuration (a workflow or model name) or from a partition key may
name a file or folder only below its root:

- `component(value, what)`: one path component (a barcode, a model name). It must be a
  non-empty string without separators (`/`, `\\`), not `.` or `..`, with no control
  character (NUL included) and at most 255 bytes.
- `relative(value, what)`: a relative path of such components (a pipeline file may sit
  in a subfolder of the pipelines folder: `jump/analysis.cppipe`).
- `under(root, *parts, what=...)`: `root/part/...`, each part a checked component, and
  the resolved result (symlinks followed) still inside the resolved root. The path is
  returned on `root` as given (not resolved), so `relative_to(root)` keeps working.
- `under_relative(root, value, what=...)`: the same for a relative path value.

- `outside_roots(values, roots)`: the absolute paths (image paths from imagedb) that do
  not lie under any of `roots`, compared as written (normalised: `..` never climbs out).
- `real_folder(path, what)` / `regular_file(path, what)`: a folder the project writes or
  deletes in, a file it copies, once it is not a symbolic link (lstat: never followed),
  since anyone who can write to the NAS or the work area can plant one.

Each refusal is an `UnsafePathError` (a ValueError) whose message names the value and
what it was meant to be, for the scientist who typed it.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path, PurePosixPath

MAX_COMPONENT_BYTES = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class UnsafePathError(ValueError):
    """A value cannot be used to name a file or folder: it would leave its root or is not a name."""


def component(value: object, what: str) -> str:
    """`value` as one safe path component, or UnsafePathError saying why not."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise UnsafePathError(f"{what} must be a name, got {value!r}")
    text = str(value)
    if not text or not text.strip():
        raise UnsafePathError(f"{what} is empty")
    if _CONTROL.search(text):
        raise UnsafePathError(f"{what} {text!r} contains a control character")
    if "/" in text or "\\" in text:
        raise UnsafePathError(f"{what} {text!r} contains a path separator")
    if text in (".", ".."):
        raise UnsafePathError(f"{what} {text!r} is not a name")
    if len(text.encode()) > MAX_COMPONENT_BYTES:
        raise UnsafePathError(f"{what} is longer than {MAX_COMPONENT_BYTES} bytes")
    return text


def relative(value: object, what: str) -> PurePosixPath:
    """`value` as a relative path whose every component is safe (no `..`, not absolute)."""
    if not isinstance(value, str) or not value:
        raise UnsafePathError(f"{what} must be a relative path, got {value!r}")
    if _CONTROL.search(value):
        raise UnsafePathError(f"{what} {value!r} contains a control character")
    if value.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", value):
        raise UnsafePathError(f"{what} {value!r} is an absolute path; give it relative to its folder")
    parts = [p for p in value.replace("\\", "/").split("/") if p not in ("",)]
    for p in parts:
        if p in (".", ".."):
            raise UnsafePathError(f"{what} {value!r} contains {p!r}")
        component(p, what)
    return PurePosixPath(*parts)


def _inside(root: Path, path: Path, what: str, value: object) -> Path:
    """`path` (built on `root` as given), once its resolved form (symlinks followed) is
    inside the resolved root: callers keep the root's spelling (relative_to works)."""
    real_root = Path(root).resolve()
    if not path.resolve().is_relative_to(real_root):
        raise UnsafePathError(f"{what} {value!r} resolves outside {real_root}")
    return path


def under(root: Path, *parts: object, what: str) -> Path:
    """`root / parts...`: each part one safe component; the result stays inside `root`."""
    names = [component(p, what) for p in parts]
    return _inside(root, Path(root).joinpath(*names), what, "/".join(names))


def under_relative(root: Path, value: object, what: str) -> Path:
    """`root / value` for a relative path value (e.g. a pipeline file); stays inside `root`."""
    rel = relative(value, what)
    return _inside(root, Path(root) / rel, what, value)


def _kind(path: Path, mode: int) -> str:
    return f"a symbolic link to {os.readlink(path)}" if stat.S_ISLNK(mode) else "of another kind"


def real_folder(path: Path, what: str) -> Path:
    """`path` once it is a folder and not a symbolic link (lstat)."""
    mode = os.lstat(path).st_mode
    if not stat.S_ISDIR(mode):
        raise UnsafePathError(f"{what} {path} is {_kind(path, mode)}, not a folder; nothing was done in it")
    return Path(path)


def regular_file(path: Path, what: str) -> Path:
    """`path` once it is a regular file and not a symbolic link (lstat)."""
    mode = os.lstat(path).st_mode
    if not stat.S_ISREG(mode):
        raise UnsafePathError(f"{what} {Path(path).name} is {_kind(path, mode)}, not a regular file")
    return Path(path)


def outside_roots(values, roots) -> list[str]:
    """The values that are not an absolute path under one of `roots` (lexically, after
    normalising: `/share/mikro/../../etc/passwd` is outside /share/mikro)."""
    roots = [PurePosixPath(os.path.normpath(str(r))) for r in roots]
    outside = []
    for value in values:
        text = str(value)
        if _CONTROL.search(text) or not text.startswith("/"):
            outside.append(text)
            continue
        normal = PurePosixPath(os.path.normpath(text))
        if not any(normal.is_relative_to(root) and normal != root for root in roots):
            outside.append(text)
    return outside
