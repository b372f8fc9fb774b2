"""One streaming merge of per-batch CellProfiler ExportToSpreadsheet CSVs into Parquet.

Used by `cpp-dagster merge SRC DEST`, by each batch step to convert its own tables, and
by the feature-table asset through `batch_tables` (which concatenates those).

- One Parquet per object table (`<prefix>Image.csv` -> `Image.parquet`, any prefix).
- Rows of different batches never collide: `Metadata_CPP_Batch` (the batch folder's name)
  and `Metadata_CPP_ImageKey` (= batch number * 1,000,000 + ImageNumber, unique on the plate;
  the batch number is the one in `batch_NNNN`, else the folder's position)
  are added to every table (names in `columns.py`). CellProfiler's `Metadata_*` columns are
  kept as it wrote them, a JUMP `Metadata_Batch` included: the added names never collide.
- Schema drift between batches (the rule): the merged table has the union of the
  batches' columns, in order of first appearance; a column missing from a batch is null
  there. A column is text if any batch has text in it; otherwise it is numeric
  (an all-empty column in one batch takes the type the other batches give it).
  Numeric columns are float32, except ImageNumber/ObjectNumber and CellProfiler's
  integer bookkeeping columns, which stay int64. `nan` is read as null.
- A batch table of 0 bytes, or an Image table with a header but zero rows, is a MergeError
  that names the batch and the file; an object table with a header only is zero objects.
- The Experiment table (run-level key/value) is kept once, from the first batch.
- Files other than the tables (QC images, ICF .npy) are copied into the destination.
- Memory is bounded by one Parquet row group (`table_writers.ROW_GROUP_BYTES` of
  values) and a few CSV blocks per table being merged (up to MERGE_WORKERS at once),
  not by the plate: batches are streamed.
- DEST switches as a whole (`results_folder`): everything is written into a staging
  folder beside it, and DEST (a link) then points at the new version in one rename, so
  a reader, or a merge killed at any moment, never leaves a mix of old and new tables.
  The files a merge wrote are listed in DEST's `.merged-files.json`; the new version
  keeps the previous version's files except those (a table the pipeline no longer
  exports is gone). Merges that share DEST (the sub-analyses of one analysis) keep a
  manifest each (`manifest=`), so one never removes another's files (e.g. the
  ICF_<dye>.npy files of an illumination step).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from cpp_dagster import paths
from cpp_dagster.features import provenance as provenance_record
from cpp_dagster.features import results_folder
from cpp_dagster.features.columns import BATCH_COLUMN, IMAGE_KEY_COLUMN, IMAGE_KEY_STRIDE
from cpp_dagster.features.schema import (
    BLOCK_SIZE,
    NULL_VALUES,
    SchemaError,
    _read_type,
    probe_schema,
    scan_schema,
    shared_schemas,
    unified_schema,
)
from cpp_dagster.features.table_writers import RowGroupWriter, TableWriter

EXPERIMENT = "Experiment"
# Tables merged at once. Not one per core: a plate's three big object tables on two
# cores left one core idle while the third ran alone (plate benchmark: 26 s with 2,
# 20 s with 4, the same CPU time).
MERGE_WORKERS = 4
MANIFEST = ".merged-files.json"  # in DEST: the files the last merge wrote, relative to DEST


class MergeError(SchemaError):
    """The batches' outputs cannot be merged as they are; the message names the file."""


@dataclass(frozen=True)
class MergedTable:
    name: str
    path: Path
    rows: int
    columns: int
    drift: tuple[str, ...] = ()  # columns not present in every batch
    schema: pa.Schema | None = field(default=None, compare=False, repr=False)  # as written, when known


@dataclass(frozen=True)
class MergeResult:
    tables: dict[str, MergedTable]
    files: list[Path]  # every file written or copied into DEST


def regular_file(path: Path, batch: str) -> Path:
    """`path` once it is a regular file: a batch output linking to /proc/self/environ
    never becomes a file in results."""
    try:
        return paths.regular_file(path, f"{batch} wrote")
    except paths.UnsafePathError as e:
        raise MergeError(f"{e}: only regular files are merged; nothing was published") from None


