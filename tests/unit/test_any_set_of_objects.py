"""The single-cell table, well profiles and cell-count check on whatever objects a
pipeline exported: the base object is Cells, else the object the others relate to; an
object several per base object (ExampleHuman's PH3) is summarised per image, never
multiplied into the base rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_single_cell_and_profiles import BATCHES, NO_CYTOPLASM, OBJECTS, cytoplasm_intensity, make_tables

from cpp_dagster.features.checks import well_counts_outliers
from cpp_dagster.features.columns import BATCH_COLUMN, IMAGE_KEY_COLUMN
from cpp_dagster.features.objects import base_object, relate
from cpp_dagster.features.profiles import write_well_profiles
from cpp_dagster.features.single_cell import SingleCellError, write_single_cell

# PH3 spots per image: nucleus 1 has two, nucleus 3 one, nucleus 2 none
PH3_PARENTS = [1, 1, 3]


def ph3_area(b: int, i: int, p: int) -> float:
    return float(10 * b + i + p)  # p: the spot's position 0..2 in its image


def add_ph3(folder: Path) -> None:
    """A PH3 table related to Nuclei (Parent_Nuclei), as RelateObjects writes it, and the
    nuclei's Children_PH3_Count."""
    cols: dict[str, list] = {}
    for name, (b, images) in BATCHES.items():
        for i in range(1, len(images) + 1):
            for p, parent in enumerate(PH3_PARENTS):
                for col, v in [
                    (BATCH_COLUMN, name),
                    (IMAGE_KEY_COLUMN, b * 1_000_000 + i),
                    ("ImageNumber", i),
                    ("ObjectNumber", p + 1),
                    ("Parent_Nuclei", parent),
                    ("AreaShape_Area", ph3_area(b, i, p)),
                ]:
                    cols.setdefault(col, []).append(v)
    pq.write_table(pa.table(cols), folder / "PH3.parquet")
    nuclei = pq.read_table(folder / "Nuclei.parquet")
    children = [PH3_PARENTS.count(o) for o in nuclei.column("ObjectNumber").to_pylist()]
    pq.write_table(
        nuclei.append_column("Children_PH3_Count", pa.array(children, pa.int64())),
        folder / "Nuclei.parquet",
        row_group_size=4,
    )


def single_cell(folder: Path, dest: Path, **kw) -> pa.Table:
    result = write_single_cell(folder, dest, **kw)
    table = pq.read_table(dest)
    assert (result.rows, result.columns) == (table.num_rows, table.num_columns)
    return table


def test_base_object_rule():
    assert base_object({"Nuclei": ["ObjectNumber"], "Cells": ["Parent_Nuclei"]}) == "Cells"
    assert base_object({"Nuclei": ["ObjectNumber"]}) == "Nuclei"
    assert (
        base_object({"PH3": ["Parent_Nuclei"], "Nuclei": ["Children_PH3_Count"], "Cytoplasm": ["Parent_Nuclei"]})
        == "Nuclei"
    )
    assert base_object({"Speckles": [], "Bodies": []}) == "Bodies"  # unrelated: by name


def test_without_cells_nuclei_are_the_rows_and_their_cytoplasm_is_joined(tmp_path):
    folder = make_tables(tmp_path / "t", skip=("Cells",))
    table = single_cell(folder, tmp_path / "sc.parquet")
    nuclei = pq.read_table(folder / "Nuclei.parquet")
    assert table.num_rows == nuclei.num_rows == 12
    assert table.column("Metadata_ObjectNumber").to_pylist() == nuclei.column("ObjectNumber").to_pylist()
    names = table.column_names
    assert "Nuclei_AreaShape_Area" in names and "Cytoplasm_Intensity_MeanIntensity_HOECHST" in names
    assert "Metadata_Cytoplasm_Parent_Nuclei" in names
    assert not [n for n in names if n.startswith("Cells_")]
    for r in table.to_pylist():
        b, i, n = int(r[BATCH_COLUMN][-1]), r["Metadata_ImageNumber"], r["Metadata_ObjectNumber"]
        cell = OBJECTS + 1 - n  # the cytoplasm's cell is numbered against its nucleus
        if (r[BATCH_COLUMN], i, cell) == NO_CYTOPLASM:
            assert r["Metadata_Cytoplasm_ObjectNumber"] is None
        else:
            assert r["Metadata_Cytoplasm_Parent_Nuclei"] == n
            c = r["Metadata_Cytoplasm_ObjectNumber"]
            assert r["Cytoplasm_Intensity_MeanIntensity_HOECHST"] == pytest.approx(cytoplasm_intensity(b, i, c))


