"""Checks of merged feature tables, each on good data and on data with the fault it looks
for; and the plate map PNG."""

from __future__ import annotations

import base64
import io

import matplotlib.image
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_single_cell_and_profiles import make_tables

from cpp_dagster.features.checks import (
    all_batches_present,
    column_drift,
    column_drift_in_tables,
    image_rows_match_plan,
    nan_share,
    objects_per_well,
    well_counts_outliers,
)
from cpp_dagster.features.columns import BATCH_COLUMN, IMAGE_KEY_COLUMN
from cpp_dagster.features.plate_map import MISSING_COLOR, parse_well, plate_grid, plate_map_markdown, plate_map_png

BATCH_NAMES = ["batch_0001", "batch_0002"]


@pytest.fixture
def tables(tmp_path):
    return make_tables(tmp_path / "tables")


def rewrite(folder, name, edit):
    path = folder / f"{name}.parquet"
    pq.write_table(edit(pq.read_table(path)), path, row_group_size=4)


def replace_column(table: pa.Table, name: str, values, type_=None) -> pa.Table:
    return table.set_column(
        table.column_names.index(name), name, pa.array(values, type_ or table.schema.field(name).type)
    )


# --- image rows and batches ------------------------------------------------------------


def test_image_rows_match_plan(tables):
    good = image_rows_match_plan(tables, 4)
    assert (good.passed, good.severity, good.metadata["rows"]) == (True, "ERROR", 4)
    short = image_rows_match_plan(tables, 5)
    assert not short.passed and short.metadata["missing"] == 1 and "4 image rows for 5" in short.description


def test_missing_and_duplicate_image_rows_fail(tables):
    rewrite(tables, "Image", lambda t: t.slice(1))
    missing = image_rows_match_plan(tables, 4)
    assert not missing.passed and missing.metadata["missing"] == 1
    rewrite(tables, "Image", lambda t: pa.concat_tables([t, t.slice(0, 1)]))
    duplicated = image_rows_match_plan(tables, 4)
    assert not duplicated.passed
    assert duplicated.metadata["duplicate_image_keys"] == [1_000_002]


def test_no_image_table_fails(tmp_path):
    outcome = image_rows_match_plan(make_tables(tmp_path / "t", skip=("Image",)), 4)
    assert not outcome.passed and "no Image table" in outcome.description


def test_all_batches_present(tables):
    good = all_batches_present(tables, BATCH_NAMES)
    assert good.passed and good.metadata["missing"] == good.metadata["extra"] == []
    bad = all_batches_present(tables, ["batch_0001", "batch_0003"])
    assert (bad.passed, bad.severity) == (False, "ERROR")
    assert bad.metadata["missing"] == ["batch_0003"] and bad.metadata["extra"] == ["batch_0002"]


def test_a_batch_without_image_rows_is_missing(tables):
    rewrite(tables, "Image", lambda t: t.filter(pa.compute.equal(t[BATCH_COLUMN], "batch_0001")))
    outcome = all_batches_present(tables, BATCH_NAMES)
    assert not outcome.passed and outcome.metadata["missing"] == ["batch_0002"]


# --- cells per well ----------------------------------------------------------------


def test_even_wells_pass(tables):
    # B02 has two sites (6 cells), B03 and C04 one (3): median 3, 6 < 3 x 3
    outcome = well_counts_outliers(tables)
    assert outcome.passed and outcome.severity == "WARN"
    assert outcome.metadata["counts"] == {"B02": 6, "B03": 3, "C04": 3}
    assert outcome.metadata["flagged"] == {} and outcome.metadata["median"] == 3


