"""Merging per-batch CellProfiler CSVs into one Parquet per object table."""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from batch_outputs import make_batch, write_csv

from cpp_dagster.features.columns import BATCH_COLUMN, IMAGE_KEY_COLUMN
from cpp_dagster.features.merge import MergeError, merge_batches, table_files
from cpp_dagster.features.results_folder import versions_dir


@pytest.fixture
def two_batches(tmp_path):
    return [
        make_batch(tmp_path / "src" / "batch_0001", 1, wells=("B02", "B03")),
        make_batch(tmp_path / "src" / "batch_0002", 2, wells=("C04", "C05")),
    ]


def read(dest: Path, name: str) -> pa.Table:
    return pq.read_table(dest / f"{name}.parquet")


def rows(table: pa.Table) -> list[dict]:
    return table.to_pylist()


# --- batches kept apart -----------------------------------------------------------


def test_rows_of_different_batches_never_collide(two_batches, tmp_path):
    result = merge_batches(two_batches, tmp_path / "dest")
    nuclei = rows(read(tmp_path / "dest", "Nuclei"))
    assert len(nuclei) == result.tables["Nuclei"].rows == 8
    assert len({(r["ImageNumber"], r["ObjectNumber"]) for r in nuclei}) == 4  # CellProfiler's keys collide
    assert len({(r[IMAGE_KEY_COLUMN], r["ObjectNumber"]) for r in nuclei}) == 8
    assert {r[BATCH_COLUMN] for r in nuclei} == {"batch_0001", "batch_0002"}


def test_object_rows_carry_the_image_key_of_their_image(two_batches, tmp_path):
    merge_batches(two_batches, tmp_path / "dest")
    images = {r[IMAGE_KEY_COLUMN]: r for r in rows(read(tmp_path / "dest", "Image"))}
    assert len(images) == 4
    for cell in rows(read(tmp_path / "dest", "Cells")):
        image = images[cell[IMAGE_KEY_COLUMN]]
        assert (image[BATCH_COLUMN], image["ImageNumber"]) == (cell[BATCH_COLUMN], cell["ImageNumber"])
        batch = int(cell[BATCH_COLUMN][-1])
        assert cell["AreaShape_Area"] == 1000 * batch + 10 * cell["ImageNumber"] + cell["ObjectNumber"]
    assert images[next(k for k, r in images.items() if r["Metadata_Well"] == "C05")]["ImageNumber"] == 2


def test_batch_output_folders_are_named_after_their_batch(tmp_path):
    dirs = [make_batch(tmp_path / f"batch_000{k}" / "output", k) for k in (1, 2)]
    merge_batches(dirs, tmp_path / "dest")
    assert read(tmp_path / "dest", "Image").column(BATCH_COLUMN).to_pylist() == [
        "batch_0001",
        "batch_0001",
        "batch_0002",
        "batch_0002",
    ]


# --- types --------------------------------------------------------------------------


def test_column_types(two_batches, tmp_path):
    merge_batches(two_batches, tmp_path / "dest")
    image = read(tmp_path / "dest", "Image").schema
    cells = read(tmp_path / "dest", "Cells").schema
    for schema, name, t in [
        (image, "Intensity_MeanIntensity_DNA", pa.float32()),
        (cells, "AreaShape_Area", pa.float32()),
        (image, "ImageNumber", pa.int64()),
        (cells, "ObjectNumber", pa.int64()),
        (cells, "Parent_Nuclei", pa.int64()),
        (image, "Count_Nuclei", pa.int64()),
        (image, IMAGE_KEY_COLUMN, pa.int64()),
        (image, "Metadata_Site", pa.int64()),
        (image, "Metadata_Well", pa.string()),
        (image, BATCH_COLUMN, pa.string()),
    ]:
        assert schema.field(name).type == t, name


def test_lowercase_nan_is_null_not_text(two_batches, tmp_path):
    merge_batches(two_batches, tmp_path / "dest")
    nuclei = read(tmp_path / "dest", "Nuclei")
    column = nuclei.column("Intensity_MeanIntensity_DNA")
    assert column.type == pa.float32()
    assert column.null_count == 4 and set(column.to_pylist()) == {None, 0.25}


def test_float_values_survive_as_float32(two_batches, tmp_path):
    merge_batches(two_batches, tmp_path / "dest")
    values = read(tmp_path / "dest", "Image").column("Intensity_MeanIntensity_DNA").to_pylist()
    assert values == pytest.approx([1.1, 1.2, 2.1, 2.2], rel=1e-6)


