"""The joined single-cell table and the per-well profiles, on merged tables written here
with pyarrow in merge.py's layout: two batches whose ImageNumber and ObjectNumber restart."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cpp_dagster.features.columns import BATCH_COLUMN, IMAGE_KEY_COLUMN
from cpp_dagster.features.merge import merge_batches
from cpp_dagster.features.profiles import write_well_profiles
from cpp_dagster.features.single_cell import SingleCellError, write_single_cell

# batch name -> (batch number, [(well, site) of image 1, image 2, ...])
BATCHES = {"batch_0001": (1, [("B02", 1), ("B02", 2)]), "batch_0002": (2, [("B03", 1), ("C04", 1)])}
OBJECTS = 3  # nuclei, cells and cytoplasms per image (object numbers 1..3)
NO_CYTOPLASM = ("batch_0002", 2, 3)  # (batch, image, cell) whose cytoplasm is missing


def nucleus_of(o: int) -> int:
    """Cells are numbered against their nuclei: cell o's nucleus is 4 - o."""
    return OBJECTS + 1 - o


def cytoplasm_of(o: int) -> int:
    """Cytoplasm objects are numbered differently from their cells, too."""
    return o % OBJECTS + 1


def cell_area(b, i, o):
    return 10_000 + 1000 * b + 100 * i + o


def nucleus_area(b, i, n):
    return 20_000 + 1000 * b + 100 * i + n


def cytoplasm_intensity(b, i, c):
    return 0.5 + b + i / 10 + c / 100


def nucleus_intensity(b, i, n):
    return None if n == 2 else 0.25 * n + b  # one null per image


def write(path: Path, columns: dict, types: dict, row_group_size: int = 4) -> None:
    table = pa.table({k: pa.array(v, types[k]) for k, v in columns.items()})
    pq.write_table(table, path, row_group_size=row_group_size)


def make_tables(folder: Path, batches=BATCHES, skip=()) -> Path:
    """Image, Nuclei, Cells, Cytoplasm tables as merge_batches writes them; `skip` leaves
    tables out. Row groups of 4 rows, so a read crosses row groups and batches."""
    folder.mkdir(parents=True, exist_ok=True)
    img, nuc, cel, cyt = ({} for _ in range(4))
    for name, (b, images) in batches.items():
        for i, (well, site) in enumerate(images, 1):
            key = b * 1_000_000 + i
            for col, v in [
                (BATCH_COLUMN, name),
                (IMAGE_KEY_COLUMN, key),
                ("ImageNumber", i),
                ("Metadata_Barcode", "P1"),
                ("Metadata_Well", well),
                ("Metadata_Site", site),
                ("Count_Nuclei", OBJECTS),
                ("Count_Cells", OBJECTS),
                ("FileName_HOECHST", f"{well}_s{site}.tif"),
                ("Intensity_MeanIntensity_HOECHST", b + i / 10),
            ]:
                img.setdefault(col, []).append(v)
            for o in range(1, OBJECTS + 1):
                for col, v in [
                    (BATCH_COLUMN, name),
                    (IMAGE_KEY_COLUMN, key),
                    ("ImageNumber", i),
                    ("ObjectNumber", o),
                    ("Number_Object_Number", o),
                    ("Children_Cells_Count", 1),
                    ("AreaShape_Area", nucleus_area(b, i, o)),
                    ("Intensity_MeanIntensity_HOECHST", nucleus_intensity(b, i, o)),
                ]:
                    nuc.setdefault(col, []).append(v)
                for col, v in [
                    (BATCH_COLUMN, name),
                    (IMAGE_KEY_COLUMN, key),
                    ("ImageNumber", i),
                    ("ObjectNumber", o),
                    ("Parent_Nuclei", nucleus_of(o)),
                    ("AreaShape_Area", cell_area(b, i, o)),
                ]:
                    cel.setdefault(col, []).append(v)
            # cytoplasm rows written in reverse order, one cell's missing
            for c in range(OBJECTS, 0, -1):
                parent = next(o for o in range(1, OBJECTS + 1) if cytoplasm_of(o) == c)
                if (name, i, parent) == NO_CYTOPLASM:
                    continue
                for col, v in [
                    (BATCH_COLUMN, name),
                    (IMAGE_KEY_COLUMN, key),
                    ("ImageNumber", i),
                    ("ObjectNumber", c),
                    ("Parent_Cells", parent),
                    ("Parent_Nuclei", nucleus_of(parent)),
                    ("Intensity_MeanIntensity_HOECHST", cytoplasm_intensity(b, i, c)),
                ]:
                    cyt.setdefault(col, []).append(v)
    i64, f32, s = pa.int64(), pa.float32(), pa.string()
    types = {
        BATCH_COLUMN: s,
        IMAGE_KEY_COLUMN: i64,
        "ImageNumber": i64,
        "ObjectNumber": i64,
        "Metadata_Barcode": s,
        "Metadata_Well": s,
        "Metadata_Site": i64,
        "Count_Nuclei": i64,
        "Count_Cells": i64,
        "FileName_HOECHST": s,
        "Intensity_MeanIntensity_HOECHST": f32,
        "Number_Object_Number": i64,
        "Children_Cells_Count": i64,
        "AreaShape_Area": f32,
        "Parent_Nuclei": i64,
        "Parent_Cells": i64,
    }
    for name, columns in [("Image", img), ("Nuclei", nuc), ("Cells", cel), ("Cytoplasm", cyt)]:
        if name not in skip:
            write(folder / f"{name}.parquet", columns, types)
    return folder


