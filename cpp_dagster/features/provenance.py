"""How a result was made, kept beside it: the work area (LoadData CSVs, CellProfiler's
logs, the pipeline as it ran) is deleted after the retention, and months later the lab
must still be able to say exactly how a table was made, and check it was not changed.

Each sub-analysis's merge writes `provenance/sub<id>/` into the results folder's staging
version, so it switches together with the tables (`results_folder`) and is listed in
imagedb's `result.file_list` like them; `gc` only ever cleans the work area.

    provenance/sub<id>/provenance.json   what ran: sub-analysis and analysis meta as planned,
                                         pipeline sha256, CellProfiler version and executable,
                                         the pod's image (Kubernetes), project version, Dagster
                                         run, per batch exit code / seconds / retries / log tail
    provenance/sub<id>/pipeline.cppipe   the pipeline file as it ran
    provenance/sub<id>/loaddata.tar.gz   every batch's LoadData CSV (batch_NNNN/loaddata.csv)
    provenance/sub<id>/images.csv.gz     the images the LoadData CSVs name: path, size, mtime
    provenance/sub<id>/SHA256SUMS        sha256 of each published table (`sha256sum -c` format,
                                         paths relative to the results folder)

`verify` re-reads the tables and reports each mismatch. Nothing here follows a link: a
provenance folder or checksum list that is a symlink is refused, not read through.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
import stat
import tarfile
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from cpp_dagster import paths

FOLDER = "provenance"
RECORD, PIPELINE, LOADDATA, IMAGES, SUMS = (
    "provenance.json",
    "pipeline.cppipe",
    "loaddata.tar.gz",
    "images.csv.gz",
    "SHA256SUMS",
)
LOG_TAIL_BYTES = 8 * 1024  # the end of each batch's CellProfiler log kept in provenance.json
MAX_RECORDED_PATH = 4096  # a longer path in a LoadData CSV is recorded truncated, not stat'ed


class ProvenanceError(paths.UnsafePathError):
    """A provenance folder that cannot be read as written (a link, missing, not JSON)."""


@dataclass(frozen=True)
class Provenance:
    """What the defs layer and the lifecycle know about a sub-analysis's run."""

    sub_id: int
    meta: Mapping  # sub-analysis and analysis as planned (JSON-able)
    pipeline: Path
    batch_dirs: Sequence[Path]  # work folders: loaddata.csv, cellprofiler.log, done.json
    cellprofiler: Mapping  # {"executable", "version"}
    runs: Sequence[Mapping] = ()  # Dagster runs: {"run_id", "started", ...}
    retries: Mapping[str, int] | None = None  # batch name -> step retries
    image: str | None = None  # the pod's image reference on Kubernetes


def folder_of(sub_id: int) -> Path:
    """Provenance folder of a sub-analysis, relative to the results folder."""
    return Path(FOLDER) / f"sub{int(sub_id)}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def project_version() -> str:
    try:
        return metadata.version("cpp-dagster")
    except metadata.PackageNotFoundError:
        return "unknown"