# --- schema drift -------------------------------------------------------------------


def test_column_missing_in_one_batch_is_null_there_and_reported(tmp_path):
    a = make_batch(tmp_path / "batch_0001", 1)
    b = make_batch(tmp_path / "batch_0002", 2)
    write_csv(
        a / "MyExpt_Image.csv",
        [["ImageNumber", "Metadata_Well", "Granularity_1_DNA"], [1, "B02", 0.75], [2, "B03", 0.5]],
    )
    write_csv(b / "MyExpt_Image.csv", [["ImageNumber", "Metadata_Well"], [1, "C04"]])
    result = merge_batches([a, b], tmp_path / "dest")
    table = read(tmp_path / "dest", "Image")
    assert table.column("Granularity_1_DNA").to_pylist() == [0.75, 0.5, None]
    assert result.tables["Image"].drift == ("Granularity_1_DNA",)
    assert result.tables["Nuclei"].drift == ()


def test_column_empty_in_one_batch_takes_the_numeric_type_of_the_others(tmp_path):
    a = write_csv(
        tmp_path / "batch_0001" / "MyExpt_Image.csv", [["ImageNumber", "Texture_Foo"], [1, ""], [2, "nan"]]
    ).parent
    b = write_csv(tmp_path / "batch_0002" / "MyExpt_Image.csv", [["ImageNumber", "Texture_Foo"], [1, 3.5]]).parent
    merge_batches([a, b], tmp_path / "dest")
    column = read(tmp_path / "dest", "Image").column("Texture_Foo")
    assert column.type == pa.float32() and column.to_pylist() == [None, None, 3.5]


def test_column_with_text_in_one_batch_is_text(tmp_path):
    a = write_csv(tmp_path / "batch_0001" / "MyExpt_Image.csv", [["ImageNumber", "Metadata_Plate"], [1, 1234]]).parent
    b = write_csv(
        tmp_path / "batch_0002" / "MyExpt_Image.csv", [["ImageNumber", "Metadata_Plate"], [1, "P-5678"]]
    ).parent
    merge_batches([a, b], tmp_path / "dest")
    column = read(tmp_path / "dest", "Image").column("Metadata_Plate")
    assert column.type == pa.string() and column.to_pylist() == ["1234", "P-5678"]


def test_date_like_columns_are_kept_as_text(tmp_path):
    a = write_csv(
        tmp_path / "batch_0001" / "MyExpt_Image.csv",
        [["ImageNumber", "Metadata_Date", "Metadata_Time"], [1, "2026-11-03", "10:30:00"]],
    ).parent
    merge_batches([a], tmp_path / "dest")
    assert rows(read(tmp_path / "dest", "Image"))[0] == {
        BATCH_COLUMN: "batch_0001",
        IMAGE_KEY_COLUMN: 1_000_001,
        "ImageNumber": 1,
        "Metadata_Date": "2026-11-03",
        "Metadata_Time": "10:30:00",
    }


def test_values_land_in_their_columns_when_batches_order_columns_differently(tmp_path):
    a = write_csv(
        tmp_path / "batch_0001" / "MyExpt_Image.csv",
        [["ImageNumber", "Metadata_Well", "Metadata_Site", "Intensity_X"], [1, "B02", 1, 0.5]],
    ).parent
    b = write_csv(
        tmp_path / "batch_0002" / "MyExpt_Image.csv",
        [["Intensity_X", "Metadata_Site", "ImageNumber", "Metadata_Well"], [7.25, 3, 1, "C04"], [2.25, 2, 2, "C05"]],
    ).parent
    merge_batches([a, b], tmp_path / "dest")
    table = read(tmp_path / "dest", "Image")
    assert table.column_names[2:] == ["ImageNumber", "Metadata_Well", "Metadata_Site", "Intensity_X"]
    last = rows(table)[-1]
    assert (last["ImageNumber"], last["Metadata_Well"], last["Metadata_Site"], last["Intensity_X"]) == (
        2,
        "C05",
        2,
        2.25,
    )