@pytest.fixture
def tables(tmp_path):
    return make_tables(tmp_path / "tables")


def single_cell(tables: Path, dest: Path, **kw) -> pa.Table:
    result = write_single_cell(tables, dest, **kw)
    table = pq.read_table(dest)
    assert (result.path, result.rows, result.columns) == (dest, table.num_rows, table.num_columns)
    return table


# --- the single-cell table ---------------------------------------------------------


def test_one_row_per_cell_with_compartment_prefixes_and_metadata(tables, tmp_path):
    table = single_cell(tables, tmp_path / "sc.parquet")
    cells = pq.read_table(tables / "Cells.parquet")
    assert table.num_rows == cells.num_rows == 12
    names = table.column_names
    for column in [
        BATCH_COLUMN,
        IMAGE_KEY_COLUMN,
        "Metadata_Plate",
        "Metadata_Barcode",
        "Metadata_Well",
        "Metadata_Site",
        "Metadata_ImageNumber",
        "Metadata_ObjectNumber",
        "Metadata_Cells_Parent_Nuclei",
        "Metadata_Nuclei_ObjectNumber",
        "Metadata_Cytoplasm_ObjectNumber",
        "Metadata_Cytoplasm_Parent_Cells",
        "Image_Count_Nuclei",
        "Image_FileName_HOECHST",
        "Image_Intensity_MeanIntensity_HOECHST",
        "Cells_AreaShape_Area",
        "Nuclei_AreaShape_Area",
        "Nuclei_Intensity_MeanIntensity_HOECHST",
        "Nuclei_Children_Cells_Count",
        "Cytoplasm_Intensity_MeanIntensity_HOECHST",
    ]:
        assert column in names, column
    assert all(n.startswith(("Metadata_", "Image_", "Cells_", "Cytoplasm_", "Nuclei_")) for n in names)
    assert not {"ImageNumber", "ObjectNumber", "Nuclei_Number_Object_Number", "Metadata_Well_1"} & set(names)
    assert names.index("Metadata_Well") < names.index("Image_Count_Nuclei") < names.index("Cells_AreaShape_Area")
    assert table.schema.field("Cells_AreaShape_Area").type == pa.float32()
    assert set(table.column("Metadata_Plate").to_pylist()) == {"P1"}
    rows = table.to_pylist()
    assert [(r[IMAGE_KEY_COLUMN], r["Metadata_ObjectNumber"]) for r in rows] == list(
        zip(cells.column(IMAGE_KEY_COLUMN).to_pylist(), cells.column("ObjectNumber").to_pylist())
    )


