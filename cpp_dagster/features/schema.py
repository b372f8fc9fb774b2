"""Column types of CellProfiler CSVs, and the merged schema of several batches.

The drift rule (see merge.py): the union of the batches' columns in order of first
appearance; text if any batch has text in it, else numeric: int64 for ImageNumber,
ObjectNumber and CellProfiler's integer bookkeeping columns, float32 otherwise. A
column's type comes from the first block of each file (a numpy probe); when a later
block contradicts it, the whole file is scanned (`scan_schema`).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

NULL_VALUES = ["", "nan", "NaN", "NA", "null", "None", "inf", "-inf"]
_INTEGER_COLUMN = re.compile(
    r"^(ImageNumber|ObjectNumber|Number_Object_Number|Parent_\w+|Children_\w+_Count|Count_\w+|Group_(Number|Index)|ModuleError_\w+)$"
)
BLOCK_SIZE = 16 << 20  # bytes of CSV per block read
PROBE_BLOCK_SIZE = 1 << 20  # bytes of CSV whose values decide a column's type (unless they change later)


class SchemaError(RuntimeError):
    """A CSV cannot be read as a CellProfiler table; the message names the file."""


def _header(path: Path) -> list[str]:
    """The column names in the first record of a CSV file."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return next(csv.reader(f))
    except StopIteration:
        raise SchemaError(f"cannot read {path}: empty file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise SchemaError(f"cannot read {path}: {e}") from None


_INT_TEXT = r"^-?[0-9]{1,18}$"
_FLOAT_TEXT = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_TYPES = {"null": pa.null(), "int": pa.int64(), "float": pa.float64(), "text": pa.string()}


def _kind(values: pa.Array) -> str:
    """int, float or text: what every value of `values` (text, no nulls) converts to."""
    for kind, t in (("int", pa.int64()), ("float", pa.float64())):
        try:
            pc.cast(values, t)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        return kind
    return "text"


def probe_schema(path: Path) -> pa.Schema:
    """Column names and types from the first block of a file: a column is null if it
    has no value there, int64 if every value is an integer, float64 if every value is a
    number, else string (the rule of `scan_schema`, on one block).

    The block's values are classified for all columns at once, in one flat array (CSV
    type inference costs ~50 us per column and file, which on ~1,000-column tables was a
    third of the merge)."""
    head = _head_values(path)
    if head is None:
        head = _head_values_arrow(path)
    names, values, column = head
    ncols = len(names)
    valid = pc.invert(pc.is_in(values, pa.array(NULL_VALUES)))
    n_valid = np.bincount(column, weights=valid.to_numpy(zero_copy_only=False), minlength=ncols)
    values, column = values.filter(valid), column[valid.to_numpy(zero_copy_only=False)]
    try:
        pc.cast(values, pa.float64())  # the usual case: every value is a number
        all_numbers = True
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        all_numbers = False
    if all_numbers:  # among numbers, the integers are the digit strings (hex and `+5` are not numbers)
        digits = pc.utf8_is_digit(pc.utf8_ltrim(values, "-"))
        long = pc.and_(digits, pc.greater_equal(pc.utf8_length(values), 19))  # int64 or not: see below
        is_int = pc.and_not(digits, long)
        is_float = np.ones(len(values))
    else:
        long = pc.fill_null(pc.match_substring_regex(values, r"^-?[0-9]{19,}$"), False)
        is_int = pc.fill_null(pc.match_substring_regex(values, _INT_TEXT), False)
        is_float = pc.fill_null(pc.match_substring_regex(values, _FLOAT_TEXT), False).to_numpy(zero_copy_only=False)
    n_int = np.bincount(column, weights=is_int.to_numpy(zero_copy_only=False), minlength=ncols)
    n_long = np.bincount(column, weights=long.to_numpy(zero_copy_only=False), minlength=ncols)
    n_float = np.bincount(column, weights=is_float, minlength=ncols)
    fields = []
    for i, name in enumerate(names):
        if n_valid[i] == 0:
            kind = "null"
        elif n_int[i] == n_valid[i]:
            kind = "int"
        elif n_float[i] == n_valid[i] and (n_long[i] == 0 or n_int[i] + n_long[i] < n_valid[i]):
            kind = "float"
        else:  # long integers, and what the expressions do not take but may convert (`0x10`, `Infinity`)
            kind = _kind(values.filter(column == i))
        fields.append(pa.field(name, _TYPES[kind]))
    return pa.schema(fields)


def _head_values(path: Path) -> tuple[list[str], pa.Array, np.ndarray] | None:
    """(column names, the first block's values as one text array, each value's column),
    split without a CSV parser: only for the plain files CellProfiler writes (no quotes,
    no carriage returns, no empty lines, every row complete); else None."""
    try:
        with open(path, "rb") as f:
            data = f.read(PROBE_BLOCK_SIZE)
    except OSError as e:
        raise SchemaError(f"cannot read {path}: {e}") from None
    if len(data) == PROBE_BLOCK_SIZE:
        data = data[: data.rfind(b"\n") + 1]
    elif data and not data.endswith(b"\n"):
        data += b"\n"
    if not data or b'"' in data or b"\r" in data or data.startswith(b"\xef\xbb\xbf"):
        return None
    header_end = data.index(b"\n")
    try:
        names = data[:header_end].decode("utf-8").split(",")
    except UnicodeDecodeError:
        return None
    body = np.frombuffer(data, np.uint8)[header_end + 1 :]
    if len(body) == 0:
        return None
    ncols = len(names)
    newline = body == 10
    is_sep = newline | (body == 44)
    sep = np.flatnonzero(is_sep)  # the end of every value
    nvalues = len(sep)
    if nvalues % ncols or not np.array_equal(np.flatnonzero(newline[sep]), np.arange(ncols - 1, nvalues, ncols)):
        return None  # empty lines or rows of another length: leave them to the CSV parser
    starts = np.concatenate([[0], sep[:-1] + 1])
    offsets = np.append(starts - np.arange(nvalues), len(body) - nvalues).astype(np.int64)
    values = pa.Array.from_buffers(
        pa.large_string(), nvalues, [None, pa.py_buffer(offsets), pa.py_buffer(body[~is_sep].tobytes())]
    )
    try:
        values.validate(full=True)
    except pa.ArrowInvalid:
        return None
    return names, values, np.tile(np.arange(ncols), nvalues // ncols)


def _head_values_arrow(path: Path) -> tuple[list[str], pa.Array, np.ndarray]:
    """`_head_values` by Arrow's CSV parser, for any file."""
    names = _header(path)
    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=PROBE_BLOCK_SIZE, use_threads=False),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names}, quoted_strings_can_be_null=False
            ),
        )
        try:
            try:
                block = reader.read_next_batch()
            except StopIteration:
                block = None
            schema = reader.schema
        finally:
            reader.close()
    except pa.ArrowInvalid as e:
        raise SchemaError(f"cannot read {path}: {e}") from None
    names = schema.names
    if block is None or block.num_rows == 0 or block.num_columns == 0:
        return names, pa.array([], pa.string()), np.zeros(0, np.int64)
    values = pa.concat_arrays([c.cast(pa.string()) for c in block.columns])
    return names, values, np.repeat(np.arange(block.num_columns), block.num_rows)