def write(staging: Path, record: Provenance, tables: Mapping[str, Path]) -> list[Path]:
    """Write the provenance of `record` into `staging` (the results folder's next version);
    `tables`: published path relative to the folder -> staged file. Returns the files
    written, relative to the folder."""
    rel = folder_of(record.sub_id)
    out = staging / rel
    out.mkdir(parents=True, exist_ok=True)
    pipeline_bytes = Path(record.pipeline).read_bytes()
    (out / PIPELINE).write_bytes(pipeline_bytes)
    loaddata = [Path(d) / "loaddata.csv" for d in record.batch_dirs]
    _write_loaddata(out / LOADDATA, loaddata)
    images = _write_images(out / IMAGES, loaddata)
    retries = record.retries or {}
    doc = {
        "format": 1,
        "written": datetime.now(UTC).isoformat(timespec="seconds"),
        "sub_analysis": record.sub_id,
        "meta": record.meta,
        "pipeline": {"file": PIPELINE, "source": str(record.pipeline), "sha256": _sha(pipeline_bytes)},
        "cellprofiler": dict(record.cellprofiler),
        "image": record.image,
        "project_version": project_version(),
        "dagster_runs": [dict(r) for r in record.runs],
        "batches": [_batch(Path(d), retries.get(Path(d).name, 0)) for d in record.batch_dirs],
        "loaddata": LOADDATA,
        "images": {"file": IMAGES, "count": images},
        "tables": SUMS,
    }
    (out / RECORD).write_text(json.dumps(doc, indent=1, default=str))
    (out / SUMS).write_text("".join(f"{sha256_file(p)}  {name}\n" for name, p in sorted(tables.items())))
    return [rel / name for name in (RECORD, PIPELINE, LOADDATA, IMAGES, SUMS)]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_loaddata(dest: Path, csvs: Iterable[Path]) -> None:
    with tarfile.open(dest, "w:gz") as tar:
        for p in csvs:
            paths.regular_file(p, "a batch's LoadData CSV")  # never a link planted in the work area
            tar.add(p, arcname=f"{p.parent.name}/{p.name}", recursive=False)


def _write_images(dest: Path, csvs: Iterable[Path]) -> int:
    """path,size,mtime of each image the CSVs name (blank size: not found). A row the csv
    module cannot read (a field over its limit) is recorded as such, and the rest is read."""
    seen: set[str] = set()
    with gzip.open(dest, "wt", newline="") as f:
        out = csv.writer(f)
        out.writerow(["path", "size", "mtime"])
        for p in csvs:
            with open(p, newline="") as src:
                for image in _images_in(p, csv.reader(src)):
                    if image not in seen:
                        seen.add(image)
                        out.writerow(_image_row(image))
    return len(seen)


def _images_in(path: Path, rows) -> Iterator[str]:
    header: list[str] | None = None
    pairs: list[tuple[int, int]] = []
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except csv.Error as e:
            yield f"(unreadable row {rows.line_num} of {path.parent.name}/{path.name}: {e})"
            continue
        if header is None:
            header = row
            pairs = [
                (header.index("PathName_" + h[len("FileName_") :]), i)
                for i, h in enumerate(header)
                if h.startswith("FileName_") and "PathName_" + h[len("FileName_") :] in header
            ]
            continue
        for pi, fi in pairs:
            if max(pi, fi) < len(row):
                yield os.path.join(row[pi], row[fi])


def _image_row(image: str) -> list:
    if image.startswith("(unreadable row"):
        return [image, "", ""]
    if len(image) > MAX_RECORDED_PATH:
        return [image[:MAX_RECORDED_PATH] + "...(truncated)", "", ""]
    try:
        st = os.stat(image)
    except (OSError, ValueError):
        return [image, "", ""]
    return [image, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC).isoformat(timespec="seconds")]


def _batch(batch_dir: Path, retries: int) -> dict:
    entry: dict = {"batch": batch_dir.name, "retries": retries}
    try:
        outcome = json.loads((batch_dir / "done.json").read_text())["outcome"]
        entry.update(exit_code=outcome.get("exit_code"), seconds=outcome.get("seconds"))
        entry.update(image_sets=outcome.get("image_sets"), reused=outcome.get("reused", False))
    except (OSError, ValueError, KeyError, TypeError):
        entry["exit_code"] = None
    entry["command"] = _first_line(batch_dir / "cellprofiler.log")  # `$ <cellprofiler> -c -r ...` as it ran
    entry["log_tail"] = _tail(batch_dir / "cellprofiler.log")
    return entry


