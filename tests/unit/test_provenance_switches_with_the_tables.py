"""Each merge leaves how it was made beside the tables, in the same switch (provenance.py),
and `provenance.verify` tells a table changed after publishing; hostile inputs (links,
huge paths, paths out of the folder) are refused or recorded, never followed."""

from __future__ import annotations

import csv
import gzip
import json
import os
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from batch_outputs import make_batch

from cpp_dagster import paths
from cpp_dagster.features import provenance
from cpp_dagster.features.merge import merge_batches


def work_batch(root: Path, k: int, images: list[tuple[str, str]]) -> Path:
    """A batch's work folder as the batch step leaves it: LoadData CSV, log, done marker, output/."""
    batch = root / f"batch_000{k}"
    make_batch(batch / "output", k, wells=("B02", "B03"))
    with open(batch / "loaddata.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["FileName_DNA", "PathName_DNA", "Metadata_Well"])
        out.writerows([name, folder, "B02"] for folder, name in images)
    (batch / "cellprofiler.log").write_text("start\n" + "x" * 20_000 + f"\nlast line of batch {k}\n")
    (batch / "done.json").write_text(json.dumps({"outcome": {"exit_code": 0, "seconds": 1.5, "image_sets": 2}}))
    return batch


@pytest.fixture
def lab(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.tif").write_bytes(b"a" * 10)
    pipeline = tmp_path / "p.cppipe"
    pipeline.write_text("CellProfiler Pipeline: http://www.cellprofiler.org\n")
    batches = [
        work_batch(tmp_path / "work", 1, [(str(images), "a.tif")]),
        work_batch(tmp_path / "work", 2, [(str(images), "gone.tif")]),
    ]
    return tmp_path, pipeline, batches


def record(pipeline: Path, batches, sub_id: int = 7, **kw) -> provenance.Provenance:
    return provenance.Provenance(
        sub_id=sub_id,
        meta={"pipeline_file": "p.cppipe", "batch_size": 2},
        pipeline=pipeline,
        batch_dirs=batches,
        cellprofiler={"executable": "/opt/cp", "version": "4.2.8"},
        runs=[{"run_id": "r1", "started": "2026-12-07T20:00:00+00:00"}],
        retries={"batch_0002": 1},
        **kw,
    )


def merge(tmp_path, pipeline, batches, **kw):
    dest = tmp_path / "results" / "P1" / "1" / "5"
    result = merge_batches([b / "output" for b in batches], dest, provenance=record(pipeline, batches, **kw))
    return dest, result


def test_the_merge_publishes_provenance_with_the_tables_and_lists_it(lab):
    tmp_path, pipeline, batches = lab
    dest, result = merge(tmp_path, pipeline, batches)
    sub = dest / "provenance" / "sub7"
    assert {p.relative_to(dest) for p in result.files} >= {
        Path("provenance/sub7") / n for n in ("provenance.json", "pipeline.cppipe", "SHA256SUMS")
    }
    doc = json.loads((sub / "provenance.json").read_text())
    assert doc["pipeline"]["sha256"] == provenance.sha256_file(pipeline)
    assert (sub / "pipeline.cppipe").read_bytes() == pipeline.read_bytes()
    assert doc["cellprofiler"]["version"] == "4.2.8" and doc["dagster_runs"][0]["run_id"] == "r1"
    assert [(b["batch"], b["exit_code"], b["retries"]) for b in doc["batches"]] == [
        ("batch_0001", 0, 0),
        ("batch_0002", 0, 1),
    ]
    assert doc["batches"][1]["log_tail"].endswith("last line of batch 2\n")
    assert len(doc["batches"][1]["log_tail"]) <= provenance.LOG_TAIL_BYTES
    with tarfile.open(sub / "loaddata.tar.gz") as tar:
        assert sorted(tar.getnames()) == ["batch_0001/loaddata.csv", "batch_0002/loaddata.csv"]
    with gzip.open(sub / "images.csv.gz", "rt") as f:
        images = {row["path"]: row for row in csv.DictReader(f)}
    assert images[str(tmp_path / "images" / "a.tif")]["size"] == "10"
    assert images[str(tmp_path / "images" / "gone.tif")]["size"] == ""  # recorded as not found
    [check] = provenance.verify(dest)
    assert sorted(check.ok) == ["Cells.parquet", "Experiment.csv", "Image.parquet", "Nuclei.parquet"]
    assert not check.mismatched and not check.missing
    # it is in the same version as the tables: one switch
    assert (dest / "Image.parquet").resolve().parent == sub.resolve().parent.parent


def test_a_table_changed_after_publishing_is_named_and_a_deleted_one_is_missing(lab):
    tmp_path, pipeline, batches = lab
    dest, _ = merge(tmp_path, pipeline, batches)
    version = dest.resolve()
    table = pq.read_table(version / "Nuclei.parquet")
    os.unlink(version / "Nuclei.parquet")
    pq.write_table(table.slice(1), version / "Nuclei.parquet")
    os.unlink(version / "Cells.parquet")
    [check] = provenance.verify(dest)
    assert check.mismatched == ["Nuclei.parquet"] and check.missing == ["Cells.parquet"]
    assert any("CHANGED      Nuclei.parquet" in line for line in provenance.summary_lines(check))


def test_a_derived_table_is_added_to_the_checksums(lab):
    tmp_path, pipeline, batches = lab
    dest, _ = merge(tmp_path, pipeline, batches)
    (dest / "single_cell.parquet").write_bytes(b"derived")
    provenance.add_checksum(dest.resolve(), 7, "single_cell.parquet", dest / "single_cell.parquet")
    [check] = provenance.verify(dest)
    assert "single_cell.parquet" in check.ok


def test_a_second_sub_analysis_merging_into_the_folder_keeps_the_first_ones_provenance(lab):
    tmp_path, pipeline, batches = lab
    dest, _ = merge(tmp_path, pipeline, batches, sub_id=3)
    merge_batches(
        [b / "output" for b in batches],
        dest,
        manifest=".merged-files.sub7.json",
        tables_dir=dest / "sub7_qc",
        owner="sub7",
        provenance=record(pipeline, batches, sub_id=7),
    )
    assert sorted(c.sub_folder.name for c in provenance.verify(dest)) == ["sub3", "sub7"]
    assert all(not c.mismatched and not c.missing for c in provenance.verify(dest))


def test_a_provenance_folder_or_checksum_list_that_is_a_link_is_refused(lab):
    tmp_path, pipeline, batches = lab
    dest, _ = merge(tmp_path, pipeline, batches)
    version = dest.resolve()
    elsewhere = tmp_path / "elsewhere"
    (version / "provenance").rename(elsewhere)
    (version / "provenance").symlink_to(elsewhere)
    with pytest.raises(provenance.ProvenanceError, match="link"):
        provenance.verify(dest)
    (version / "provenance").unlink()
    (elsewhere).rename(version / "provenance")
    sums = version / "provenance" / "sub7" / "SHA256SUMS"
    sums.unlink()
    sums.symlink_to("/etc/passwd")
    with pytest.raises(provenance.ProvenanceError, match="link"):
        provenance.verify(dest)
    with pytest.raises(provenance.ProvenanceError):
        provenance.add_checksum(version, 7, "x.parquet", version / "Image.parquet")


def test_a_checksum_line_naming_a_file_outside_the_folder_is_never_read(lab):
    tmp_path, pipeline, batches = lab
    dest, _ = merge(tmp_path, pipeline, batches)
    sums = dest / "provenance" / "sub7" / "SHA256SUMS"
    sums.write_text(sums.read_text() + f"{'0' * 64}  ../../../../../etc/passwd\n{'0' * 64}  /etc/passwd\n")
    [check] = provenance.verify(dest)
    assert check.mismatched == ["../../../../../etc/passwd", "/etc/passwd"]


def test_a_loaddata_csv_that_is_a_link_publishes_nothing(lab):
    tmp_path, pipeline, batches = lab
    (batches[1] / "loaddata.csv").unlink()
    (batches[1] / "loaddata.csv").symlink_to("/etc/passwd")
    with pytest.raises(paths.UnsafePathError, match="not a regular file"):
        merge(tmp_path, pipeline, batches)
    assert not (tmp_path / "results" / "P1" / "1" / "5").exists()


def test_huge_image_paths_in_a_loaddata_csv_are_recorded_truncated_or_as_unreadable(lab):
    """A path beyond MAX_RECORDED_PATH is recorded cut (never stat'ed); one beyond the csv
    module's field limit (131,072) as an unreadable row: the merge publishes either way."""
    tmp_path, pipeline, batches = lab
    with open(batches[0] / "loaddata.csv", "a", newline="") as f:
        csv.writer(f).writerows([["a.tif", "/" + "d" * 100_000, "B03"], ["b.tif", "/" + "e" * 200_000, "B04"]])
    dest, _ = merge(tmp_path, pipeline, batches)
    with gzip.open(dest / "provenance" / "sub7" / "images.csv.gz", "rt") as f:
        rows = list(csv.DictReader(f))
    [long] = [r for r in rows if r["path"].startswith("/ddd")]
    assert long["path"].endswith("...(truncated)") and long["size"] == ""
    assert len(long["path"]) < provenance.MAX_RECORDED_PATH + 20
    [unreadable] = [r for r in rows if r["path"].startswith("(unreadable row")]
    assert "batch_0001/loaddata.csv" in unreadable["path"] and "field larger than field limit" in unreadable["path"]
    assert str(tmp_path / "images" / "a.tif") in {r["path"] for r in rows}  # the good rows are all there
    assert provenance.verify(dest)[0].ok


def test_a_removed_or_dangling_checksum_list_never_verifies(lab):
    tmp_path, pipeline, batches = lab
    dest, _ = merge(tmp_path, pipeline, batches)
    sums = dest.resolve() / "provenance" / "sub7" / "SHA256SUMS"
    sums.unlink()
    [check] = provenance.verify(dest)
    assert check.missing == ["provenance/sub7/SHA256SUMS"] and not check.ok
    sums.symlink_to(tmp_path / "nowhere")
    with pytest.raises(provenance.ProvenanceError, match="link"):
        provenance.verify(dest)