def table_files(output_dir: Path) -> dict[str, Path]:
    """Object table name -> CSV in one batch's ExportToSpreadsheet output."""
    csvs = sorted(Path(output_dir).glob("*.csv"))
    for p in csvs:
        regular_file(p, Path(output_dir).name)
    # the shortest: with `MyExpt_Image` and `MyExpt_FilteredImage` the prefix is `MyExpt_`
    image = sorted((p for p in csvs if p.stem.endswith("Image")), key=lambda p: (len(p.stem), p.stem))
    prefix = image[0].stem[: -len("Image")] if image else None
    tables: dict[str, Path] = {}
    for p in csvs:
        if prefix is not None and p.stem.startswith(prefix):
            name = p.stem[len(prefix) :]
        else:
            name = p.stem.rsplit("_", 1)[-1]
        if name in tables:
            raise MergeError(f"{tables[name].name} and {p.name} in {output_dir} are both the {name!r} table")
        tables[name] = p
    return tables


def merge_table(
    name: str,
    sources: Sequence[tuple[int, str, Path]],
    dest_file: Path,
    *,
    keep_null: bool = False,
    writer: Callable[[Path, pa.Schema], TableWriter] | None = None,
    probe: Callable[[Path], pa.Schema] | None = None,
) -> MergedTable:
    """Stream one object table of every batch into one Parquet file at `dest_file`.
    `sources` are (batch number, batch name, csv path) in batch order. `keep_null`: see
    `unified_schema`; `writer`: what writes the file (default `RowGroupWriter`, Parquet);
    `probe`: a file's types from its first block (default `probe_schema`). A batch
    converted on its own (`batch_tables`) passes all three."""
    for _, batch, path in sources:
        _check_not_empty(name, batch, path)
    schemas = _probed((p for _, _, p in sources), probe or probe_schema)
    for (_, _, path), file_schema in zip(sources, schemas):
        if "ImageNumber" not in file_schema.names:
            raise MergeError(f"{path} has no ImageNumber column")
    try:
        return _write_table(
            name,
            sources,
            schemas,
            dest_file,
            late_type_change_ok=False,
            keep_null=keep_null,
            writer=writer or RowGroupWriter,
        )
    except _LateTypeChange:
        # the types of some column's first block do not hold for the whole file:
        # find the types from every row and write again
        schemas = shared_schemas(scan_schema(p) for _, _, p in sources)
        return _write_table(
            name,
            sources,
            schemas,
            dest_file,
            late_type_change_ok=True,
            keep_null=keep_null,
            writer=writer or RowGroupWriter,
        )


def _check_not_empty(name: str, batch: str, path: Path) -> None:
    """A 0-byte table (CellProfiler stopped before writing it, a full disk) is an error;
    so is an Image table with a header but zero rows (every batch has image sets). An
    object table with a header only is zero objects (a batch of empty wells), not an error."""
    try:
        size = path.stat().st_size
        head = b""
        if name == "Image" and size:
            with open(path, "rb") as f:
                head = f.read(min(size, 4 << 20))
    except OSError as e:
        raise MergeError(f"batch {batch}: cannot read its {name} table {path}: {e}") from None
    if size == 0:
        raise MergeError(
            f"batch {batch}: its {name} table {path} is empty (0 bytes, no header): "
            "CellProfiler did not finish writing it"
        )
    if len(head) == size and len([line for line in head.splitlines() if line.strip()]) < 2:
        raise MergeError(
            f"batch {batch}: its Image table {path} has a header but zero rows: CellProfiler processed no image set"
        )


def _probed(paths: Iterable[Path], probe: Callable[[Path], pa.Schema]) -> list[pa.Schema]:
    """Each file's schema from its first block, probed once per distinct header: the
    batches of a pipeline share their ~1,000 columns, and probing every file cost ~12%
    of the merge. A file whose values contradict the types of an earlier file with the
    same header (text in a column that was numeric there) makes the read fail with a
    conversion error, and `merge_table` then scans every file (`_LateTypeChange`)."""
    by_header: dict[bytes, pa.Schema] = {}
    schemas = []
    for path in paths:
        header = first_line(path)
        if header not in by_header:
            by_header[header] = probe(path)
        schemas.append(by_header[header])
    return schemas