def scan_schema(path: Path) -> pa.Schema:
    """Column types from every row of a file, not just the first block (the slow path,
    used when a column changes type after the first block): each column is read as text
    and is int64 if every value is an integer, float64 if every value is a number, null
    if it has no value, else string."""
    names = _header(path)
    rank = {"null": 0, "int": 1, "float": 2, "text": 3}
    kinds = dict.fromkeys(names, "null")
    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=16 << 20),
        convert_options=pacsv.ConvertOptions(
            column_types={n: pa.string() for n in names}, null_values=NULL_VALUES, strings_can_be_null=True
        ),
    )
    for block in reader:
        for n in names:
            values = block.column(n).drop_null()
            if kinds[n] == "text" or len(values) == 0:
                continue
            kind = _kind(values)
            if rank[kind] > rank[kinds[n]]:
                kinds[n] = kind
    return pa.schema([pa.field(n, _TYPES[kinds[n]]) for n in names])


def unified_schema(schemas: Sequence[pa.Schema], *, keep_null: bool = False) -> tuple[pa.Schema, tuple[str, ...]]:
    """The merged table's schema by the drift rule above, and the drifting columns.
    `keep_null`: a column with no value in any of `schemas` stays of type null (a batch
    converted on its own: the final merge then gives it the type the other batches give
    it, exactly as when all batches' CSVs are merged at once).

    Runs once per table and batch in the batch conversion, on ~1,000 columns: the loops
    work on the names and type ids, not on Field objects (5x faster)."""
    kinds: dict[str, int] = {}  # column -> the kinds seen (bits), in order of first appearance
    present: dict[str, int] = {}
    counts: dict[int, list] = {}  # each distinct schema object once, with its number of batches
    for schema in schemas:
        counts.setdefault(id(schema), [schema, 0])[1] += 1
    for schema, count in counts.values():
        for name, type_id in zip(schema.names, _type_ids(schema)):
            kinds[name] = kinds.get(name, 0) | _kind_bit(type_id)
            present[name] = present.get(name, 0) + count
    types = []
    for name, bits in kinds.items():
        k = bits & ~_NULL
        if keep_null and not k:
            t = _NULL_TYPE
        elif k & _TEXT:
            t = _STRING
        elif (k | _INT) == _INT and _INTEGER_COLUMN.match(name):  # integers, or no value at all
            t = _INT64
        elif k == _INT and name.startswith("Metadata_"):
            t = _INT64
        else:
            t = _FLOAT32
        types.append(t)
    drift = tuple(n for n, c in present.items() if c != len(schemas))
    return pa.schema(list(zip(kinds, types))), drift