def test_a_column_turning_to_text_after_the_first_block_is_text(tmp_path):
    body = [[i, f"{i}.5", ""] for i in range(1, 100_000)] + [[100_000, "late text", "x"]]
    a = write_csv(tmp_path / "batch_0001" / "MyExpt_Image.csv", [["ImageNumber", "Metadata_Note", "Late"], *body])
    assert a.stat().st_size > 1 << 20  # beyond the first block CSV type inference looks at
    merge_batches([a.parent], tmp_path / "dest")
    table = read(tmp_path / "dest", "Image")
    assert table.schema.field("Metadata_Note").type == pa.string()
    assert table.column("Metadata_Note").to_pylist()[-2:] == ["99999.5", "late text"]
    assert table.column("Late").to_pylist()[-2:] == [None, "x"]


# --- Experiment and other files -----------------------------------------------------


def test_experiment_table_is_copied_once_from_the_first_batch(two_batches, tmp_path):
    result = merge_batches(two_batches, tmp_path / "dest")
    copied = tmp_path / "dest" / "Experiment.csv"
    assert copied.read_bytes() == (two_batches[0] / "MyExpt_Experiment.csv").read_bytes()
    values = dict(csv.reader(copied.open(newline="")))
    assert values["Pipeline_Pipeline"] == "CellProfiler Pipeline\nVersion:5\nModuleCount:12"
    assert values["Run_Timestamp"] == "2026-11-01T10:00:00"
    assert "Experiment" not in result.tables and not (tmp_path / "dest" / "Experiment.parquet").exists()
    assert copied in result.files


def test_other_files_are_copied_into_the_destination(two_batches, tmp_path):
    (two_batches[0] / "ICF_HOECHST.npy").write_bytes(b"\x93NUMPY fake")
    (two_batches[1] / "qc").mkdir()
    (two_batches[1] / "qc" / "C04_s1.png").write_bytes(b"\x89PNG fake")
    result = merge_batches(two_batches, tmp_path / "dest")
    dest = tmp_path / "dest"
    assert (dest / "ICF_HOECHST.npy").read_bytes() == b"\x93NUMPY fake"
    assert (dest / "qc" / "C04_s1.png").read_bytes() == b"\x89PNG fake"
    assert {dest / "ICF_HOECHST.npy", dest / "qc" / "C04_s1.png", dest / "Image.parquet"} <= set(result.files)
    assert sorted(p.name for p in dest.iterdir() if not p.name.startswith(".")) == sorted(
        ["Cells.parquet", "Experiment.csv", "ICF_HOECHST.npy", "Image.parquet", "Nuclei.parquet", "qc"]
    )


def test_two_batches_writing_the_same_file_is_an_error(two_batches, tmp_path):
    for b in two_batches:
        (b / "qc").mkdir()
        (b / "qc" / "plate.png").write_bytes(b.name.encode())
    with pytest.raises(MergeError, match="batch_0001 and batch_0002 both wrote qc/plate.png"):
        merge_batches(two_batches, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()  # nothing published
    assert list(versions_dir(tmp_path / "dest").iterdir()) == []  # and no staging left


# --- atomic writes ------------------------------------------------------------------


def test_no_staging_folder_remains_after_a_merge(two_batches, tmp_path):
    merge_batches(two_batches, tmp_path / "dest")
    merge_batches(two_batches, tmp_path / "dest")
    (version,) = versions_dir(tmp_path / "dest").iterdir()  # the current version only
    assert (tmp_path / "dest").resolve() == version.resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".dest.versions", "dest", "src"]


def test_a_remerge_replaces_the_old_tables(two_batches, tmp_path):
    merge_batches(two_batches, tmp_path / "dest")
    newer = make_batch(tmp_path / "new" / "batch_0001", 7, wells=("H12",), nuclei=1)
    result = merge_batches([newer], tmp_path / "dest")
    image = read(tmp_path / "dest", "Image")
    assert image.column("Metadata_Well").to_pylist() == ["H12"]
    assert read(tmp_path / "dest", "Nuclei").column("AreaShape_Area").to_pylist() == [711.0]
    assert result.tables["Image"].rows == 1


def test_a_failed_merge_leaves_the_previous_tables_untouched(two_batches, tmp_path):
    dest = tmp_path / "dest"
    merge_batches(two_batches, dest)
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    bad = make_batch(tmp_path / "new" / "batch_0001", 5)
    write_csv(bad / "MyExpt_Nuclei.csv", [["ObjectNumber", "AreaShape_Area"], [1, 5.0]])
    with pytest.raises(MergeError, match="no ImageNumber"):
        merge_batches([bad], dest)
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before


def test_nothing_to_merge_is_an_error(tmp_path):
    with pytest.raises(MergeError, match="no batch folders"):
        merge_batches([], tmp_path / "dest")


