"""Per-well profiles: the exact median of every numeric feature over a well's cells.

Input: a single-cell table (`single_cell.py`'s layout: one row per base object, "cell",
which is `Cells`, or e.g. `Nuclei` for a nuclei-only pipeline), or a folder of merged
tables, from which the single-cell table is first written to a temporary file beside
`dest_file` (and removed afterwards). Output: one Parquet file, one row per (plate, well),
wells sorted by row then column, columns:

- `Metadata_Plate` (if the single-cell table has it), `Metadata_Well`;
- `Metadata_Object_Count`: the number of cells (single-cell rows, base objects) in the well;
- `Metadata_<Object>_Count` for each `Image_Count_<Object>` column (CellProfiler counts
  every object it identifies): the objects of the well's images that have at least one
  cell (the sum over the well's distinct images), e.g. `Metadata_Nuclei_Count`;
- every numeric feature column (`<Object>_*`: whatever objects the table has, per-image
  summaries such as `PH3_Image_Count` included; `Image_*` only with
  `image_features=True`; never `Metadata_*`): its median over the well's cells as
  float32, nulls and NaN ignored; null if the well has no value for it (like
  pycytominer's aggregate, features only, no normalisation). Wells without cells have no
  row (they have no cell to profile).

Memory: exact medians need all of a well's values of a feature at once, so the file is
read column group by column group (Parquet is columnar: each column is read once) and the
medians of every well are computed from that group. A group is as many columns as fit in
`memory_budget` at BYTES_PER_VALUE per cell and column (at least one column); on top come
the grouping keys (~40 bytes per cell) and the libraries (~0.2 GB). Measured (750 features):
307k cells with the default 512 MB budget, 0.71 GB peak RSS in 9 s. A 384-well plate with
4 M cells and the default: 7 columns per group, ~0.9 GB peak (estimate), whatever the
feature count.
The profile file is written under a temporary name and moved into place (os.replace).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cpp_dagster.features.plate_map import well_sort_key
from cpp_dagster.features.single_cell import KEY, write_single_cell

DEFAULT_MEMORY_BUDGET = 512 << 20
BYTES_PER_VALUE = 18  # measured: peak RSS grows ~1.5 x (rows x 12 bytes) per column of a group


class ProfilesError(RuntimeError):
    """The single-cell table cannot be aggregated as it is."""


@dataclass(frozen=True)
class ProfilesResult:
    path: Path
    wells: int
    columns: int


def feature_columns(schema: pa.Schema, image_features: bool = False) -> list[str]:
    """The numeric object features of a single-cell schema (every column but `Metadata_*`
    and, unless `image_features`, `Image_*`), in schema order."""
    skipped = ("Metadata_",) + (() if image_features else ("Image_",))
    return [
        f.name
        for f in schema
        if not f.name.startswith(skipped) and (pa.types.is_integer(f.type) or pa.types.is_floating(f.type))
    ]


def write_well_profiles(
    source: Path, dest_file: Path, *, image_features: bool = False, memory_budget: int = DEFAULT_MEMORY_BUDGET
) -> ProfilesResult:
    """Write the per-well profiles of `source` (a single-cell Parquet file, or a folder of
    merged tables) to `dest_file`."""
    source, dest_file = Path(source), Path(dest_file)
    dest_file.parent.mkdir(parents=True, exist_ok=True)
    if not source.is_dir():
        return _write_profiles(source, dest_file, image_features, memory_budget)
    single_cell = dest_file.parent / f".{dest_file.stem}.single_cell.{uuid.uuid4().hex}.parquet"
    try:
        write_single_cell(source, single_cell)
        return _write_profiles(single_cell, dest_file, image_features, memory_budget)
    finally:
        single_cell.unlink(missing_ok=True)


def _codes(column: pa.ChunkedArray) -> tuple[np.ndarray, int]:
    """Row -> code, and the number of codes (null has a code of its own)."""
    encoded = column.combine_chunks().dictionary_encode(null_encoding="encode")
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64), len(encoded.dictionary)


def _column_medians(block: np.ndarray) -> np.ndarray:
    """Median of each column of a 2-D float64 block, NaN ignored (NaN if a column has no value);
    the same as np.nanmedian(block, axis=0), several times faster: one sort, NaN last."""
    ordered = np.sort(block, axis=0)
    valid = (~np.isnan(block)).sum(axis=0)
    lo = np.take_along_axis(ordered, np.maximum((valid - 1) // 2, 0)[None], axis=0)[0]
    hi = np.take_along_axis(ordered, np.minimum(valid // 2, len(block) - 1)[None], axis=0)[0]
    return np.where(valid > 0, (lo + hi) / 2, np.nan)


def _write_profiles(path: Path, dest_file: Path, image_features: bool, memory_budget: int) -> ProfilesResult:
    schema = pq.read_schema(path)
    if "Metadata_Well" not in schema.names:
        raise ProfilesError(f"{path} has no Metadata_Well column")
    group_keys = [c for c in ("Metadata_Plate", "Metadata_Well") if c in schema.names]
    count_cols = [n for n in schema.names if n.startswith("Image_Count_")] if KEY in schema.names else []
    keys = pq.read_table(path, columns=group_keys + ([KEY, *count_cols] if count_cols else []))
    n = keys.num_rows

    # one integer per (plate, well); `group` = row -> index of its well in the output
    combined = np.zeros(n, dtype=np.int64)
    for k in group_keys:
        codes, size = _codes(keys.column(k))
        combined = combined * max(size, 1) + codes
    uniq, first, group = np.unique(combined, return_index=True, return_inverse=True)
    labels = [tuple(keys.column(k)[int(i)].as_py() for k in group_keys) for i in first]
    # output order: plate, then row / column of the well; unnamed wells last
    out_order = sorted(
        range(len(uniq)),
        key=lambda g: (
            tuple(str(v) for v in labels[g][:-1]),
            labels[g][-1] is None,
            well_sort_key(labels[g][-1] or ""),
        ),
    )
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[out_order] = np.arange(len(uniq))
    group = rank[group]
    labels = [labels[g] for g in out_order]
    counts = np.bincount(group, minlength=len(labels)).astype(np.int64)
    row_order = np.argsort(group, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(counts)])

    columns: dict[str, pa.Array] = {
        k: pa.array([lab[i] for lab in labels], schema.field(k).type) for i, k in enumerate(group_keys)
    }
    columns["Metadata_Object_Count"] = pa.array(counts)
    if count_cols:
        _, first_of_image = np.unique(keys.column(KEY).to_numpy(), return_index=True)
        for count_col in count_cols:
            per_image = pc.fill_null(keys.column(count_col).cast(pa.int64()), 0).to_numpy()[first_of_image]
            name = f"Metadata_{count_col[len('Image_Count_') :]}_Count"
            columns[name if name not in columns else f"Metadata_Image_{name[len('Metadata_') :]}"] = pa.array(
                np.bincount(group[first_of_image], weights=per_image, minlength=len(labels)).astype(np.int64)
            )
    del keys

    features = feature_columns(schema, image_features)
    # per value: the float64 block, the float32 column read, a well's sorted copy, allocator slack
    width = max(1, memory_budget // max(BYTES_PER_VALUE * n, 1))
    for start in range(0, len(features), width):
        names = features[start : start + width]
        block = np.empty((n, len(names)), dtype=np.float64)
        table = pq.read_table(path, columns=names)
        for j, name in enumerate(names):
            values_j = pc.fill_null(table.column(name).cast(pa.float64()), np.nan).to_numpy()
            block[:, j] = values_j[row_order]
        del table
        medians = np.full((len(labels), len(names)), np.nan)  # NaN -> null in the file
        for g in range(len(labels)):
            if counts[g]:
                medians[g] = _column_medians(block[bounds[g] : bounds[g + 1]])
        for j, name in enumerate(names):
            columns[name] = pa.array(medians[:, j].astype(np.float32), from_pandas=True)

    table = pa.table(columns)
    tmp = dest_file.parent / f".{dest_file.name}.{uuid.uuid4().hex}.tmp"
    try:
        pq.write_table(table, tmp, compression="snappy", use_dictionary=group_keys)
        os.replace(tmp, dest_file)
    finally:
        tmp.unlink(missing_ok=True)
    return ProfilesResult(dest_file, table.num_rows, table.num_columns)
