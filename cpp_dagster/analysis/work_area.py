"""Cleaning the shared work area (`cpp-dagster gc`): the batch folders of a sub-analysis
(LoadData CSVs, CellProfiler's CSVs and logs, the converted Parquet) are removed once it
has finished, its tables are in the results folder, and the retention has run out
(`CPP_WORK_RETENTION_DAYS`, default 7, counted from its finish).

- A running or submitted sub-analysis (a re-run requested included) is never touched.
- A failed one keeps its work area: its verified batches are what a re-run reuses. Once
  re-run and finished, it is cleaned like any finished one. `expire_failed=True`
  (`cpp-dagster gc --expire-failed`) also removes a failed one's folders once the
  retention has run out since its failure.
- A finished one whose recorded tables are not all in the results folder is kept.
- Each sub-analysis's row is held locked while its folders are removed (a `cpp-dagster
  rerun` waits), and only the generation folders `g0..g<generation>` it had then go.
  Two gc at once (a nightly job and a hand-run one) each wait for the row: the second
  finds the folder gone and says so, rather than crashing.
- A folder under the work root that is not `sub_<id>`, or whose id has no row in imagedb,
  is left alone.

Freed bytes count each file once (hard links between generations) and only when every
link to it is removed.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cpp_dagster import paths
from cpp_dagster.imagedb.store import ImageDB
from cpp_dagster.imagedb.work_area import WorkAreaState

_SUB_FOLDER = re.compile(r"sub_([0-9]{1,9})")
_GENERATION_FOLDER = re.compile(r"g([0-9]{1,9})")


@dataclass(frozen=True)
class WorkAreaOutcome:
    sub_id: int
    folder: Path
    state: str  # finished, failed, running, submitted, unknown (no row in imagedb)
    freed: bool  # removed (or, in a dry run, would be)
    bytes: int  # freed (or that would be freed); 0 when kept
    reason: str  # why it was kept or freed, for the scientist reading the output


def collect(
    db: ImageDB,
    work_root: Path,
    nas_root: Path,
    retention_days: float,
    *,
    dry_run: bool = False,
    expire_failed: bool = False,
) -> list[WorkAreaOutcome]:
    """Clean the work area under `work_root` by the rules above; one outcome per
    sub-analysis folder, in sub-analysis order. `dry_run`: remove nothing, report what
    would go."""
    if retention_days < 0:
        raise ValueError(f"the retention must be >= 0 days, got {retention_days}")
    work_root = Path(work_root)
    folders = {}
    for p in sorted(work_root.iterdir()) if work_root.is_dir() else []:
        m = _SUB_FOLDER.fullmatch(p.name)
        if m and p.is_dir() and not p.is_symlink():
            folders[int(m.group(1))] = paths.under(work_root, p.name, what="work folder")
    states = db.work_area_states(sorted(folders), retention_days)
    removable = ("finished", "failed") if expire_failed else ("finished",)
    outcomes = []
    for sub_id, folder in sorted(folders.items()):
        state = states.get(sub_id)
        keep = _keep_reason(state, retention_days, nas_root, removable)
        if keep is not None:
            outcomes.append(WorkAreaOutcome(sub_id, folder, state.state if state else "unknown", False, 0, keep))
            continue
        with db.while_work_area_expired(sub_id, retention_days, removable) as now:
            if now is None:  # changed since it was listed (a re-run): left alone
                outcomes.append(
                    WorkAreaOutcome(
                        sub_id, folder, state.state, False, 0, "its state changed while the work area was cleaned"
                    )
                )
                continue
            if not folder.is_dir():  # another gc removed it while this one waited for the row
                outcomes.append(
                    WorkAreaOutcome(
                        sub_id, folder, now.state, False, 0, "already cleaned by another gc at the same time"
                    )
                )
                continue
            generations = _generation_folders(folder, now.generation)
            freed = freed_bytes(generations)
            if not dry_run:
                for g in generations:
                    shutil.rmtree(g)
                if not any(folder.iterdir()):
                    folder.rmdir()
        days = now.age.total_seconds() / 86400 if now.age is not None else 0.0
        outcomes.append(WorkAreaOutcome(sub_id, folder, now.state, True, freed, f"{now.state} {days:.1f} days ago"))
    return outcomes


def _keep_reason(
    state: WorkAreaState | None, retention_days: float, nas_root: Path, removable: tuple[str, ...]
) -> str | None:
    """Why a sub-analysis's work area stays; None if it may go."""
    if state is None:
        return "no such sub-analysis in imagedb"
    if state.state in ("running", "submitted"):
        return f"{state.state}: its batches are in use"
    if state.state == "failed" and "failed" not in removable:
        return "failed: kept for a re-run, which reuses its finished batches"
    if not state.expired:
        return f"{state.state} less than {retention_days:g} days ago"
    if state.state == "finished":
        missing = _missing_tables(state.result, nas_root)
        if missing:
            return f"finished, but its tables are not in the results folder: {', '.join(missing)}"
    return None


def _missing_tables(result, nas_root: Path) -> list[str]:
    """The Parquet tables in a finished sub-analysis's `result.file_list` that are not files."""
    files = result.get("file_list") if isinstance(result, dict) else None
    if not isinstance(files, list):
        return ["(no file list recorded)"]
    missing = []
    for f in files:
        if isinstance(f, str) and f.endswith(".parquet"):
            try:
                present = paths.under_relative(nas_root, f, what="recorded table").is_file()
            except ValueError:
                present = False
            if not present:
                missing.append(f)
    return missing


def _generation_folders(folder: Path, generation: int) -> list[Path]:
    """`g0..g<generation>` in a sub-analysis's folder (a later one is a run not yet recorded)."""
    out = []
    for p in sorted(folder.iterdir()):
        m = _GENERATION_FOLDER.fullmatch(p.name)
        if m and int(m.group(1)) <= generation and p.is_dir() and not p.is_symlink():
            out.append(p)
    return out


def freed_bytes(folders: Iterable[Path]) -> int:
    """Bytes that removing `folders` gives back: each file once, and only when all its
    links are inside them."""
    seen: dict[tuple[int, int], list] = {}
    for folder in folders:
        for root, _, files in os.walk(folder):
            for name in files:
                st = os.lstat(os.path.join(root, name))
                entry = seen.setdefault((st.st_dev, st.st_ino), [0, st.st_nlink, st.st_size])
                entry[0] += 1
    return sum(size for links, nlink, size in seen.values() if links >= nlink)


def report_lines(outcomes: list[WorkAreaOutcome], *, dry_run: bool) -> list[str]:
    """What `cpp-dagster gc` prints: one line per sub-analysis, then the total."""
    verb = "would free" if dry_run else "freed"
    lines = [
        f"sub-analysis {o.sub_id}: {verb} {human_bytes(o.bytes)} ({o.bytes} bytes; {o.reason})"
        if o.freed
        else f"sub-analysis {o.sub_id}: kept ({o.reason})"
        for o in outcomes
    ]
    total = sum(o.bytes for o in outcomes)
    count = sum(o.freed for o in outcomes)
    lines.append(f"{verb} {human_bytes(total)} ({total} bytes) of {count} sub-analyses' work areas")
    return lines


def human_bytes(n: float) -> str:
    """`3.4 GB` (decimal units, as `df -H` prints them)."""
    if n < 1000:
        return f"{int(n)} bytes"
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")
