"""A results folder that switches as a whole.

`results/<barcode>/<acq>/<analysis>` is a symbolic link to one complete version of the
folder, `.<analysis>.versions/v-<id>/` beside it (a relative link, so it holds wherever
the NAS is mounted). A merge writes its files into a fresh staging folder there
(`staging-<owner>-<id>/`), then, in one step:

1. carries the current version's files it does not replace over into the staging
   folder (hard links: no copy of the data), so the other sub-analyses' files (an
   illumination step's ICF_<dye>.npy) stay;
2. renames the staging folder to a version and points the link at it with a rename
   (`os.replace` of a new link over the old one): a reader that resolves the folder
   sees the old version or the new one, never a mix, whatever is killed when;
3. removes the versions the link no longer points to.

Staging folders of an owner (one sub-analysis: only one of its runs is active at a
time) left by a killed merge are removed when that owner's next merge starts; versions
and link files left by a kill between steps are removed at the next switch. A folder
from before this layout (a real directory) becomes the first version at the first
switch: for that one switch the path is briefly absent, never mixed.

Paths inside the folder (`folder/Image.parquet`) keep working for readers and for
the files written after the merge (single-cell table, well profiles), which go into
the current version through the link.

Anyone who can write to the NAS can plant a symbolic link, so nothing here follows one
out: the versions folder must be a real folder (a symlink there is an
`UnsafeResultsFolder`, before anything is created, renamed or removed), the folder's
link must point at one of its own versions, and only regular files are carried over
(never a link, whose target could be anything). Of the current version's files, only
the project's own temporaries (`.<name>.<32 hex>.tmp` / `.partial`) stay behind: a
user's `my_plot.partial` is carried over like any file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import uuid
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path

from cpp_dagster import paths

VERSION_PREFIX, STAGING_PREFIX, TRASH_PREFIX = "v-", "staging-", "trash-"
# The project's own files being written (atomic-write temporaries, derived tables waiting
# to be published: `.<name>.<uuid hex>.tmp` / `.partial`) are never carried into a new
# version; any other file is, whatever its name.
UNFINISHED = re.compile(r"^\..+\.[0-9a-f]{32}\.(tmp|partial)$")


class UnsafeResultsFolder(paths.UnsafePathError):
    """A results folder's versions or link lead somewhere else (a planted symlink)."""


def versions_dir(folder: Path) -> Path:
    """Where the versions of `folder` live: `.<name>.versions` beside it."""
    folder = Path(folder)
    return folder.parent / f".{folder.name}.versions"


def _real_versions_dir(folder: Path) -> Path:
    """The versions folder of `folder`, created if missing, once it is a real folder
    (lstat: a symlink is never followed)."""
    versions = versions_dir(folder)
    versions.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        versions.mkdir()
    try:
        return paths.real_folder(versions, "the results folder's versions folder")
    except paths.UnsafePathError as e:
        raise UnsafeResultsFolder(f"{e} (remove it, and check who put it there)") from None


def new_staging(folder: Path, owner: str) -> Path:
    """A fresh, empty staging folder for the next version of `folder`, after removing
    the staging folders `owner`'s killed merges left behind."""
    versions = _real_versions_dir(folder)
    for stale in versions.glob(f"{STAGING_PREFIX}{owner}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = versions / f"{STAGING_PREFIX}{owner}-{uuid.uuid4().hex}"
    staging.mkdir()
    return staging


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)


def current_version(folder: Path) -> Path | None:
    """The folder's current content (the version its link points to, or the folder
    itself before the first switch); None when there is none yet. A link to anywhere
    but one of its own versions is an UnsafeResultsFolder."""
    folder = Path(folder)
    if not folder.is_symlink():
        return folder if folder.is_dir() else None
    target = folder.resolve()
    versions = versions_dir(folder)
    if versions.is_symlink() or target.parent != versions.resolve() or not target.name.startswith(VERSION_PREFIX):
        raise UnsafeResultsFolder(
            f"{folder} points to {target}, not to one of its versions in {versions}: nothing was carried "
            "over or replaced (remove the link, and check who put it there)"
        )
    return target if target.is_dir() else None


def switch(
    folder: Path,
    staging: Path,
    *,
    replaced: Iterable[str] = (),
    guard: Callable[[], AbstractContextManager] = contextlib.nullcontext,
) -> Path:
    """Make `staging` the content of `folder`, as a whole, plus the current version's
    files that `staging` does not hold and that are not in `replaced` (paths relative to
    the folder: what the previous merge of the same owner wrote). Steps 1 and 2 run
    inside `guard()` (e.g. a row lock that checks the run is still current; it raises to
    refuse, and then nothing changes). Returns the new version's folder."""
    folder, staging = Path(folder), Path(staging)
    versions = _real_versions_dir(folder)
    replaced = set(replaced)
    with guard():
        old = current_version(folder)
        if old is not None:
            _carry_over(old, staging, replaced)
        version = versions / f"{VERSION_PREFIX}{uuid.uuid4().hex}"
        staging.rename(version)
        if folder.is_dir() and not folder.is_symlink():  # the layout before versions
            folder.rename(versions / f"{VERSION_PREFIX}legacy-{uuid.uuid4().hex}")
        link = folder.parent / f".{folder.name}.link-{uuid.uuid4().hex}"
        os.symlink(os.path.join(versions.name, version.name), link)
        os.replace(link, folder)
        _retire_unused(folder, version)
    for trash in versions.glob(f"{TRASH_PREFIX}*"):
        shutil.rmtree(trash, ignore_errors=True)
    return version


def _carry_over(old: Path, staging: Path, replaced: set[str]) -> None:
    for dirpath, _, filenames in os.walk(old):  # never into a linked folder
        for name in filenames:
            src = Path(dirpath) / name
            rel = src.relative_to(old)
            target = staging / rel
            if str(rel) in replaced or UNFINISHED.match(name) or target.exists():
                continue
            if not stat.S_ISREG(os.lstat(src).st_mode):  # a link (to anything) or a device: never carried
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(src, target)


def link_or_copy(src, dst) -> None:
    """A hard link (no copy of the data), or a copy on a file system without them."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _retire_unused(folder: Path, keep: Path) -> None:
    """Versions other than `keep` become trash (removed after the guard is released:
    renames are quick, a removal of many files is not), link files left by a killed
    switch go."""
    versions = versions_dir(folder)
    for version in versions.glob(f"{VERSION_PREFIX}*"):
        if version != keep:
            version.rename(versions / f"{TRASH_PREFIX}{uuid.uuid4().hex}")
    for link in folder.parent.glob(f".{folder.name}.link-*"):
        link.unlink(missing_ok=True)


def manifest_files(path: Path) -> set[str]:
    """The files a merge's manifest (in a version) lists; none when it is missing or unreadable."""
    try:
        return set(json.loads(path.read_text())["files"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return set()