def test_an_object_several_per_nucleus_is_summarised_per_image_not_multiplied(tmp_path):
    folder = make_tables(tmp_path / "t")
    add_ph3(folder)
    related = relate({n: folder / f"{n}.parquet" for n in ("Cells", "Nuclei", "Cytoplasm", "PH3")})
    assert (related.base, sorted(related.joined), related.summarised) == ("Cells", ["Cytoplasm", "Nuclei"], ["PH3"])
    table = single_cell(folder, tmp_path / "sc.parquet")
    assert table.num_rows == 12  # one row per cell, as without PH3
    assert not [n for n in table.column_names if n.startswith("PH3_") and not n.startswith("PH3_Image_")]
    assert "PH3_Image_Mean_Parent_Nuclei" not in table.column_names  # bookkeeping is not averaged
    for r in table.to_pylist():
        b, i = int(r[BATCH_COLUMN][-1]), r["Metadata_ImageNumber"]
        assert r["PH3_Image_Count"] == len(PH3_PARENTS)
        assert r["PH3_Image_Mean_AreaShape_Area"] == pytest.approx(np.mean([ph3_area(b, i, p) for p in range(3)]))

    # the same with Nuclei as the base (no Cells table): PH3 is still not one-to-one
    (folder / "Cells.parquet").unlink()
    related = relate({n: folder / f"{n}.parquet" for n in ("Nuclei", "Cytoplasm", "PH3")})
    assert (related.base, sorted(related.joined), related.summarised) == ("Nuclei", ["Cytoplasm"], ["PH3"])
    assert single_cell(folder, tmp_path / "sc2.parquet").num_rows == 12


def test_an_image_without_objects_of_a_summarised_kind_counts_zero(tmp_path):
    folder = make_tables(tmp_path / "t")
    add_ph3(folder)
    ph3 = pq.read_table(folder / "PH3.parquet")
    pq.write_table(ph3.filter(pa.compute.not_equal(ph3[IMAGE_KEY_COLUMN], 1_000_001)), folder / "PH3.parquet")
    rows = single_cell(folder, tmp_path / "sc.parquet").to_pylist()
    first = [r for r in rows if r[IMAGE_KEY_COLUMN] == 1_000_001]
    assert len(first) == OBJECTS and all(r["PH3_Image_Count"] == 0 for r in first)
    assert all(r["PH3_Image_Mean_AreaShape_Area"] is None for r in first)


def test_nuclei_only_tables_give_profiles_and_counts_on_nuclei(tmp_path):
    folder = make_tables(tmp_path / "t", skip=("Cells", "Cytoplasm"))
    table = single_cell(folder, tmp_path / "sc.parquet")
    assert table.num_rows == 12 and "Nuclei_AreaShape_Area" in table.column_names
    profiles = pq.read_table(write_well_profiles(folder, tmp_path / "p.parquet").path).to_pylist()
    assert [(p["Metadata_Well"], p["Metadata_Object_Count"], p["Metadata_Nuclei_Count"]) for p in profiles] == [
        ("B02", 6, 6),
        ("B03", 3, 3),
        ("C04", 3, 3),
    ]
    assert profiles[0]["Nuclei_AreaShape_Area"] is not None
    outcome = well_counts_outliers(folder)
    assert outcome.metadata["object"] == "Nuclei"
    assert outcome.metadata["counts"] == {"B02": 6, "B03": 3, "C04": 3}
    assert "0 Nuclei" in outcome.metadata["rule"]


def test_no_object_table_is_a_clear_error(tmp_path):
    folder = make_tables(tmp_path / "t", skip=("Cells", "Nuclei", "Cytoplasm"))
    with pytest.raises(SingleCellError, match="no object table"):
        write_single_cell(folder, tmp_path / "sc.parquet")
    assert not (tmp_path / "sc.parquet").exists()
