"""The merge never breaks a reader: the key columns it adds never collide with a column
CellProfiler exported (a JUMP LoadData `Metadata_Batch`), and a broken batch table is a
clear error naming the batch and file (through `cpp-dagster merge`:
tests/integration/test_merge_command.py)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pyarrow.parquet as pq
import pytest
from batch_outputs import make_batch, two_batches, write_csv

from cpp_dagster.features.columns import BATCH_COLUMN, IMAGE_KEY_COLUMN
from cpp_dagster.features.merge import MergeError, merge_batches
from cpp_dagster.features.profiles import write_well_profiles
from cpp_dagster.features.single_cell import write_single_cell

JUMP_BATCH = "2021_04_26_Batch1"  # the experiment batch a JUMP LoadData CSV carries


def jump_batch(folder: Path, k: int, wells: tuple[str, ...]) -> Path:
    """A batch whose Image table has JUMP's `Metadata_Batch` and `Metadata_Plate` columns,
    as CellProfiler exports them from a JUMP LoadData CSV."""
    make_batch(folder, k, wells=wells)
    write_csv(
        folder / "MyExpt_Image.csv",
        [
            [
                "ImageNumber",
                "Metadata_Source",
                "Metadata_Batch",
                "Metadata_Plate",
                "Metadata_Well",
                "Metadata_Site",
                "Count_Nuclei",
                "Intensity_MeanIntensity_DNA",
            ],
            *[[i, "source_4", JUMP_BATCH, "BR00117035", w, 1, 2, k + i / 10] for i, w in enumerate(wells, 1)],
        ],
    )
    return folder


def test_a_cellprofiler_metadata_batch_is_kept_and_pandas_polars_and_duckdb_read_the_tables(tmp_path):
    dirs = [
        jump_batch(tmp_path / "src" / "batch_0001", 1, ("A01", "A02")),
        jump_batch(tmp_path / "src" / "batch_0002", 2, ("B01",)),
    ]
    merge_batches(dirs, tmp_path / "dest")
    image_file = tmp_path / "dest" / "Image.parquet"

    frame = pd.read_parquet(image_file)
    assert frame["Metadata_Batch"].tolist() == [JUMP_BATCH] * 3  # CellProfiler's, as it wrote it
    assert frame[BATCH_COLUMN].tolist() == ["batch_0001", "batch_0001", "batch_0002"]  # the merge's
    assert frame[IMAGE_KEY_COLUMN].tolist() == [1_000_001, 1_000_002, 2_000_001]
    assert list(frame.columns).count("Metadata_Batch") == 1
    assert pl.read_parquet(image_file)["Metadata_Batch"].to_list() == [JUMP_BATCH] * 3
    # the column name is the merge's constant (quoted as an identifier), the file a parameter
    assert duckdb.execute(
        f'SELECT count(*), min(Metadata_Batch), min("{BATCH_COLUMN}") FROM read_parquet(?)', [str(image_file)]
    ).fetchall() == [(3, JUMP_BATCH, "batch_0001")]
    for table in ("Nuclei", "Cells"):
        assert len(pd.read_parquet(tmp_path / "dest" / f"{table}.parquet")) == 6

    # the single-cell table and the well profiles keep both, and every reader reads them
    single = write_single_cell(tmp_path / "dest", tmp_path / "dest" / "single_cell.parquet").path
    cells = pd.read_parquet(single)
    assert len(cells) == 6 and set(cells["Metadata_Batch"]) == {JUMP_BATCH}
    assert set(cells[BATCH_COLUMN]) == {"batch_0001", "batch_0002"}
    assert pl.read_parquet(single).height == 6
    assert duckdb.execute("SELECT count(DISTINCT Metadata_Well) FROM read_parquet(?)", [str(single)]).fetchall() == [
        (3,)
    ]
    profiles = pd.read_parquet(write_well_profiles(single, tmp_path / "dest" / "well_profiles.parquet").path)
    assert profiles["Metadata_Well"].tolist() == ["A01", "A02", "B01"]
    assert profiles["Metadata_Plate"].tolist() == ["BR00117035"] * 3


def test_a_zero_byte_table_is_an_error_naming_the_batch_and_file(tmp_path):
    dirs = two_batches(tmp_path)
    (dirs[1] / "MyExpt_Nuclei.csv").write_bytes(b"")
    with pytest.raises(MergeError, match=r"batch batch_0002: its Nuclei table .*MyExpt_Nuclei.csv is empty \(0 bytes"):
        merge_batches(dirs, tmp_path / "dest")
    assert not (tmp_path / "dest" / "Nuclei.parquet").exists()


def test_an_image_table_with_a_header_and_no_rows_is_an_error(tmp_path):
    dirs = two_batches(tmp_path)
    path = dirs[0] / "MyExpt_Image.csv"
    path.write_text(path.read_text().splitlines()[0] + "\n")
    with pytest.raises(
        MergeError, match="batch batch_0001: its Image table .*MyExpt_Image.csv has a header but zero rows"
    ):
        merge_batches(dirs, tmp_path / "dest")


def test_an_object_table_with_a_header_only_is_zero_objects(tmp_path):
    dirs = two_batches(tmp_path)
    path = dirs[1] / "MyExpt_Cells.csv"
    path.write_text(path.read_text().splitlines()[0] + "\n")  # no cell in that batch's images
    result = merge_batches(dirs, tmp_path / "dest")
    cells = pq.read_table(tmp_path / "dest" / "Cells.parquet")
    assert result.tables["Cells"].rows == cells.num_rows == 4
    assert set(cells.column(BATCH_COLUMN).to_pylist()) == {"batch_0001"}
    assert cells.schema.field("AreaShape_Area").type == "float"
