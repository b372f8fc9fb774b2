"""Each batch's tables converted in the batch step; the final merge concatenates them
into the Parquet feature tables (no CSV parsing after the last batch).

- `convert_batch(batch_dir)`: once CellProfiler's outputs in `batch_dir/output/` are
  verified, each table's CSV becomes `batch_dir/tables/<table>.arrow` by the merge's
  own rules (`merge.merge_table` on one batch): float32, integer bookkeeping columns
  int64, `nan` as null, the batch key columns added. A column with no value in the batch
  stays of type null, so the final merge types it as the CSV route does. The tables are
  written into `tables.partial-<id>/` and renamed: a killed conversion never leaves a
  half table under `tables/`. The tables are converted one after another (batches
  convert side by side). The types of a CSV header are probed once per run and shared
  through `.probes/` beside the batch folders (`shared_probe`). `tables/complete.json`
  lists each table's file, its size, rows and schema key, the CSV it came from with its
  size, and the batch number its image keys use.
  The files are Arrow IPC, not Parquet: read once, by the final merge, they cost
  almost nothing to write and read, where Parquet's fixed cost per column chunk made
  the final merge slower than the CSV merge (`table_writers`).
- `converted(batch_dir, number)`: a conversion that is complete and still matches the
  CSVs in `output/`, else None (checked by `stat` alone).
- `merge_converted(batch_dirs, dest_dir, ...)`: the sub-analysis's merge. A batch without
  a complete conversion (a work area from before this route, a killed batch step) is
  converted here first. Each table is then written by streaming the batches' record batches,
  the schemas unified by the drift rule of `schema.unified_schema`: the same columns,
  types and values as `merge.merge_batches` over the CSVs. One case reads the CSV again:
  a column that is text in another batch but numeric in this one (the CSV route keeps
  this batch's values as written, e.g. `0.50`, which its float32 no longer knows).
- `reuse_converted(earlier, batch_dir)`: an earlier generation's conversion of the same
  batch, hard-linked (re-run reuse).

Memory: one row group per table being written (`table_writers.RowGroupWriter`), up
to `merge.MERGE_WORKERS` tables at once. The final merge memory-maps the converted
files: their record batches go to the Parquet writer without a copy (reading them into
memory was a quarter of its CPU), and the pages of a file are let go once its row group
is written.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from cpp_dagster.features import results_folder
from cpp_dagster.features.merge import (
    EXPERIMENT,
    MergedTable,
    MergeError,
    MergeResult,
    batch_number,
    csv_tables,
    first_line,
    keyed_schema,
    merge_batches,
    merge_table,
    read_plan,
    table_files,
)
from cpp_dagster.features.schema import probe_schema, scan_schema, unified_schema
from cpp_dagster.features.table_writers import ArrowFileWriter, RowGroupWriter

OUTPUT = "output"  # a batch's CellProfiler outputs, in its work folder
TABLES = "tables"  # its converted tables, beside them
COMPLETE = "complete.json"  # in TABLES: written last, what a complete conversion holds
KEY_COLUMNS = 2  # the batch key columns every converted table starts with (merge.keyed_schema)
PROBES = ".probes"  # beside a run's batch folders: the types probed from each distinct CSV header


def convert_batch(batch_dir: Path, number: int | None = None) -> dict[str, Path]:
    """Convert the tables in `batch_dir/output/` to `batch_dir/tables/` (atomically, see
    above); returns table name -> converted file. `number`: the batch number of its image keys
    (default: the one in the folder's name, `batch_0003` -> 3). MergeError names the file
    for a table that cannot be converted (0 bytes, no ImageNumber, an Image table without
    rows)."""
    batch_dir = Path(batch_dir)
    name = batch_dir.name
    number = batch_number(name, 0) if number is None else number
    _remove_leftovers(batch_dir)
    sources = {t: p for t, p in table_files(batch_dir / OUTPUT).items() if t != EXPERIMENT}
    staging = batch_dir / f"{TABLES}.partial-{uuid.uuid4().hex}"
    staging.mkdir()
    probe = functools.partial(shared_probe, cache=batch_dir.parent / PROBES)
    try:
        # one table after another: batches convert side by side (pods, or local
        # processes), and threads here cost ~20% more CPU for the same tables
        # (plate benchmark, 2 batches at once on 2 cores: 22.5 s CPU, 27 s with 4 threads)
        written = [
            merge_table(
                t, [(number, name, path)], staging / f"{t}.arrow", keep_null=True, writer=ArrowFileWriter, probe=probe
            )
            for t, path in sources.items()
        ]
        complete = {
            "batch": name,
            "number": number,
            "tables": {
                t.name: {
                    "file": t.path.name,
                    "bytes": t.path.stat().st_size,
                    "rows": t.rows,
                    "schema": _schema_key(t.schema),
                    "csv": sources[t.name].name,
                    "csv_bytes": sources[t.name].stat().st_size,
                }
                for t in written
            },
        }
        (staging / COMPLETE).write_text(json.dumps(complete, indent=1))
        _publish(staging, batch_dir / TABLES)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {t.name: batch_dir / TABLES / t.path.name for t in written}


def shared_probe(path: Path, cache: Path) -> pa.Schema:
    """A CSV's types from its first block, as `merge_table` probes them, shared by the
    batches of a run through `cache` (a folder beside them): the CSV merge probes one file
    per distinct header, and probing every batch's files cost ~20% of the conversion.
    As in the CSV merge, a file whose values contradict the shared types is scanned
    whole (`merge_table`). A probe with a column that has no value yet is not shared (a
    batch of empty wells would make every other batch scan its files)."""
    key = hashlib.sha256(first_line(path)).hexdigest()[:32]
    shared = cache / f"{key}.schema"
    try:
        return pa.ipc.read_schema(pa.py_buffer(shared.read_bytes()))
    except (OSError, pa.ArrowException):
        pass
    schema = probe_schema(path)
    if not any(pa.types.is_null(f.type) for f in schema):
        tmp = cache / f".{key}.{uuid.uuid4().hex}.tmp"
        try:
            cache.mkdir(exist_ok=True)
            tmp.write_bytes(schema.serialize().to_pybytes())
            os.replace(tmp, shared)
        except OSError:
            tmp.unlink(missing_ok=True)  # not shared: each batch probes its own
    return schema


@dataclass(frozen=True)
class ConvertedTable:
    """One table of a batch's conversion, as its `complete.json` lists it."""

    path: Path
    rows: int
    schema_key: str  # the same for batches whose tables have the same columns and types


def converted(batch_dir: Path, number: int | None = None) -> dict[str, Path] | None:
    """Table name -> file of the batch's conversion, if it is complete and made from the
    CSVs now in `output/`; else None (see `_conversion`)."""
    tables = _conversion(Path(batch_dir), number)
    return None if tables is None else {name: t.path for name, t in tables.items()}


def _conversion(batch_dir: Path, number: int | None = None) -> dict[str, ConvertedTable] | None:
    """The batch's conversion, if `complete.json` is in place and matches: the same
    tables as the CSVs in `output/`, each made from a CSV of the size it has now, the same
    batch number, every file of the size it was written with. Only `stat`s: opening each
    file (its ~1,000-column schema) cost a tenth of the final merge on 96 batches; a
    file whose rows do not match is caught while the merge reads it."""
    number = batch_number(batch_dir.name, 0) if number is None else number
    folder = batch_dir / TABLES
    try:
        complete = json.loads((folder / COMPLETE).read_text())
        if complete["number"] != number or complete["batch"] != batch_dir.name:
            return None
        sources = {t: p for t, p in table_files(batch_dir / OUTPUT).items() if t != EXPERIMENT}
        tables = complete["tables"]
        if set(tables) != set(sources):
            return None
        out = {}
        for name, t in tables.items():
            path = folder / t["file"]
            if (
                t["csv"] != sources[name].name
                or t["csv_bytes"] != sources[name].stat().st_size
                or path.stat().st_size != t["bytes"]
            ):
                return None
            out[name] = ConvertedTable(path, int(t["rows"]), str(t["schema"]))
        return out
    except (OSError, ValueError, KeyError, TypeError, MergeError):
        return None


def _schema_key(schema: pa.Schema) -> str:
    return hashlib.sha256(schema.serialize().to_pybytes()).hexdigest()[:32]


def reuse_converted(earlier: Path, batch_dir: Path) -> dict[str, Path] | None:
    """Link the conversion of the same batch in an earlier generation's folder into
    `batch_dir` (whose `output/` holds links to the same CSVs); None when that one is not
    complete (the caller converts)."""
    earlier, batch_dir = Path(earlier), Path(batch_dir)
    if _conversion(earlier) is None:
        return None
    _remove_leftovers(batch_dir)
    staging = batch_dir / f"{TABLES}.partial-{uuid.uuid4().hex}"
    try:
        shutil.copytree(earlier / TABLES, staging, copy_function=results_folder.link_or_copy)
        _publish(staging, batch_dir / TABLES)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return converted(batch_dir)


def merge_converted(batch_dirs: Sequence[Path], dest_dir: Path, **options) -> MergeResult:
    """`merge.merge_batches` (same `options`) over the batches' converted tables: each
    batch work folder's `output/` gives the Experiment table and the other files, its
    `tables/` the tables. A batch without a complete conversion is converted first."""
    batch_dirs = [Path(d) for d in batch_dirs]
    tables: dict[str, dict[str, ConvertedTable]] = {}
    for position, d in enumerate(batch_dirs):
        number = batch_number(d.name, position)
        found = _conversion(d, number)
        if found is None:
            convert_batch(d, number)
            found = _conversion(d, number)
        if found is None:
            raise MergeError(f"batch {d.name}: its tables were converted but do not match its CSVs")
        tables[d.name] = found
    return merge_batches(
        [d / OUTPUT for d in batch_dirs],
        dest_dir,
        merge_one=functools.partial(concat_table, converted=tables),
        **options,
    )


def concat_table(
    name: str,
    sources: Sequence[tuple[int, str, Path]],
    dest_file: Path,
    *,
    converted: dict[str, dict[str, ConvertedTable]],
) -> MergedTable:
    """One table of every batch, from their converted files, into `dest_file` (Parquet).
    `sources`: (batch number, batch name, CSV) in batch order, as `merge.merge_table` takes.
    Each file's schema is read once per distinct schema; the files are memory-mapped,
    so their record batches go to the Parquet writer without a copy."""
    files = [converted[batch][name] for _, batch, _ in sources]
    by_key: dict[str, pa.Schema] = {}
    for f in files:
        if f.schema_key not in by_key:
            by_key[f.schema_key] = _value_schema(f.path)
    schemas = [by_key[f.schema_key] for f in files]
    schema, drift = unified_schema(schemas)
    out_schema = keyed_schema(schema)
    # per distinct schema: whether the CSV route is needed, and the file's own keyed schema
    loses_text = {key: _loses_text(schema, file_schema) for key, file_schema in by_key.items()}
    written_as = {key: keyed_schema(file_schema) for key, file_schema in by_key.items()}
    with RowGroupWriter(dest_file, out_schema) as writer:
        for source, file in zip(sources, files):
            if loses_text[file.schema_key]:
                for table in _csv_route(source, schema):
                    writer.add(table)
                continue
            rows = 0
            with pa.memory_map(str(file.path)) as f, pa.ipc.open_file(f) as batch:
                if not batch.schema.equals(written_as[file.schema_key]):
                    raise MergeError(
                        f"the converted table {file.path} is not the one its batch's "
                        f"{COMPLETE} lists: remove {file.path.parent} to convert the batch again"
                    )
                for i in range(batch.num_record_batches):
                    record_batch = batch.get_batch(i)
                    rows += record_batch.num_rows
                    writer.add(_conform(pa.Table.from_batches([record_batch]), out_schema))
            if rows != file.rows:
                raise MergeError(
                    f"the converted table {file.path} has {rows} rows, its batch's {COMPLETE} "
                    f"says {file.rows}: remove {file.path.parent} to convert the batch again"
                )
    return MergedTable(name, dest_file, writer.rows, len(out_schema), drift)


def _value_schema(path: Path) -> pa.Schema:
    """A converted table's columns after the batch key columns."""
    try:
        with pa.memory_map(str(path)) as source, pa.ipc.open_file(source) as reader:
            schema = reader.schema
    except (OSError, pa.ArrowException) as e:
        raise MergeError(f"cannot read the converted table {path}: {e}") from None
    return pa.schema(list(schema)[KEY_COLUMNS:])


def _loses_text(schema: pa.Schema, file_schema: pa.Schema) -> bool:
    """Whether a column that is text in the merged table is numeric in this batch."""
    text = {name for name, t in zip(schema.names, schema.types) if pa.types.is_string(t)}
    return any(
        name in text and not (pa.types.is_string(t) or pa.types.is_null(t))
        for name, t in zip(file_schema.names, file_schema.types)
    )


def _csv_route(source: tuple[int, str, Path], schema: pa.Schema):
    """The batch's table read from its CSV into the merged `schema`, as the CSV route
    does (the file's own types from every row, so no type changes late in the file)."""
    number, batch, path = source
    try:
        file_schema = scan_schema(path)
    except (OSError, pa.ArrowException) as e:
        raise MergeError(f"cannot merge {path}: {e}") from None
    yield from csv_tables(source, keyed_schema(schema), read_plan(schema, file_schema, False), True)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A batch's record batch in the merged `schema`: its columns cast (int64 or null to
    float32, null to text: exact), the columns it lacks as nulls."""
    if table.schema.equals(schema):
        return table
    position = {n: i for i, n in enumerate(table.schema.names)}
    columns = []
    for f in schema:
        i = position.get(f.name)
        if i is None:
            columns.append(pa.nulls(table.num_rows, f.type))
        else:
            column = table.column(i)
            columns.append(column if column.type == f.type else column.cast(f.type, safe=False))
    return pa.Table.from_arrays(columns, schema=schema)


def _publish(staging: Path, final: Path) -> None:
    """`staging` becomes `final` in one rename (an older `final` is moved away first)."""
    old = None
    if final.exists():
        old = final.with_name(f"{final.name}.old-{uuid.uuid4().hex}")
        final.rename(old)
    staging.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_leftovers(batch_dir: Path) -> None:
    """The staging of a killed conversion (never read: it has no `complete.json` in place)."""
    for p in batch_dir.glob(f"{TABLES}.*-*"):
        shutil.rmtree(p, ignore_errors=True)
