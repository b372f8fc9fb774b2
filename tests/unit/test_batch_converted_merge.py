"""Each batch converts its own tables, and the final merge concatenates them into Parquet:
the feature tables are the same as the CSV route's (same columns, types and values),
with drift between batches, for an Image-only pipeline and at JUMP width."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cpp_dagster.features.batch_tables import COMPLETE, TABLES, convert_batch, converted, merge_converted
from cpp_dagster.features.merge import MergeError, MergeResult, merge_batches


def write_csv(path: Path, header: list[str], rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def experiment(output: Path) -> None:
    write_csv(output / "MyExpt_Experiment.csv", ["Key", "Value"], [["CellProfiler_Version", "5.0.0"]])


def drifting_batches(root: Path) -> list[Path]:
    """Three batch work folders whose tables drift the ways real pipelines do."""
    batches = [root / f"batch_{k:04d}" for k in range(3)]
    images = {
        # Metadata_Plate: numbers in one batch, text in another (the CSV route keeps `0.50`
        # as written); Metadata_Row: empty in one batch, integers in another (int64);
        # Intensity_Mean: integral values in one batch (float32 all the same)
        0: (
            ["ImageNumber", "Metadata_Well", "Metadata_Plate", "Metadata_Row", "Count_Nuclei", "Intensity_Mean"],
            [[1, "B02", "12", "nan", 2, 3], [2, "B03", "0.50", "nan", 2, 4]],
        ),
        1: (
            ["ImageNumber", "Metadata_Well", "Metadata_Row", "Count_Nuclei", "Intensity_Mean", "Granularity_1"],
            [[1, "C02", 3, 2, 0.25, "nan"], [2, "C03", 3, 2, "nan", 1.5]],
        ),
        2: (
            ["ImageNumber", "Metadata_Well", "Metadata_Plate", "Count_Nuclei", "Intensity_Mean"],
            [[1, "D02", "P1", 2, 1e-3], [2, "D03", "P2", 2, 2.5e10]],
        ),
    }
    for k, d in enumerate(batches):
        header, rows = images[k]
        write_csv(d / "output" / "MyExpt_Image.csv", header, rows)
        extra = ["AreaShape_Extra"] if k == 1 else []
        write_csv(
            d / "output" / "MyExpt_Nuclei.csv",
            ["ImageNumber", "ObjectNumber", "Parent_Cells", *extra, "AreaShape_Area"],
            [[i, o, o, *([o * 0.5] if extra else []), 100.0 * k + 10 * i + o] for i in (1, 2) for o in (1, 2)],
        )
        experiment(d / "output")
    # A late type change: a column of integers for the first MB of the file, then decimals.
    rows = [[1, o, o, 0.1, o] for o in range(1, 60_001)]
    rows[-1][4] = 2.75
    write_csv(
        batches[2] / "output" / "MyExpt_Cells.csv",
        ["ImageNumber", "ObjectNumber", "Parent_Nuclei", "AreaShape_Area", "Intensity_Late"],
        rows,
    )
    return batches


def assert_same_tables(csv_route: MergeResult, parquet_route: MergeResult) -> None:
    assert sorted(csv_route.tables) == sorted(parquet_route.tables)
    for name, a in csv_route.tables.items():
        b = parquet_route.tables[name]
        assert (a.rows, a.columns, a.drift) == (b.rows, b.columns, b.drift), name
        ta, tb = pq.read_table(a.path), pq.read_table(b.path)
        assert ta.schema.equals(tb.schema), (name, ta.schema, tb.schema)
        assert ta.equals(tb), name

    def relative(result: MergeResult) -> list[Path]:
        dest = next(iter(result.tables.values())).path.parent
        return sorted(p.relative_to(dest) for p in result.files)

    assert relative(csv_route) == relative(parquet_route)


def both_routes(batches: list[Path], tmp_path: Path) -> tuple[MergeResult, MergeResult]:
    return (
        merge_batches([d / "output" for d in batches], tmp_path / "csv-route"),
        merge_converted(batches, tmp_path / "parquet-route"),
    )


def test_batches_with_drift_give_the_same_tables_by_both_routes(tmp_path):
    batches = drifting_batches(tmp_path / "work")
    for d in batches:
        convert_batch(d)  # what each batch step does
    csv_route, parquet_route = both_routes(batches, tmp_path)
    assert_same_tables(csv_route, parquet_route)
    image = pq.read_table(parquet_route.tables["Image"].path)
    assert image["Metadata_Plate"].to_pylist() == ["12", "0.50", None, None, "P1", "P2"]
    assert str(image.schema.field("Metadata_Row").type) == "int64"
    assert str(image.schema.field("Intensity_Mean").type) == "float"
    assert parquet_route.tables["Nuclei"].drift == ("AreaShape_Extra",)


def test_an_image_only_pipeline_gives_the_same_tables_and_files_by_both_routes(tmp_path):
    batches = [tmp_path / "work" / f"batch_{k:04d}" for k in (1, 2)]
    for k, d in enumerate(batches, 1):
        write_csv(
            d / "output" / "Illum_Image.csv",
            ["ImageNumber", "Metadata_Well", "Threshold_DNA"],
            [[1, f"B0{k}", 0.01 * k], [2, f"C0{k}", "nan"]],
        )
        experiment(d / "output")
        (d / "output" / f"ICF_DNA_{k}.npy").write_bytes(b"\x93NUMPY" + bytes([k]))
        convert_batch(d)
    assert_same_tables(*both_routes(batches, tmp_path))
    assert (tmp_path / "parquet-route" / "ICF_DNA_2.npy").read_bytes().endswith(b"\x02")


def test_jump_width_tables_give_the_same_tables_by_both_routes(tmp_path):
    """~2,000 columns per compartment, the width of real JUMP tables."""
    features = [f"Texture_Feature{j}_DNA_3_00_256" for j in range(2000)]
    batches = [tmp_path / "work" / f"batch_{k:04d}" for k in (1, 2, 3)]
    for k, d in enumerate(batches, 1):
        cols = features if k != 2 else features[:1500] + ["Intensity_OnlyHere_DNA"] + features[1500:]
        write_csv(
            d / "output" / "MyExpt_Image.csv",
            ["ImageNumber", "Metadata_Batch", "Metadata_Well", *cols],
            [
                [
                    i,
                    "2021_04_26_Batch1",
                    f"A0{i}",
                    *[("nan" if (i + j) % 97 == 0 else (k * i + j) / 7) for j in range(len(cols))],
                ]
                for i in (1, 2)
            ],
        )
        write_csv(
            d / "output" / "MyExpt_Cells.csv",
            ["ImageNumber", "ObjectNumber", "Parent_Nuclei", *cols],
            [[i, o, o, *[(i * o + j * k) / 3 for j in range(len(cols))]] for i in (1, 2) for o in (1, 2, 3)],
        )
        experiment(d / "output")
        convert_batch(d)
    csv_route, parquet_route = both_routes(batches, tmp_path)
    assert_same_tables(csv_route, parquet_route)
    assert parquet_route.tables["Cells"].columns == 2 + 3 + 2001


def test_types_shared_between_batches_give_the_same_tables(tmp_path):
    """Batches with one header share the types probed from the first batch converted
    (`.probes/`): a batch whose values are wider (decimals where the first had integers)
    is scanned whole, and a batch of empty wells (no values to type) shares nothing."""
    header = ["ImageNumber", "ObjectNumber", "Metadata_Site", "Location_Center_X"]
    values = {1: [[1, 1, 1, 5], [1, 2, 1, 6]], 2: [], 3: [[1, 1, 2.5, 7.25], [2, 1, 3, "nan"]]}
    batches = []
    for k in (2, 1, 3):  # the order the batch steps happen to finish in
        d = tmp_path / "work" / f"batch_{k:04d}"
        write_csv(d / "output" / "MyExpt_Image.csv", ["ImageNumber", "Metadata_Well"], [[1, "B02"], [2, "B03"]])
        write_csv(d / "output" / "MyExpt_Nuclei.csv", header, values[k])
        convert_batch(d)
        batches.append(d)
    assert len(list((tmp_path / "work" / ".probes").glob("*.schema"))) == 2  # Image, and Nuclei of batch 1
    csv_route, parquet_route = both_routes(sorted(batches), tmp_path)
    assert_same_tables(csv_route, parquet_route)
    nuclei = pq.read_table(parquet_route.tables["Nuclei"].path)
    assert nuclei["Metadata_Site"].to_pylist() == [1.0, 1.0, 2.5, 3.0]


def test_a_work_area_from_before_the_conversion_still_merges(tmp_path):
    """No `tables/` at all (batches run before this change), a killed conversion's
    staging, a conversion without its complete.json and one older than its CSVs: the
    merge converts those batches itself and the tables are the same."""
    batches = drifting_batches(tmp_path / "work")
    convert_batch(batches[1])
    convert_batch(batches[2])
    (batches[0] / f"{TABLES}.partial-killed").mkdir()
    (batches[0] / f"{TABLES}.partial-killed" / "Image.arrow").write_bytes(b"ARROW1 half a file")
    (batches[1] / TABLES / COMPLETE).unlink()
    with open(batches[2] / "output" / "MyExpt_Nuclei.csv", "a") as f:
        f.write("3,1,1,999.5\n")  # its CSV changed after it was converted
    assert converted(batches[1]) is None and converted(batches[2]) is None
    csv_route, parquet_route = both_routes(batches, tmp_path)
    assert_same_tables(csv_route, parquet_route)
    assert parquet_route.tables["Nuclei"].rows == 13
    assert all(converted(d) is not None for d in batches)
    assert not list(batches[0].glob(f"{TABLES}.partial-*"))


def test_a_killed_conversion_leaves_no_table_the_merge_would_read(tmp_path):
    batch = drifting_batches(tmp_path / "work")[0]
    convert_batch(batch)
    # a second conversion killed midway: only its staging folder is left
    staging = batch / f"{TABLES}.partial-1234"
    staging.mkdir()
    (staging / "Nuclei.arrow").write_bytes(b"ARROW1")
    assert set(converted(batch)) == {"Image", "Nuclei"}
    with pa.ipc.open_file(converted(batch)["Nuclei"]) as table:
        assert table.count_rows() == 4
    # a half-written file in place of a table is never taken for a complete one
    table = converted(batch)["Nuclei"]
    os.truncate(table, table.stat().st_size // 2)
    assert converted(batch) is None


def test_a_table_that_cannot_be_converted_names_the_batch_and_file(tmp_path):
    batch = tmp_path / "work" / "batch_0007"
    write_csv(batch / "output" / "MyExpt_Image.csv", ["ImageNumber", "Metadata_Well"], [[1, "B02"]])
    (batch / "output" / "MyExpt_Cells.csv").write_bytes(b"")
    with pytest.raises(MergeError, match=r"batch batch_0007: its Cells table .*MyExpt_Cells.csv is empty"):
        convert_batch(batch)
    assert not (batch / TABLES).exists() and not list(batch.glob(f"{TABLES}.*"))


def test_a_converted_table_that_disagrees_with_its_complete_json_is_an_error_naming_it(tmp_path):
    """The check before the final merge only `stat`s the files: a file of the right size
    whose rows or columns are not the ones `complete.json` lists is caught while it is
    read, and nothing is published."""
    batches = drifting_batches(tmp_path / "work")
    for d in batches:
        convert_batch(d)
    complete = json.loads((batches[1] / TABLES / COMPLETE).read_text())
    complete["tables"]["Nuclei"]["rows"] += 1
    (batches[1] / TABLES / COMPLETE).write_text(json.dumps(complete))
    with pytest.raises(
        MergeError, match=r"batch_0001/tables/Nuclei.arrow has 4 rows, its batch's complete.json says 5"
    ):
        merge_converted(batches, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()

    complete["tables"]["Nuclei"]["rows"] -= 1
    complete["tables"]["Nuclei"]["schema"] = json.loads((batches[0] / TABLES / COMPLETE).read_text())["tables"][
        "Nuclei"
    ]["schema"]  # batch 1's Nuclei has a column batch 0's has not
    (batches[1] / TABLES / COMPLETE).write_text(json.dumps(complete))
    with pytest.raises(MergeError, match=r"batch_0001/tables/Nuclei.arrow is not the one its batch's complete.json"):
        merge_converted(batches, tmp_path / "dest")