def _first_line(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            return f.readline(MAX_RECORDED_PATH).decode("utf-8", "replace").rstrip("\n")
    except OSError:
        return ""


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - LOG_TAIL_BYTES))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def add_checksum(version: Path, sub_id: int, name: str, file: Path) -> None:
    """Record a table published after the merge (`name` relative to the folder), in the
    sub-analysis's SHA256SUMS in `version` (atomically: a reader sees the old list or the new)."""
    sums = version / folder_of(sub_id) / SUMS
    for folder in (version / FOLDER, sums.parent):
        _refuse_link(folder)
    sums.parent.mkdir(parents=True, exist_ok=True)
    lines = [line for line in _read_sums(sums) if line[1] != name] + [(sha256_file(file), name)]
    tmp = sums.with_name(f".{SUMS}.{uuid.uuid4().hex}.tmp")
    tmp.write_text("".join(f"{h}  {n}\n" for h, n in sorted(lines, key=lambda x: x[1])))
    os.replace(tmp, sums)


def _read_sums(sums: Path) -> list[tuple[str, str]]:
    _refuse_link(sums)  # a dangling link too: never an empty list that verifies
    if not sums.exists():
        return []
    out = []
    for line in sums.read_text().splitlines():
        digest, _, name = line.partition("  ")
        if digest and name:
            out.append((digest, name))
    return out


def _refuse_link(path: Path) -> None:
    if path.is_symlink() or (path.exists() and not stat.S_ISREG(os.lstat(path).st_mode) and not path.is_dir()):
        raise ProvenanceError(f"{path} is a link or not a regular file: provenance is never read through a link")


@dataclass(frozen=True)
class Check:
    sub_folder: Path
    record: dict
    ok: list[str]
    mismatched: list[str]
    missing: list[str]


def verify(result_folder: Path) -> list[Check]:
    """Each sub-analysis's provenance in `result_folder`, its tables checked against SHA256SUMS."""
    result_folder = Path(result_folder)
    root = result_folder / FOLDER
    _refuse_link(root)
    if not root.is_dir():
        raise ProvenanceError(f"{result_folder} has no {FOLDER}/ folder: no provenance was recorded there")
    checks = []
    for sub in sorted(p for p in root.iterdir() if p.name.startswith("sub")):
        _refuse_link(sub)
        _refuse_link(sub / RECORD)
        try:
            record = json.loads((sub / RECORD).read_text())
        except (OSError, ValueError) as e:
            raise ProvenanceError(f"{sub / RECORD} cannot be read: {e}") from None
        ok, bad, missing = [], [], []
        if not (sub / SUMS).exists():
            missing.append(f"{FOLDER}/{sub.name}/{SUMS}")  # no checksums: nothing can be said verified
        for digest, name in _read_sums(sub / SUMS):
            table = result_folder / name
            if ".." in Path(name).parts or Path(name).is_absolute():
                bad.append(name)
            elif not table.is_file() or table.is_symlink():
                missing.append(name)
            elif sha256_file(table) != digest:
                bad.append(name)
            else:
                ok.append(name)
        checks.append(Check(sub, record, ok, bad, missing))
    return checks


def summary_lines(check: Check) -> list[str]:
    r = check.record
    cp = r.get("cellprofiler") or {}
    runs = ", ".join(f"{x.get('run_id')} (started {x.get('started')})" for x in r.get("dagster_runs") or []) or "-"
    batches = r.get("batches") or []
    failed = [b["batch"] for b in batches if b.get("exit_code") not in (0, None)]
    lines = [
        f"{check.sub_folder.name}: written {r.get('written')}, cpp-dagster {r.get('project_version')}",
        f"  pipeline     {(r.get('meta') or {}).get('pipeline_file')}  sha256 {(r.get('pipeline') or {}).get('sha256')}",
        f"  CellProfiler {cp.get('version')} ({cp.get('executable')}); image {r.get('image') or '-'}",
        f"  Dagster runs {runs}",
        f"  batches      {len(batches)} ({sum(b.get('retries', 0) for b in batches)} retries; "
        f"non-zero exit: {', '.join(failed) or 'none'}); images {(r.get('images') or {}).get('count')}",
        f"  tables       {len(check.ok)} verified",
    ]
    lines += [f"  CHANGED      {n}: its sha256 is not the one published" for n in check.mismatched]
    lines += [f"  MISSING      {n}" for n in check.missing]
    return lines