# --- table files --------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["MyExpt_", "", "plate_42_run_"])
def test_table_files_finds_tables_with_any_prefix(tmp_path, prefix):
    folder = make_batch(tmp_path / "batch_0001", 1, prefix=prefix)
    (folder / "ICF_HOECHST.npy").write_bytes(b"")
    found = table_files(folder)
    assert found == {name: folder / f"{prefix}{name}.csv" for name in ("Cells", "Experiment", "Image", "Nuclei")}


def test_table_files_with_an_object_named_like_image(tmp_path):
    folder = make_batch(tmp_path / "batch_0001", 1)
    write_csv(folder / "MyExpt_FilteredImage.csv", [["ImageNumber", "ObjectNumber"], [1, 1]])
    found = table_files(folder)
    assert found["Image"].name == "MyExpt_Image.csv"
    assert found["FilteredImage"].name == "MyExpt_FilteredImage.csv"


def test_unprefixed_tables_merge_under_their_object_name(tmp_path):
    dirs = [make_batch(tmp_path / f"batch_000{k}", k, prefix="") for k in (1, 2)]
    result = merge_batches(dirs, tmp_path / "dest")
    assert set(result.tables) == {"Image", "Nuclei", "Cells"}
    assert result.tables["Cells"].rows == 8 and result.tables["Cells"].path == tmp_path / "dest" / "Cells.parquet"


def test_image_key_comes_from_the_batch_number_not_the_merge_order(tmp_path):
    """Merging batch_0002 alone gives its rows the same keys as merging it with others."""
    import pyarrow.parquet as pq

    from cpp_dagster.features.merge import IMAGE_KEY_STRIDE, merge_batches

    batch = tmp_path / "src" / "batch_0002" / "output"
    batch.mkdir(parents=True)
    (batch / "MyExpt_Image.csv").write_text("ImageNumber,Metadata_Well,Count_Nuclei\n1,B02,3\n2,B03,4\n")
    merge_batches([batch], tmp_path / "dest")
    keys = pq.read_table(tmp_path / "dest" / "Image.parquet")[IMAGE_KEY_COLUMN].to_pylist()
    assert keys == [2 * IMAGE_KEY_STRIDE + 1, 2 * IMAGE_KEY_STRIDE + 2]


def test_a_remerge_removes_tables_the_previous_merge_wrote_and_this_one_did_not(two_batches, tmp_path):
    dest = tmp_path / "dest"
    unrelated = dest / "notes.txt"
    dest.mkdir()
    unrelated.write_text("a scientist's file")
    merge_batches(two_batches, dest)
    assert (dest / "Cells.parquet").exists()
    newer = make_batch(tmp_path / "new" / "batch_0001", 3)
    (newer / "MyExpt_Cells.csv").unlink()  # the pipeline no longer exports Cells
    result = merge_batches([newer], dest)
    assert "Cells" not in result.tables
    assert not (dest / "Cells.parquet").exists()
    assert (dest / "Nuclei.parquet").exists() and (dest / "Image.parquet").exists()
    assert unrelated.read_text() == "a scientist's file"


def test_tables_can_go_to_a_subfolder_while_other_files_stay_in_the_destination(two_batches, tmp_path):
    (two_batches[0] / "ICF_HOECHST.npy").write_bytes(b"\x93NUMPY fake")
    dest = tmp_path / "dest"
    result = merge_batches(two_batches, dest, tables_dir=dest / "sub7_icf")
    assert result.tables["Image"].path == dest / "sub7_icf" / "Image.parquet"
    assert read(dest / "sub7_icf", "Nuclei").num_rows == 8
    assert (dest / "sub7_icf" / "Experiment.csv").is_file() and not (dest / "Image.parquet").exists()
    assert (dest / "ICF_HOECHST.npy").read_bytes() == b"\x93NUMPY fake"
    (two_batches[0] / "MyExpt_Cells.csv").unlink()
    (two_batches[1] / "MyExpt_Cells.csv").unlink()
    merge_batches(two_batches, dest, tables_dir=dest / "sub7_icf")  # the re-merge removes its stale table
    assert not (dest / "sub7_icf" / "Cells.parquet").exists() and (dest / "sub7_icf" / "Nuclei.parquet").exists()
    with pytest.raises(MergeError, match="is not inside"):
        merge_batches(two_batches, dest, tables_dir=tmp_path / "elsewhere")
