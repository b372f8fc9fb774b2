"""Values that would name a file or folder outside their root (`..`, a `/`, an absolute
path, a NUL byte), the refusal each must get, and a watch on everything beside the NAS
root: for the tests that paths stay under their root."""

from __future__ import annotations

from pathlib import Path

KINDS = ("dotdot", "slash", "absolute", "nul")


# what the refusal says, per kind of bad value
WHY = {
    "dotdot": r"contains a path separator|is not a name|contains '\.\.'",
    "slash": "contains a path separator",
    "absolute": "contains a path separator|is an absolute path",
    "nul": "contains a control character",
}


def bad_value(kind: str, tmp_path: Path, name: str = "escaped") -> str:
    """A value of each kind; the escaping ones would land beside the NAS root (in
    tmp_path, which `outside_nas` watches)."""
    return {
        "dotdot": f"../../{name}",
        "slash": f"plates/{name}",
        "absolute": str(tmp_path / name),
        "nul": f"{name}\x00x",
    }[kind]


def outside_nas(nas_root: Path) -> set[str]:
    """Everything beside the NAS root (its parent's tree, the Dagster instance's own
    folder aside)."""
    parent = nas_root.parent
    return {
        str(p.relative_to(parent))
        for p in parent.rglob("*")
        if not p.is_relative_to(nas_root) and p.relative_to(parent).parts[0] != "dagster_home"
    }