def test_batches_do_not_multiply_rows_as_a_join_on_image_and_object_number_does(tables, tmp_path):
    cells = pq.read_table(tables / "Cells.parquet")
    nuclei = pq.read_table(tables / "Nuclei.parquet").select(["ImageNumber", "ObjectNumber", "AreaShape_Area"])
    # the CytoTable pitfall: ImageNumber and ObjectNumber restart in every batch
    naive = cells.select(["ImageNumber", "ObjectNumber"]).join(nuclei, keys=["ImageNumber", "ObjectNumber"])
    assert naive.num_rows == 2 * cells.num_rows
    table = single_cell(tables, tmp_path / "sc.parquet")
    assert table.num_rows == cells.num_rows
    keys = list(zip(table.column(IMAGE_KEY_COLUMN).to_pylist(), table.column("Metadata_ObjectNumber").to_pylist()))
    assert len(set(keys)) == len(keys) == 12
    assert len({(r["Metadata_ImageNumber"], r["Metadata_ObjectNumber"]) for r in table.to_pylist()}) == 6


def test_each_cell_gets_its_own_image_nucleus_and_cytoplasm(tables, tmp_path):
    rows = single_cell(tables, tmp_path / "sc.parquet").to_pylist()
    for r in rows:
        b, i, o = int(r[BATCH_COLUMN][-1]), r["Metadata_ImageNumber"], r["Metadata_ObjectNumber"]
        well, site = BATCHES[r[BATCH_COLUMN]][1][i - 1]
        assert (r["Metadata_Well"], r["Metadata_Site"], r[IMAGE_KEY_COLUMN]) == (well, site, b * 1_000_000 + i)
        assert r["Image_Intensity_MeanIntensity_HOECHST"] == pytest.approx(b + i / 10)
        assert r["Cells_AreaShape_Area"] == cell_area(b, i, o)
        n = nucleus_of(o)
        assert r["Metadata_Nuclei_ObjectNumber"] == r["Metadata_Cells_Parent_Nuclei"] == n
        assert r["Nuclei_AreaShape_Area"] == nucleus_area(b, i, n)
        assert r["Nuclei_Intensity_MeanIntensity_HOECHST"] == pytest.approx(nucleus_intensity(b, i, n))
        if (r[BATCH_COLUMN], i, o) == NO_CYTOPLASM:
            assert r["Metadata_Cytoplasm_ObjectNumber"] is None
            assert r["Cytoplasm_Intensity_MeanIntensity_HOECHST"] is None
        else:
            c = cytoplasm_of(o)
            assert (r["Metadata_Cytoplasm_ObjectNumber"], r["Metadata_Cytoplasm_Parent_Cells"]) == (c, o)
            assert r["Cytoplasm_Intensity_MeanIntensity_HOECHST"] == pytest.approx(cytoplasm_intensity(b, i, c))


def test_small_chunks_across_images_and_batches_give_the_same_table(tables, tmp_path):
    whole = single_cell(tables, tmp_path / "a.parquet")
    for chunk_rows in (1, 4, 5):
        assert single_cell(tables, tmp_path / f"c{chunk_rows}.parquet", chunk_rows=chunk_rows).equals(whole)


def test_cell_without_nucleus_keeps_its_row_with_nulls(tmp_path):
    folder = make_tables(tmp_path / "t")
    cells = pq.read_table(folder / "Cells.parquet")
    parents = cells.column("Parent_Nuclei").to_pylist()
    parents[0] = 0  # CellProfiler's "no parent"
    cells = cells.set_column(cells.column_names.index("Parent_Nuclei"), "Parent_Nuclei", pa.array(parents, pa.int64()))
    pq.write_table(cells, folder / "Cells.parquet")
    rows = single_cell(folder, tmp_path / "sc.parquet").to_pylist()
    assert len(rows) == 12
    assert rows[0]["Nuclei_AreaShape_Area"] is None and rows[0]["Metadata_Nuclei_ObjectNumber"] is None
    assert rows[0]["Cells_AreaShape_Area"] == cell_area(1, 1, 1)
    assert all(r["Nuclei_AreaShape_Area"] is not None for r in rows[1:])


