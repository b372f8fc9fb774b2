"""Checks of a merged feature-table folder (`merge.py`'s output), as pure functions.

Each returns a CheckOutcome(passed, severity, description, metadata); an asset check can
turn it into `AssetCheckResult(passed=..., severity=..., description=..., metadata=...)`.
ERROR: the tables are incomplete or wrong (a missing image row or batch). WARN: the tables
are complete but something in the data deserves a look (outlier wells, NaN, drift).

- image_rows_match_plan: the Image table has one row per planned image set, no duplicate
  Metadata_CPP_ImageKey.
- all_batches_present: the Image table's Metadata_CPP_Batch values are exactly the planned batches.
- well_counts_outliers: objects per well (of the base object, `objects.py`: Cells, else
  e.g. Nuclei; or the object table given) of every well of the Image table plus
  `expected_wells` (a well without objects counts 0). The rule: with m the median count of
  the wells that have objects, a well is flagged if it has none, or fewer than low x m, or
  more than high x m (defaults 0.2 and 3). Empty wells do not enter m, so a half-empty plate
  does not drag the median down. Ratios, not MAD: cell counts vary by a factor, and a
  tight plate would make a MAD rule flag ordinary wells.
- nan_share: per numeric feature column of the object tables, the share of null or NaN
  (bookkeeping columns - Metadata_*, ImageNumber, ObjectNumber, Parent_*, Children_* - skipped).
- column_drift: the drift merge reported (columns not in every batch); column_drift_in_tables
  finds it in the Parquet (a column entirely null in some batch, not in others) from
  row-group statistics. A feature that is legitimately all-NaN in one batch shows up too.
- not_applicable: the outcome of a check that does not apply (passed, "not applicable: ...").
Everything is streamed (one column, or row-group statistics); memory does not grow with the plate.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cpp_dagster.features.columns import BATCH_COLUMN as BATCH
from cpp_dagster.features.columns import IMAGE_KEY_COLUMN as KEY
from cpp_dagster.features.objects import base_object, object_tables
from cpp_dagster.features.plate_map import well_sort_key

_BOOKKEEPING = re.compile(r"^(Metadata_.*|ImageNumber|ObjectNumber|Number_Object_Number|Parent_\w+|Children_\w+)$")
_SHOWN = 50  # at most this many offending items listed in a description's metadata


@dataclass(frozen=True)
class CheckOutcome:
    passed: bool
    severity: str  # "ERROR" or "WARN"
    description: str
    metadata: dict = field(default_factory=dict)


def not_applicable(reason: str) -> CheckOutcome:
    """The outcome of a check that does not apply to the tables (e.g. cells per well
    without object tables): passed, and saying so."""
    return CheckOutcome(True, "WARN", f"not applicable: {reason}", {"applicable": False})


def _path(tables_dir: Path, name: str) -> Path:
    return Path(tables_dir) / f"{name}.parquet"


def _object_tables(tables_dir: Path, tables: Iterable[str] | None) -> list[str]:
    """`tables` that exist; by default every merged object table (objects.object_tables)."""
    if tables is not None:
        return [t for t in tables if _path(tables_dir, t).exists()]
    return sorted(object_tables(tables_dir))


def _base_table(tables_dir: Path, object_table: str | None, objects: Iterable[str] | None) -> str | None:
    """`object_table`, else the base object among `objects` (default: every object table)."""
    if object_table is not None:
        return object_table
    paths = object_tables(tables_dir, objects)
    return base_object({n: pq.read_schema(p).names for n, p in paths.items()}) if paths else None


def _row_groups(path: Path, columns: list[str]) -> Iterable[pa.Table]:
    """The file row group by row group (ParquetFile.iter_batches reads ahead: its memory
    grows with the file)."""
    pf = pq.ParquetFile(path)
    for i in range(pf.metadata.num_row_groups):
        yield pf.read_row_group(i, columns=columns)


def _column(path: Path, name: str) -> Iterable[pa.ChunkedArray]:
    for table in _row_groups(path, [name]):
        yield table.column(0)


def image_rows_match_plan(tables_dir: Path, planned_image_sets: int) -> CheckOutcome:
    path = _path(tables_dir, "Image")
    if not path.exists():
        return CheckOutcome(False, "ERROR", f"no Image table in {tables_dir}", {"planned": planned_image_sets})
    keys = Counter()
    for chunk in _column(path, KEY):
        keys.update(chunk.to_pylist())
    rows = sum(keys.values())
    duplicates = sorted((k for k, n in keys.items() if n > 1), key=lambda k: (k is None, k or 0))
    passed = rows == planned_image_sets and not duplicates
    description = f"{rows} image rows for {planned_image_sets} planned image sets" + (
        f"; {len(duplicates)} image keys appear more than once" if duplicates else ""
    )
    return CheckOutcome(
        passed,
        "ERROR",
        description,
        {
            "rows": rows,
            "planned": planned_image_sets,
            "missing": max(planned_image_sets - rows, 0),
            "duplicate_image_keys": duplicates[:_SHOWN],
        },
    )


def all_batches_present(tables_dir: Path, expected_batches: Sequence[str]) -> CheckOutcome:
    path = _path(tables_dir, "Image")
    if not path.exists():
        return CheckOutcome(False, "ERROR", f"no Image table in {tables_dir}", {"missing": list(expected_batches)})
    found: set = set()
    for chunk in _column(path, BATCH):
        found.update(pc.unique(chunk).to_pylist())
    missing = [b for b in expected_batches if b not in found]
    extra = sorted(str(b) for b in found - set(expected_batches))
    passed = not missing and not extra
    description = (
        f"all {len(expected_batches)} batches have image rows"
        if passed
        else f"{len(missing)} planned batches have no image rows, {len(extra)} batches were not planned"
    )
    return CheckOutcome(
        passed, "ERROR", description, {"missing": missing, "extra": extra, "expected": len(expected_batches)}
    )


def objects_per_well(
    tables_dir: Path, object_table: str | None = None, expected_wells: Iterable[str] = ()
) -> tuple[dict[str, int], int]:
    """(well -> number of objects, objects whose image key is not in the Image table); every
    well of the Image table and of `expected_wells` is in the mapping, 0 if it has none.
    `object_table`: default the base object."""
    object_table = _base_table(tables_dir, object_table, None) or "Cells"
    image = pq.read_table(_path(tables_dir, "Image"), columns=[KEY, "Metadata_Well"])
    well_of = dict(zip(image.column(KEY).to_pylist(), image.column("Metadata_Well").to_pylist()))
    counts = dict.fromkeys([*expected_wells, *(w for w in well_of.values() if w is not None)], 0)
    orphans = 0
    for chunk in _column(_path(tables_dir, object_table), KEY):
        for item in pc.value_counts(chunk.combine_chunks()).to_pylist():
            well = well_of.get(item["values"])
            if well is None:
                orphans += item["counts"]
            else:
                counts[well] = counts.get(well, 0) + item["counts"]
    return dict(sorted(counts.items(), key=lambda kv: well_sort_key(kv[0]))), orphans


def well_counts_outliers(
    tables_dir: Path,
    object_table: str | None = None,
    *,
    low: float = 0.2,
    high: float = 3.0,
    expected_wells: Iterable[str] = (),
    objects: Iterable[str] | None = None,
) -> CheckOutcome:
    """`object_table`: default the base object among `objects` (default: every object table)."""
    object_table = _base_table(tables_dir, object_table, objects)
    if object_table is None:
        return CheckOutcome(False, "WARN", f"no object table in {tables_dir}: cannot count objects per well", {})
    for name in ("Image", object_table):
        if not _path(tables_dir, name).exists():
            return CheckOutcome(False, "WARN", f"no {name} table in {tables_dir}: cannot count objects per well", {})
    if "Metadata_Well" not in pq.read_schema(_path(tables_dir, "Image")).names:
        return CheckOutcome(False, "WARN", f"the Image table in {tables_dir} has no Metadata_Well column", {})
    counts, orphans = objects_per_well(tables_dir, object_table, expected_wells)
    populated = [n for n in counts.values() if n > 0]
    median = float(np.median(populated)) if populated else 0.0
    flagged = {w: n for w, n in counts.items() if n == 0 or n < low * median or n > high * median}
    rule = (
        f"flagged: 0 {object_table}, or < {low} x or > {high} x the median ({median:g}) "
        f"of the wells with {object_table}"
    )
    description = (
        f"{len(flagged)} of {len(counts)} wells flagged ({rule})"
        if flagged
        else f"no outlier well among {len(counts)} ({rule})"
    )
    return CheckOutcome(
        not flagged,
        "WARN",
        description,
        {
            "counts": counts,
            "median": median,
            "flagged": flagged,
            "rule": rule,
            "objects_without_image_row": orphans,
            "object": object_table,
        },
    )


def nan_share(tables_dir: Path, max_share: float = 0.05, tables: Iterable[str] | None = None) -> CheckOutcome:
    shares: dict[str, float] = {}
    rows_of: dict[str, int] = {}
    for table in _object_tables(tables_dir, tables):
        pf = pq.ParquetFile(_path(tables_dir, table))
        schema = pf.schema_arrow
        columns = [
            f.name
            for f in schema
            if not _BOOKKEEPING.match(f.name) and (pa.types.is_floating(f.type) or pa.types.is_integer(f.type))
        ]
        missing = dict.fromkeys(columns, 0)
        rows = 0
        if columns:
            for group in _row_groups(_path(tables_dir, table), columns):
                rows += group.num_rows
                for name, col in zip(columns, group.columns):
                    missing[name] += col.null_count
                    if pa.types.is_floating(col.type):
                        missing[name] += pc.sum(pc.is_nan(col)).as_py() or 0
        rows_of[table] = rows
        for name in columns:
            shares[f"{table}.{name}"] = missing[name] / rows if rows else 0.0
    over = {c: round(s, 4) for c, s in sorted(shares.items(), key=lambda kv: -kv[1]) if s > max_share}
    description = (
        f"{len(over)} of {len(shares)} feature columns are more than {max_share:.0%} null/NaN"
        if over
        else f"no feature column is more than {max_share:.0%} null/NaN ({len(shares)} checked)"
    )
    return CheckOutcome(
        not over,
        "WARN",
        description,
        {
            "over_threshold": dict(list(over.items())[:_SHOWN]),
            "columns_over": len(over),
            "columns_checked": len(shares),
            "rows": rows_of,
            "max_share": max_share,
            "worst": max(shares.items(), key=lambda kv: kv[1], default=(None, 0.0))[0],
        },
    )


def column_drift(per_table_drift: Mapping[str, Sequence[str]]) -> CheckOutcome:
    """From merge's report: `{table: MergedTable.drift}`."""
    drift = {t: list(cols) for t, cols in per_table_drift.items() if cols}
    n = sum(map(len, drift.values()))
    description = (
        f"{n} columns are missing from some batches (null there): "
        + "; ".join(f"{t}: {', '.join(c[:5])}{' ...' if len(c) > 5 else ''}" for t, c in drift.items())
        if drift
        else "every batch has the same columns"
    )
    return CheckOutcome(not drift, "WARN", description, {"drift": drift, "columns": n})