def test_empty_well_and_planned_well_without_images_are_flagged(tables):
    rewrite(tables, "Cells", lambda t: t.filter(pa.compute.not_equal(t[IMAGE_KEY_COLUMN], 2_000_001)))
    outcome = well_counts_outliers(tables, expected_wells=["D05"])
    assert not outcome.passed
    assert outcome.metadata["counts"] == {"B02": 6, "B03": 0, "C04": 3, "D05": 0}
    assert outcome.metadata["flagged"] == {"B03": 0, "D05": 0}
    assert "2 of 4 wells flagged" in outcome.description


def test_a_tenfold_well_is_flagged(tmp_path):
    batches = {"batch_0001": (1, [(w, 1) for w in ["B02", "B03", "B04", "B05", "B06"]])}
    folder = make_tables(tmp_path / "t", batches=batches)

    # B06 (image 5) gets 27 more cells: 30 against a median of 3
    def add_cells(t):
        extra = t.filter(pa.compute.equal(t[IMAGE_KEY_COLUMN], 1_000_005))
        return pa.concat_tables([t] + [extra] * 9)

    rewrite(folder, "Cells", add_cells)
    outcome = well_counts_outliers(folder)
    assert not outcome.passed and outcome.metadata["flagged"] == {"B06": 30}
    assert well_counts_outliers(folder, high=20).passed


def test_objects_per_well_counts_other_tables_and_orphans(tables):
    rewrite(
        tables,
        "Nuclei",
        lambda t: replace_column(t, IMAGE_KEY_COLUMN, [9_000_001] + t[IMAGE_KEY_COLUMN].to_pylist()[1:]),
    )
    counts, orphans = objects_per_well(tables, "Nuclei")
    assert counts == {"B02": 5, "B03": 3, "C04": 3} and orphans == 1


# --- NaN share -----------------------------------------------------------------------


def test_nan_share_passes_below_the_threshold(tables):
    # Nuclei intensity is null for one nucleus in three: fine with max_share=0.5
    outcome = nan_share(tables, max_share=0.5)
    assert outcome.passed and outcome.severity == "WARN" and outcome.metadata["over_threshold"] == {}
    assert outcome.metadata["columns_checked"] == 4  # bookkeeping columns are not features


def test_a_single_cell_file_beside_the_tables_is_not_an_object_table(tables):
    from cpp_dagster.features.single_cell import write_single_cell

    write_single_cell(tables, tables / "single_cell.parquet")
    assert nan_share(tables, max_share=0.5).metadata["columns_checked"] == 4
    assert column_drift_in_tables(tables).passed


def test_a_feature_half_nan_is_reported(tables):
    def half_nan(t):
        values = [float("nan") if k % 2 else v for k, v in enumerate(t["AreaShape_Area"].to_pylist())]
        return replace_column(t, "AreaShape_Area", values)

    rewrite(tables, "Cells", half_nan)
    outcome = nan_share(tables, max_share=0.4)
    assert not outcome.passed
    assert outcome.metadata["over_threshold"] == {"Cells.AreaShape_Area": 0.5}
    assert "1 of 4" in outcome.description
    over = nan_share(tables).metadata["over_threshold"]  # 0.05: the 1-in-3 null column too
    assert over == {"Cells.AreaShape_Area": 0.5, "Nuclei.Intensity_MeanIntensity_HOECHST": 0.3333}


# --- drift -------------------------------------------------------------------------------


def test_drift_reported_by_merge():
    assert column_drift({"Image": (), "Cells": ()}).passed
    outcome = column_drift({"Image": ("Granularity_1_DNA",), "Cells": ()})
    assert not outcome.passed and outcome.metadata["drift"] == {"Image": ["Granularity_1_DNA"]}
    assert "Granularity_1_DNA" in outcome.description


def test_drift_found_in_the_parquet(tables):
    assert column_drift_in_tables(tables).passed

    def drop_in_batch_2(t):
        values = [
            None if b == "batch_0002" else v
            for b, v in zip(t[BATCH_COLUMN].to_pylist(), t["AreaShape_Area"].to_pylist())
        ]
        return replace_column(t, "AreaShape_Area", values)

    rewrite(tables, "Nuclei", drop_in_batch_2)
    outcome = column_drift_in_tables(tables)
    assert not outcome.passed and outcome.severity == "WARN"
    assert outcome.metadata["drift"] == {"Nuclei": {"AreaShape_Area": ["batch_0002"]}}