def first_line(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.readline(1 << 20)
    except OSError as e:
        raise MergeError(f"cannot read {path}: {e}") from None


class _LateTypeChange(Exception):
    """A column's type from the first block does not hold for the whole file."""


_KEY_FIELDS = (pa.field(BATCH_COLUMN, pa.string()), pa.field(IMAGE_KEY_COLUMN, pa.int64()))


def keyed_schema(schema: pa.Schema) -> pa.Schema:
    """A merged table's schema: the batch key columns, then `schema`."""
    return schema.insert(0, _KEY_FIELDS[0]).insert(1, _KEY_FIELDS[1])


def _write_table(
    name: str,
    sources: Sequence[tuple[int, str, Path]],
    schemas: Sequence[pa.Schema],
    dest_file: Path,
    *,
    late_type_change_ok: bool,
    keep_null: bool,
    writer: Callable[[Path, pa.Schema], TableWriter],
) -> MergedTable:
    schema, drift = unified_schema(schemas, keep_null=keep_null)
    out_schema = keyed_schema(schema)
    plans: dict[int, tuple] = {}  # per distinct file schema
    with writer(dest_file, out_schema) as out:
        for source, file_schema in zip(sources, schemas):
            if id(file_schema) not in plans:
                plans[id(file_schema)] = read_plan(schema, file_schema, late_type_change_ok)
            for table in csv_tables(source, out_schema, plans[id(file_schema)], late_type_change_ok):
                out.add(table)
    return MergedTable(name, dest_file, out.rows, len(out_schema), drift, out_schema)


def csv_tables(
    source: tuple[int, str, Path], out_schema: pa.Schema, plan: tuple, late_type_change_ok: bool
) -> Iterator[pa.Table]:
    """One batch's CSV table, block by block, as tables of `out_schema` (the batch key
    columns added, the batch's columns placed by `plan`: see `read_plan`)."""
    number, batch, path = source
    column_types, position, take = plan
    types = out_schema.types[2:]
    try:
        for block in pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=BLOCK_SIZE),
            convert_options=pacsv.ConvertOptions(
                column_types=column_types, null_values=NULL_VALUES, strings_can_be_null=True
            ),
        ):
            n = block.num_rows
            if n == 0:
                continue
            image_number = block.column(position["ImageNumber"]).cast(pa.int64())
            key = pc.add(image_number, number * IMAGE_KEY_STRIDE)
            columns = [pa.array([batch] * n, pa.string()), key]
            for i, t in zip(take, types):
                columns.append(pa.nulls(n, t) if i is None else block.column(i))
            table = pa.Table.from_arrays(columns, names=out_schema.names)
            yield table.cast(out_schema) if late_type_change_ok else table
    except pa.ArrowInvalid as e:
        if "conversion error" in str(e) and not late_type_change_ok:
            raise _LateTypeChange() from e
        raise MergeError(f"cannot merge {path}: {e}") from None


def read_plan(schema: pa.Schema, file_schema: pa.Schema, late_type_change_ok: bool):
    """How to read a file with `file_schema` into the merged `schema`: the CSV reader's
    column types, the file's column positions, and the file column of each merged
    column (None: not in this file)."""
    # the CSV reader converts straight to the merged types (float32 included), so a
    # block needs no casts; after a late type change, columns are read as the full scan
    # found them (floats as float64) and cast
    merged_type = dict(zip(schema.names, schema.types))
    names = file_schema.names
    if late_type_change_ok:
        column_types = {n: _read_type(merged_type[n]) for n in names}
    else:
        column_types = {n: merged_type[n] for n in names}
    position = {n: i for i, n in enumerate(names)}
    return column_types, position, [position.get(n) for n in schema.names]


def batch_number(name: str, position: int) -> int:
    """The number in a planned batch's name (`batch_0003` -> 3), so a batch's image keys
    do not depend on which other batches are merged with it; else its position."""
    m = re.fullmatch(r"batch_(\d+)", name)
    return int(m.group(1)) if m else position