def column_drift_in_tables(tables_dir: Path, tables: Iterable[str] | None = None) -> CheckOutcome:
    """Columns entirely null in some batch but not in every batch, per table: `{table:
    {column: [batches where it is empty]}}`. Uses Parquet statistics; a row group
    without usable statistics, or with rows of several batches, is read."""
    names = list(tables) if tables is not None else ["Image", *_object_tables(tables_dir, None)]
    drift: dict[str, dict[str, list[str]]] = {}
    for table in names:
        path = _path(tables_dir, table)
        if not path.exists():
            continue
        pf = pq.ParquetFile(path)
        if BATCH not in pf.schema_arrow.names:
            continue
        columns = [n for n in pf.schema_arrow.names if n not in (BATCH, KEY)]
        index = {pf.metadata.schema.column(j).path: j for j in range(pf.metadata.num_columns)}
        valid: dict[str, Counter] = defaultdict(Counter)  # batch -> column -> non-null values
        for i in range(pf.metadata.num_row_groups):
            rg = pf.metadata.row_group(i)
            bstats = rg.column(index[BATCH]).statistics
            stats = [rg.column(index[c]).statistics if c in index else None for c in columns]
            if (
                bstats is not None
                and bstats.has_min_max
                and bstats.min == bstats.max
                and all(s is not None and s.has_null_count for s in stats)
            ):
                for c, s in zip(columns, stats):
                    valid[bstats.min][c] += rg.num_rows - s.null_count
                continue
            data = pf.read_row_group(i, columns=[BATCH, *columns])
            counted = data.group_by(BATCH).aggregate([(c, "count") for c in columns])
            for row in counted.to_pylist():
                for c in columns:
                    valid[row[BATCH]][c] += row[f"{c}_count"]
        for c in columns:
            empty = sorted(str(b) for b in valid if valid[b][c] == 0)
            if empty and len(empty) < len(valid):
                drift.setdefault(table, {})[c] = empty
    n = sum(map(len, drift.values()))
    description = (
        f"{n} columns are empty in some batches but not in others: "
        + "; ".join(f"{t}: {', '.join(list(c)[:5])}" for t, c in drift.items())
        if drift
        else "no column is empty in one batch and filled in another"
    )
    return CheckOutcome(not drift, "WARN", description, {"drift": drift, "columns": n})