def test_drift_found_when_row_groups_mix_batches(tables):
    """Row groups spanning both batches (not how merge writes) are read, not trusted."""
    path = tables / "Cells.parquet"
    t = pq.read_table(path)
    batch2 = [b == "batch_0002" for b in t[BATCH_COLUMN].to_pylist()]
    area = [None if is2 else v for is2, v in zip(batch2, t["AreaShape_Area"].to_pylist())]
    t = replace_column(t, "AreaShape_Area", area)
    pq.write_table(t, path, row_group_size=5)  # 12 rows: groups of 5 cross the batch boundary at row 6
    assert column_drift_in_tables(tables, ["Cells"]).metadata["drift"] == {"Cells": {"AreaShape_Area": ["batch_0002"]}}


# --- plate map ---------------------------------------------------------------------------


def decode(png: bytes) -> np.ndarray:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(io.BytesIO(png), format="png")


def grey_pixels(image: np.ndarray) -> int:
    rgb = image[..., :3]
    return int(np.all(np.abs(rgb - np.array(MISSING_COLOR)) < 0.02, axis=-1).sum())


def test_96_well_map():
    counts = {f"{r}{c:02d}": 100 + c for r in "ABCDEFGH" for c in range(1, 13)}
    grid, fmt = plate_grid(counts)
    assert fmt == 96 and grid.shape == (8, 12) and grid.count() == 96 and grid[1, 1] == 102
    png = plate_map_png(counts)
    image = decode(png)
    assert image.shape[1] > image.shape[0]  # landscape: 12 columns across
    assert len(png) < 60_000
    assert grey_pixels(image) < 200  # nothing is missing (the legend swatch only)


def test_384_map_marks_missing_wells():
    counts = {f"{chr(65 + r)}{c:02d}": 50 for r in range(16) for c in range(1, 25) if r != 3}
    counts["B05"] = 0
    grid, fmt = plate_grid(counts)
    assert fmt == 384 and grid.shape == (16, 24)
    assert np.ma.getmaskarray(grid)[3].all() and grid.count() == 16 * 24 - 24
    png = plate_map_png(counts)
    assert len(png) < 60_000
    full = plate_map_png({**counts, **{f"D{c:02d}": 50 for c in range(1, 25)}})
    assert grey_pixels(decode(png)) > grey_pixels(decode(full)) + 500  # row D is grey


def test_format_choice_and_errors():
    assert plate_grid({"H12": 1})[1] == 96
    assert plate_grid({"I01": 1})[1] == 384 and plate_grid({"A13": 1})[1] == 384
    assert plate_grid({"A01": 1}, plate_format=384)[0].shape == (16, 24)
    assert parse_well("b2") == parse_well("B02") == (1, 1) and parse_well("AA01") == (26, 0)
    with pytest.raises(ValueError):
        plate_grid({"I01": 1}, plate_format=96)
    with pytest.raises(ValueError):
        plate_grid({"nonsense": 1})


def test_markdown_embeds_the_png():
    png = plate_map_png({"A01": 3, "B02": 0})
    md = plate_map_markdown(png, alt="cells per well")
    prefix = "![cells per well](data:image/png;base64,"
    assert md.startswith(prefix) and md.endswith(")")
    assert base64.b64decode(md[len(prefix) : -1]) == png


def test_plate_map_from_the_check_counts(tables):
    counts = well_counts_outliers(tables).metadata["counts"]
    grid, fmt = plate_grid(counts)
    assert fmt == 96 and grid.count() == 3 and grid[parse_well("B02")] == 6
    decode(plate_map_png(counts))