_NULL, _INT, _FLOAT, _TEXT = 1, 2, 4, 8
_NULL_TYPE, _INT64, _FLOAT32, _STRING = pa.null(), pa.int64(), pa.float32(), pa.string()
# Arrow type id -> kind: null, int (integers and booleans), float; any other type is
# text (text, but also inferred dates and times: a date cannot be cast to float32)
_KIND_BITS = {
    t.id: bit
    for bit, types in (
        (_NULL, [pa.null()]),
        (
            _INT,
            [
                pa.bool_(),
                pa.int8(),
                pa.int16(),
                pa.int32(),
                pa.int64(),
                pa.uint8(),
                pa.uint16(),
                pa.uint32(),
                pa.uint64(),
            ],
        ),
        (_FLOAT, [pa.float16(), pa.float32(), pa.float64()]),
    )
    for t in types
}


def _type_ids(schema: pa.Schema) -> list[int]:
    return [t.id for t in schema.types]


def _kind_bit(type_id: int) -> int:
    return _KIND_BITS.get(type_id, _TEXT)


def _read_type(t: pa.DataType) -> pa.DataType:
    return pa.float64() if pa.types.is_floating(t) else t


def shared_schemas(schemas: Iterable[pa.Schema]) -> list[pa.Schema]:
    """`schemas` with equal ones replaced by one object, as they come: batches of a
    pipeline mostly have the same ~1,000 columns, and keeping a copy per batch (~150 kB
    of C++ heap each) made the merge's memory grow with the plate."""
    distinct: list[pa.Schema] = []
    out = []
    for schema in schemas:
        same = next((d for d in distinct if d.equals(schema)), None)
        if same is None:
            distinct.append(schema)
            same = schema
        out.append(same)
    return out