def test_without_nuclei_and_cytoplasm_tables_only_cells_and_image(tmp_path):
    folder = make_tables(tmp_path / "t", skip=("Nuclei", "Cytoplasm"))
    table = single_cell(folder, tmp_path / "sc.parquet")
    assert table.num_rows == 12
    assert not [n for n in table.column_names if n.startswith(("Nuclei_", "Cytoplasm_"))]


def test_two_cytoplasms_for_one_cell_is_an_error_not_a_second_row(tmp_path):
    folder = make_tables(tmp_path / "t")
    cyt = pq.read_table(folder / "Cytoplasm.parquet")
    pq.write_table(pa.concat_tables([cyt, cyt.slice(0, 1)]), folder / "Cytoplasm.parquet")
    with pytest.raises(SingleCellError, match="several objects match one Cells row"):
        write_single_cell(folder, tmp_path / "sc.parquet")
    assert list(tmp_path.glob("*.tmp")) == list(tmp_path.glob(".*")) == []


def test_rewrite_replaces_the_file_and_leaves_no_temporary_file(tables, tmp_path):
    dest = tmp_path / "out" / "sc.parquet"
    dest.parent.mkdir()
    dest.write_bytes(b"old")
    assert single_cell(tables, dest).num_rows == 12
    assert [p.name for p in dest.parent.iterdir()] == ["sc.parquet"]


# --- the real merge, then the join --------------------------------------------------