def merge_batches(
    batch_dirs: Sequence[Path],
    dest_dir: Path,
    *,
    manifest: str = MANIFEST,
    tables_dir: Path | None = None,
    replaces: Iterable[str] = (),
    owner: str = "merge",
    guard: Callable[[], AbstractContextManager] = contextlib.nullcontext,
    merge_one: Callable[[str, Sequence[tuple[int, str, Path]], Path], MergedTable] = merge_table,
    provenance: provenance_record.Provenance | None = None,
) -> MergeResult:
    """Merge the outputs of `batch_dirs` (each a folder of one batch's CellProfiler
    outputs, in batch order) into `dest_dir`, which switches to the new content as a
    whole (`results_folder`). `manifest`: the file in `dest_dir` that lists what this
    merge wrote (what a re-merge under the same name replaces). `tables_dir` (a folder
    inside `dest_dir`; default `dest_dir`): where the tables and the Experiment file go;
    the other files go to `dest_dir`. `replaces`: more files (relative to `dest_dir`) an
    earlier run of the same owner wrote from the old tables (derived tables) and that
    must not survive the switch. `owner`: who merges (one merge per owner at a time; its
    killed merges' staging is removed). `guard`: see `results_folder.switch`. `merge_one`:
    how one table is merged from its (batch number, batch name, CSV) sources (`merge_table`:
    the CSV route; `batch_tables` passes the route over the batches' converted Parquet).
    `provenance`: how the batches were made, written beside the tables in the same switch."""
    if not batch_dirs:
        raise MergeError("nothing to merge: no batch folders")
    per_batch = []
    for position, d in enumerate(batch_dirs):
        name = Path(d).name if Path(d).name != "output" else Path(d).parent.name
        per_batch.append((batch_number(name, position), name, Path(d)))
    if len({number for number, _, _ in per_batch}) != len(per_batch):
        raise MergeError(f"batch numbers are not unique: {[name for _, name, _ in per_batch]}")
    names: list[str] = []
    for _, _, d in per_batch:
        for name in table_files(d):
            if name not in names:
                names.append(name)
    dest_dir = Path(dest_dir)
    tables_dir = dest_dir if tables_dir is None else Path(tables_dir)
    if tables_dir != dest_dir and dest_dir.resolve() not in tables_dir.resolve().parents:
        raise MergeError(f"the tables folder {tables_dir} is not inside {dest_dir}")
    tables_rel = tables_dir.absolute().relative_to(dest_dir.absolute())
    staging = results_folder.new_staging(dest_dir, owner)
    try:
        tables: dict[str, MergedTable] = {}
        written: list[Path] = []  # relative to dest_dir
        (staging / tables_rel).mkdir(parents=True, exist_ok=True)
        files = [table_files(d) for _, _, d in per_batch]
        sources = {name: [(i, b, f[name]) for (i, b, _), f in zip(per_batch, files) if name in f] for name in names}
        if EXPERIMENT in sources:
            shutil.copyfile(sources.pop(EXPERIMENT)[0][2], staging / tables_rel / "Experiment.csv")
            written.append(tables_rel / "Experiment.csv")
        # Tables are independent and pyarrow parses and writes without the GIL: merge
        # them side by side (memory: one row-group buffer per worker).
        with ThreadPoolExecutor(max_workers=MERGE_WORKERS) as pool:
            merged = pool.map(lambda n: merge_one(n, sources[n], staging / tables_rel / f"{n}.parquet"), list(sources))
            for t in merged:
                rel = tables_rel / f"{t.name}.parquet"
                tables[t.name] = MergedTable(t.name, dest_dir / rel, t.rows, t.columns, t.drift)
                written.append(rel)
        written += _stage_other_files(per_batch, staging)
        if provenance is not None:
            staged = {str(rel): staging / rel for rel in written if rel.suffix in (".parquet", ".csv")}
            written += provenance_record.write(staging, provenance, staged)
        (staging / manifest).write_text(json.dumps({"files": sorted(map(str, written))}, indent=1))
        current = results_folder.current_version(dest_dir)
        previous = results_folder.manifest_files(current / manifest) if current is not None else set()
        results_folder.switch(dest_dir, staging, replaced=previous | set(replaces), guard=guard)
        return MergeResult(tables, [dest_dir / rel for rel in written])
    finally:
        results_folder.discard(staging)  # gone after a switch; a failed merge leaves nothing


def _stage_other_files(per_batch: Iterable[tuple[int, str, Path]], staging: Path) -> list[Path]:
    seen: dict[Path, str] = {}
    staged = []
    for _, batch, d in per_batch:
        for p in sorted(d.rglob("*")):  # rglob never enters a linked folder
            if p.is_dir() and not p.is_symlink() or p.suffix == ".csv" and p.parent == d:
                continue
            regular_file(p, batch)
            rel = p.relative_to(d)
            if rel in seen:
                raise MergeError(f"batches {seen[rel]} and {batch} both wrote {rel}")
            seen[rel] = batch
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, target)
            staged.append(rel)
    return staged
