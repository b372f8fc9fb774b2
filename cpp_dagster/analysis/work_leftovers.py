"""What Dagster's runs leave in the work area besides the sub-analyses' batch folders,
removed past the retention (`CPP_WORK_RETENTION_DAYS`) by the nightly `clean_work_area`
job and `cpp-dagster gc`:

- `compute-logs/<run id>/`: a run's captured stdout/stderr (the compute log manager's
  base folder in helm-values.yaml), once the run is no longer active;
- `dagster-io/<run id>/`: the IO manager's pickles of a run's op outputs, once the run is
  no longer active (an asset partition's pickles, `dagster-io/<asset>/...`, stay: they
  are its latest materialization, which a later run loads);
- `<pipeline-check cache>/<sha256>.json`: a cached pipeline inspection not used within
  the retention (a hit touches the entry), and a `.tmp` left by an interrupted one;
- `training/<partition key>/`: a training version's work folder, once no run of that
  version is active.

Age is the newest modification time of anything inside (lstat: a link is never
followed), so a folder still written to is never old. A symbolic link is never followed
nor removed: a top folder that is a link is skipped and said so; anything not of the
expected name (a run id, a cache key) is left alone. Which runs and training versions are
active is the caller's knowledge (Dagster's), given as sets.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cpp_dagster import paths
from cpp_dagster.analysis.work_area import freed_bytes, human_bytes

COMPUTE_LOGS, IO_PICKLES, TRAINING = "compute-logs", "dagster-io", "training"
_RUN_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_CACHE_ENTRY = re.compile(r"[0-9a-f]{64}\.json|.*\.tmp")


@dataclass(frozen=True)
class Leftover:
    kind: str  # compute logs, IO pickles, training folders, pipeline checks
    path: Path
    freed: bool  # removed (or, in a dry run, would be)
    bytes: int
    reason: str


@dataclass(frozen=True)
class ActiveWork:
    """What Dagster is running now: run ids, and the partition keys of training runs."""

    run_ids: frozenset[str] = frozenset()
    training_keys: frozenset[str] = frozenset()


def newest_change(path: Path) -> float:
    """The newest mtime of `path` and everything below it (lstat, links not followed)."""
    newest = os.lstat(path).st_mtime
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):  # removed meanwhile
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
    return newest


def _entries(folder: Path) -> Iterator[os.DirEntry]:
    with os.scandir(folder) as it:
        yield from sorted(it, key=lambda e: e.name)


def collect_leftovers(
    work_root: Path,
    check_cache: Path,
    retention_days: float,
    active: ActiveWork | None,
    *,
    dry_run: bool = False,
    now: float | None = None,
) -> list[Leftover]:
    """Remove (unless `dry_run`) the leftovers above older than `retention_days`; one
    outcome per leftover looked at, kept ones with their reason. `active` None: which
    runs are active is not known, so only the pipeline-check cache is cleaned."""
    if retention_days < 0:
        raise ValueError(f"the retention must be >= 0 days, got {retention_days}")
    cutoff = (time.time() if now is None else now) - retention_days * 86400
    runs, training = (None, None) if active is None else (active.run_ids, active.training_keys)
    kinds = (
        ("compute logs", Path(work_root) / COMPUTE_LOGS, _RUN_ID, runs, True),
        ("IO pickles", Path(work_root) / IO_PICKLES, _RUN_ID, runs, True),
        ("training folders", Path(work_root) / TRAINING, None, training, True),
        ("pipeline checks", Path(check_cache), _CACHE_ENTRY, frozenset(), False),
    )
    outcomes: list[Leftover] = []
    for kind, top, name_rule, in_use, folders in kinds:
        if not os.path.lexists(top):
            continue
        if in_use is None:
            outcomes.append(Leftover(kind, top, False, 0, "skipped: which runs are active is not known here"))
            continue
        try:
            paths.real_folder(top, what=f"the {kind} folder")
        except paths.UnsafePathError as e:
            outcomes.append(Leftover(kind, top, False, 0, f"skipped: {e}"))
            continue
        for entry in _entries(top):
            outcome = _one(kind, Path(entry.path), entry, name_rule, in_use, folders, cutoff, dry_run)
            if outcome is not None:
                outcomes.append(outcome)
    return outcomes


def _one(kind, path: Path, entry: os.DirEntry, name_rule, in_use, folders: bool, cutoff, dry_run) -> Leftover | None:
    if name_rule is not None and not name_rule.fullmatch(entry.name):
        return None  # not ours by its name: left alone, not reported
    mode = entry.stat(follow_symlinks=False).st_mode
    if stat.S_ISLNK(mode):
        return Leftover(kind, path, False, 0, f"kept: a symbolic link to {os.readlink(path)}, never followed")
    if folders != stat.S_ISDIR(mode):
        return None
    if entry.name in in_use:
        return Leftover(kind, path, False, 0, "kept: its run is active")
    age_days = (cutoff - newest_change(path)) / 86400
    if age_days < 0:
        return Leftover(kind, path, False, 0, "kept: changed within the retention")
    size = freed_bytes([path]) if folders else os.lstat(path).st_size
    if not dry_run:
        if folders:
            shutil.rmtree(path)  # never follows a link inside (fd-based on Linux)
        else:
            path.unlink()
    return Leftover(kind, path, True, size, "past the retention")


def report_lines(outcomes: list[Leftover], *, dry_run: bool) -> list[str]:
    """One line per kind: how many were freed and kept, and every skipped folder's reason."""
    verb = "would free" if dry_run else "freed"
    lines = []
    for kind in dict.fromkeys(o.kind for o in outcomes):
        mine = [o for o in outcomes if o.kind == kind]
        freed = [o for o in mine if o.freed]
        total = sum(o.bytes for o in freed)
        lines.append(f"{kind}: {verb} {human_bytes(total)} in {len(freed)}, kept {len(mine) - len(freed)}")
        lines += [f"  {o.path}: {o.reason}" for o in mine if o.reason.startswith(("skipped", "kept: a symbolic"))]
    return lines