def write_csv(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


def test_merge_batches_output_joins_into_one_row_per_cell(tmp_path):
    dirs = []
    for b, wells in ((1, ["B02", "B03"]), (2, ["C04"])):
        d = tmp_path / "src" / f"batch_000{b}"
        objects = [(i, o) for i in range(1, len(wells) + 1) for o in (1, 2)]
        write_csv(
            d / "MyExpt_Image.csv",
            [
                [
                    "ImageNumber",
                    "Metadata_Barcode",
                    "Metadata_Well",
                    "Metadata_Site",
                    "Count_Nuclei",
                    "FileName_HOECHST",
                ],
                *[[i, "P1", w, 1, 2, f"{w}.tif"] for i, w in enumerate(wells, 1)],
            ],
        )
        write_csv(
            d / "MyExpt_Nuclei.csv",
            [
                ["ImageNumber", "ObjectNumber", "Number_Object_Number", "AreaShape_Area"],
                *[[i, o, o, 100 * b + 10 * i + o] for i, o in objects],
            ],
        )
        write_csv(
            d / "MyExpt_Cells.csv",
            [
                ["ImageNumber", "ObjectNumber", "Parent_Nuclei", "AreaShape_Area"],
                *[[i, o, 3 - o, 1000 * b + 10 * i + o] for i, o in objects],
            ],
        )
        write_csv(
            d / "MyExpt_Cytoplasm.csv",
            [
                ["ImageNumber", "ObjectNumber", "Parent_Cells", "Parent_Nuclei", "Intensity_MeanIntensity_HOECHST"],
                *[[i, o, o, 3 - o, "nan" if o == 2 else b + i / 10] for i, o in objects],
            ],
        )
        write_csv(d / "MyExpt_Experiment.csv", [["Key", "Value"], ["CellProfiler_Version", "4.2.8"]])
        dirs.append(d)
    merged = merge_batches(dirs, tmp_path / "merged")
    table = single_cell(tmp_path / "merged", tmp_path / "sc.parquet")
    assert table.num_rows == merged.tables["Cells"].rows == 6
    for r in table.to_pylist():
        b, i, o = int(r[BATCH_COLUMN][-1]), r["Metadata_ImageNumber"], r["Metadata_ObjectNumber"]
        assert r["Metadata_Well"] == {1: ["B02", "B03"], 2: ["C04"]}[b][i - 1]
        assert r["Metadata_Plate"] == "P1"
        assert r["Cells_AreaShape_Area"] == 1000 * b + 10 * i + o
        assert r["Nuclei_AreaShape_Area"] == 100 * b + 10 * i + (3 - o)
        expected = None if o == 2 else pytest.approx(b + i / 10)
        assert r["Cytoplasm_Intensity_MeanIntensity_HOECHST"] == expected
    profiles = pq.read_table(write_well_profiles(tmp_path / "merged", tmp_path / "profiles.parquet").path)
    assert profiles.column("Metadata_Well").to_pylist() == ["B02", "B03", "C04"]
    assert profiles.column("Metadata_Object_Count").to_pylist() == [2, 2, 2]


# --- per-well profiles --------------------------------------------------------------


def expected_cells_by_well() -> dict[str, list[tuple[int, int, int]]]:
    wells: dict[str, list] = {}
    for _name, (b, images) in BATCHES.items():
        for i, (well, _) in enumerate(images, 1):
            wells.setdefault(well, []).extend((b, i, o) for o in range(1, OBJECTS + 1))
    return wells


@pytest.mark.parametrize("from_folder", [True, False])
def test_well_medians_and_counts(tables, tmp_path, from_folder):
    source = tables if from_folder else write_single_cell(tables, tmp_path / "sc.parquet").path
    result = write_well_profiles(source, tmp_path / "profiles.parquet")
    profiles = pq.read_table(result.path)
    assert (result.wells, result.columns) == (profiles.num_rows, profiles.num_columns) == (3, profiles.num_columns)
    by_well = {r["Metadata_Well"]: r for r in profiles.to_pylist()}
    assert list(by_well) == ["B02", "B03", "C04"]
    for well, cells in expected_cells_by_well().items():
        row = by_well[well]
        assert row["Metadata_Plate"] == "P1"
        assert row["Metadata_Object_Count"] == len(cells)
        assert row["Metadata_Nuclei_Count"] == OBJECTS * len({(b, i) for b, i, _ in cells})
        assert row["Cells_AreaShape_Area"] == np.float32(np.median([cell_area(*c) for c in cells]))
        assert row["Nuclei_AreaShape_Area"] == np.float32(
            np.median([nucleus_area(b, i, nucleus_of(o)) for b, i, o in cells])
        )
        intensities = [nucleus_intensity(b, i, nucleus_of(o)) for b, i, o in cells]
        assert row["Nuclei_Intensity_MeanIntensity_HOECHST"] == np.float32(
            np.median(np.float32([v for v in intensities if v is not None]))
        )
        cyto = [
            np.float32(cytoplasm_intensity(b, i, cytoplasm_of(o)))
            for b, i, o in cells
            if (f"batch_000{b}", i, o) != NO_CYTOPLASM
        ]
        assert row["Cytoplasm_Intensity_MeanIntensity_HOECHST"] == np.float32(np.median(np.float64(cyto)))
    assert by_well["B02"]["Cells_AreaShape_Area"] == (11_103 + 11_201) / 2  # worked by hand
    assert profiles.schema.field("Cells_AreaShape_Area").type == pa.float32()
    assert not [n for n in profiles.column_names if n.startswith("Image_")]
    assert list(tmp_path.glob(".*")) == []


def test_medians_do_not_depend_on_the_memory_budget(tables, tmp_path):
    a = write_well_profiles(tables, tmp_path / "a.parquet").path
    b = write_well_profiles(tables, tmp_path / "b.parquet", memory_budget=1).path
    assert pq.read_table(a).equals(pq.read_table(b))


def test_a_feature_without_values_in_a_well_is_null(tmp_path):
    folder = make_tables(tmp_path / "t")
    cells = pq.read_table(folder / "Cells.parquet")
    batch2 = [b == "batch_0002" for b in cells.column(BATCH_COLUMN).to_pylist()]
    area = [None if is2 else v for is2, v in zip(batch2, cells.column("AreaShape_Area").to_pylist())]
    cells = cells.set_column(cells.column_names.index("AreaShape_Area"), "AreaShape_Area", pa.array(area, pa.float32()))
    pq.write_table(cells, folder / "Cells.parquet")
    profiles = pq.read_table(write_well_profiles(folder, tmp_path / "p.parquet").path).to_pylist()
    assert [r["Cells_AreaShape_Area"] is None for r in profiles] == [False, True, True]
