"""Which object tables a sub-analysis exported, which one is the base of the single-cell
table, and how each other object relates to it.

- Object tables: the merged Parquet files with `Metadata_CPP_ImageKey` and `ObjectNumber`
  columns (so not Image, nor a single-cell or profile file in the same folder).
- The base object (one single-cell row per object): `Cells` when there is one; otherwise
  the object the others name most often in their `Parent_<X>` columns (as CytoTable
  relates compartments), ties and unrelated objects by name; the only object if there is
  one (a nuclei-only pipeline: `Nuclei`).
- An object X is *joined* to the base (its columns side by side with the base object's)
  when CellProfiler recorded a one-to-one link between them:
  the base has `Parent_X` (X is its parent, e.g. Cells -> Nuclei) and X's
  `Children_<base>_Count` is never above 1, or X has `Parent_<base>` (X is its child, e.g.
  Cells -> Cytoplasm) and the base's `Children_X_Count` is never above 1. A missing
  `Children_*_Count` column counts as one-to-one (then two matches for one base object
  are an error when joining, never a second row). The maximum comes from Parquet
  row-group statistics (the column is read only where they are missing).
- Every other object (ExampleHuman's PH3: 22 objects for 289 cells, several per nucleus;
  or an object with no link to the base) is *summarised per image*: never multiplied
  into the base rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from cpp_dagster.features.columns import IMAGE_KEY_COLUMN

BASE_PREFERRED = "Cells"


@dataclass(frozen=True)
class Link:
    """How rows of an object match base rows: base[base_column] == object[object_column]
    within one image (Metadata_CPP_ImageKey)."""

    base_column: str  # ObjectNumber or Parent_<X>
    object_column: str  # ObjectNumber or Parent_<base>


@dataclass(frozen=True)
class Objects:
    base: str
    joined: dict[str, Link]  # name -> link, by name
    summarised: list[str]  # by name


def object_tables(tables_dir: Path, names: Iterable[str] | None = None) -> dict[str, Path]:
    """Object table name -> Parquet file in `tables_dir` (`names`: only these, if they exist)."""
    tables_dir = Path(tables_dir)
    if names is not None:
        candidates = [tables_dir / f"{n}.parquet" for n in names]
    else:
        candidates = sorted(p for p in tables_dir.glob("*.parquet") if not p.name.startswith("."))
    return {
        p.stem: p
        for p in candidates
        if p.is_file() and {IMAGE_KEY_COLUMN, "ObjectNumber"} <= set(pq.read_schema(p).names)
    }


def base_object(columns: Mapping[str, Iterable[str]]) -> str:
    """The base object among `columns` (object name -> its column names); see above."""
    if not columns:
        raise ValueError("no object tables")
    if BASE_PREFERRED in columns:
        return BASE_PREFERRED
    referenced = {
        name: sum(f"Parent_{name}" in cols for other, cols in columns.items() if other != name) for name in columns
    }
    return min(columns, key=lambda name: (-referenced[name], name))


def column_max(path: Path, column: str) -> int | None:
    """The largest value of an integer column of a Parquet file (None: no value), from
    row-group statistics where they exist."""
    pf = pq.ParquetFile(path)
    index = pf.schema_arrow.get_field_index(column)
    best = None
    for i in range(pf.metadata.num_row_groups):
        stats = pf.metadata.row_group(i).column(index).statistics
        if stats is not None and stats.has_min_max:
            value = stats.max
        elif stats is not None and stats.has_null_count and stats.null_count == pf.metadata.row_group(i).num_rows:
            continue
        else:
            value = pc.max(pf.read_row_group(i, columns=[column]).column(0)).as_py()
        if value is not None and (best is None or value > best):
            best = value
    return best


def relate(paths: Mapping[str, Path]) -> Objects:
    """The base object of the object tables `paths` and how each other object relates to it."""
    columns = {name: pq.read_schema(p).names for name, p in paths.items()}
    base = base_object(columns)
    joined: dict[str, Link] = {}
    summarised = []
    for name in sorted(columns):
        if name == base:
            continue
        if f"Parent_{name}" in columns[base]:
            link, counts = Link(f"Parent_{name}", "ObjectNumber"), (name, f"Children_{base}_Count")
        elif f"Parent_{base}" in columns[name]:
            link, counts = Link("ObjectNumber", f"Parent_{base}"), (base, f"Children_{name}_Count")
        else:
            summarised.append(name)
            continue
        table, count_column = counts
        most = column_max(paths[table], count_column) if count_column in columns[table] else None
        if most is not None and most > 1:
            summarised.append(name)
        else:
            joined[name] = link
    return Objects(base, joined, summarised)
