"""The user-code image: one rule for its reference per CellProfiler version, the version its
CellProfiler lock holds, and what the pod settings' `images:` map lacks. The build
(`make image`, deploy/image/build.sh), the pod settings, the Helm values and the
Kubernetes stand-in tests all take an image reference from here, so that none of them
names an image the build does not make.

    python -m cpp_dagster.k8s.image reference [--cp-version V] [--lock FILE] [--repository R]
    python -m cpp_dagster.k8s.image cp-version [--cp-version V] [--lock FILE]
    python -m cpp_dagster.k8s.image gaps [--pods deploy/k8s-pods.yaml]   (asks podman what was built)

Pure but for `main` (which reads files and asks podman about images).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from cpp_dagster import labels
from cpp_dagster.k8s.pod_config import PodConfigError, PodSettings
from cpp_dagster.settings import PROJECT_ROOT

REPOSITORY = "registry.example.org/cpp-dagster"  # where a lab pushes it: `make image IMAGE_REPOSITORY=...`
CP_LOCK = PROJECT_ROOT / "requirements-cellprofiler.lock"
# a repository as image references write it: an optional registry host[:port], then lowercase path parts
_REPOSITORY = re.compile(
    r"^([a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]+)?/)?[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*$"
)
LOCK_PACKAGE = "cellprofiler-core-nightly"  # the pin that names the lock's CellProfiler version
# The image's labels (Dockerfile): what the check and the gaps command compare with.
LABEL_CP_VERSION = "org.cellprofiler.version"
LABEL_PROJECT_VERSION = "org.opencontainers.image.version"


class ImageError(ValueError):
    """An image cannot be built or named as asked (a CellProfiler version its lock does not hold)."""


def project_version() -> str:
    return importlib.metadata.version("cpp-dagster")


def lock_cp_version(lock_text: str) -> str:
    """The CellProfiler version a CellProfiler lock pins (`cellprofiler-core-nightly==V`)."""
    found = re.findall(rf"^{re.escape(LOCK_PACKAGE)}==(\S+)\s*$", lock_text, flags=re.MULTILINE)
    if len(found) != 1:
        raise ImageError(f"the CellProfiler lock pins {LOCK_PACKAGE} {len(found)} times, not once")
    return found[0]


def image_tag(cp_version: str, version: str | None = None) -> str:
    """`<project version>-cp<CellProfiler version>`, e.g. 0.1.0-cp5.0.0.dev784: one image per
    CellProfiler version, and a tag a Kubernetes label could also carry."""
    tag = f"{version or project_version()}-cp{cp_version}"
    if not labels.is_label_value(tag) or len(tag) > 128:
        raise ImageError(f"image tag {tag!r} is not a valid tag ({labels.RULE})")
    return tag


def image_reference(cp_version: str, repository: str = REPOSITORY, version: str | None = None) -> str:
    if not _REPOSITORY.match(repository) or len(repository) > 255:
        raise ImageError(
            f"image repository {repository!r} is not a repository name (lowercase, e.g. registry.example.org/cpp-dagster)"
        )
    return f"{repository}:{image_tag(cp_version, version)}"


def checked_cp_version(cp_version: str | None, lock: Path = CP_LOCK) -> str:
    """The version to build: `cp_version` if given (it must be the one the lock holds, the
    only one the image can install), else the lock's."""
    held = lock_cp_version(Path(lock).read_text())
    if cp_version is not None and cp_version != held:
        raise ImageError(
            f"CP_VERSION={cp_version!r} is not the CellProfiler version {lock.name} holds ({held!r}): "
            f"an image installs CellProfiler from its lock only. Build {held!r}, or compile a lock for "
            f"{cp_version!r} (docs/deploy.md, 'The image') and pass it as CP_LOCK"
        )
    return held


def gaps(images: Mapping[str, str], built: Mapping[str, Mapping[str, str] | None]) -> list[str]:
    """What keeps each cp_version -> image entry of the pod settings from running: no such
    image built (`built[ref]` is None), or one whose CellProfiler label is another version.
    `built` maps each reference to its labels."""
    found = []
    for version, ref in sorted(images.items()):
        image_labels = built.get(ref)
        if image_labels is None:
            found.append(f"cp_version {version}: {ref} is not built (make image CP_VERSION={version})")
        elif image_labels.get(LABEL_CP_VERSION) != version:
            held = image_labels.get(LABEL_CP_VERSION) or "no CellProfiler label"
            found.append(f"cp_version {version}: {ref} holds CellProfiler {held}, not {version}")
    return found


def podman_labels(ref: str) -> dict[str, str] | None:
    """The labels of a local image, None when podman has no such image."""
    proc = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{json .Labels}}", ref], capture_output=True, text=True
    )
    return (json.loads(proc.stdout) or {}) if proc.returncode == 0 else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cpp_dagster.k8s.image", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    ref = sub.add_parser("reference", help="the reference `make image` tags (checks CP_VERSION against the lock)")
    ref.add_argument("--cp-version", default=None)
    ref.add_argument("--lock", type=Path, default=CP_LOCK)
    ref.add_argument("--repository", default=REPOSITORY)
    version = sub.add_parser(
        "cp-version", help="the CellProfiler version to build (checks CP_VERSION against the lock)"
    )
    version.add_argument("--cp-version", default=None)
    version.add_argument("--lock", type=Path, default=CP_LOCK)
    gap = sub.add_parser("gaps", help="the pod settings' images that are not built, or hold another CellProfiler")
    gap.add_argument("--pods", type=Path, default=PROJECT_ROOT / "deploy" / "k8s-pods.yaml")
    args = p.parse_args(argv)
    try:
        if args.command == "reference":
            print(image_reference(checked_cp_version(args.cp_version, args.lock), args.repository))
            return 0
        if args.command == "cp-version":
            print(checked_cp_version(args.cp_version, args.lock))
            return 0
        images = PodSettings.load(args.pods).images
    except (ImageError, PodConfigError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if shutil.which("podman") is None:
        print("error: podman is not installed: it is what `make image` builds with", file=sys.stderr)
        return 2
    found = gaps(images, {ref: podman_labels(ref) for ref in images.values()})
    for line in found:
        print(line)
    if not found:
        print(f"every image the pod settings name is built ({len(images)}: {', '.join(sorted(images))})")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
