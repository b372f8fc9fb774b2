"""Quality that counts: the features step's five quality checks go into imagedb's
sub-analysis status with its outcome, and under `quality: block` a failed ERROR check
fails the analysis (naming the check) before it is marked finished.

The tables are real (CellProfiler's CSV outputs as ExportToSpreadsheet writes them,
merged, single-cell table and well profiles written, by the real lifecycle functions,
with real imagedb); what fails the check is honest: a plan of 5 image sets whose two
batches brought 4 image rows. No CellProfiler runs (CPP_CELLPROFILER names none)."""

from __future__ import annotations

import uuid

import pytest
from batch_outputs import make_batch

from cpp_dagster.analysis import lifecycle, quality
from cpp_dagster.analysis.sub_analysis import resolve
from cpp_dagster.demo.register import DEMO_CHANNEL_MAP, DEMO_PIPELINE_FILE
from cpp_dagster.settings import load_settings

CHECKS = ["image_rows_match_plan", "all_batches_present", "well_cell_counts", "nan_share", "column_drift"]


def features_step_on_short_tables(lab, monkeypatch, pipeline_meta=None, **sub_meta):
    """A features sub-analysis planned for 5 image sets whose two batches hold 4 image
    rows, run through merge, derived tables and completion; (sub-analysis id, analysis
    id, what `complete` raised or returned)."""
    monkeypatch.setenv("CPP_CELLPROFILER", str(lab.nas / "no-cellprofiler-here"))
    settings = load_settings()
    name = f"quality-{uuid.uuid4().hex[:6]}"
    meta = {**(pipeline_meta or {}), "sub_analyses": [{"pipeline_file": DEMO_PIPELINE_FILE, **sub_meta}]}
    lab.db.put_pipeline(name, meta)
    acq = lab.db.add_plate_acquisition("QC-PLATE", channel_map_id=DEMO_CHANNEL_MAP, folder="/nas/images/QC-PLATE")
    submitted = lab.db.submit_analysis(acq, name)
    sub_id = submitted.sub_ids[0]
    assert lab.db.mark_sub_started(sub_id, batches=2, image_sets=5)
    sub = resolve(lab.db, settings, sub_id)
    batch_dirs = []
    for k in range(2):
        batch_dir = sub.work_dir / f"batch_{k:04d}"
        make_batch(batch_dir / "output", k + 1)  # 2 image rows each
        (batch_dir / "loaddata.csv").write_text("FileName_DNA,PathName_DNA\nx.tif,/nas/images/QC-PLATE\n")
        batch_dirs.append(str(batch_dir))
    merged = lifecycle.merge(lab.db, settings, sub, batch_dirs)
    lifecycle.write_single_cell(lab.db, settings, merged)
    lifecycle.write_well_profiles(lab.db, settings, merged)
    found = quality.feature_checks(merged)
    try:
        outcome = lifecycle.complete(lab.db, settings, merged.sub, found)
    except quality.QualityBlocked as blocked:
        outcome = blocked
    return sub_id, submitted.analysis_id, outcome, merged


@pytest.mark.parametrize(
    "declared",
    [{"pipeline_meta": {"quality": "block"}}, {"quality": "block"}],
    ids=["in the pipeline's meta", "in its features stage"],
)
def test_a_quality_block_analysis_with_a_failed_check_ends_failed_with_the_check_named(lab, monkeypatch, declared):
    sub_id, analysis_id, outcome, merged = features_step_on_short_tables(lab, monkeypatch, **declared)
    assert isinstance(outcome, quality.QualityBlocked)
    sub = lab.db.sub_analysis(sub_id)
    assert sub.error is not None and sub.finish is None and sub.result is None
    assert sub.status["state"] == "failed"
    assert sub.status["message"].startswith(
        "quality check image_rows_match_plan failed: 4 image rows for 5 planned image sets"
    )
    assert "quality: block" in sub.status["message"]
    checks = {c["name"]: c for c in sub.status["checks"]}
    assert list(checks) == CHECKS
    assert checks["image_rows_match_plan"] == {
        "name": "image_rows_match_plan",
        "severity": "ERROR",
        "passed": False,
        "message": "4 image rows for 5 planned image sets",
    }
    assert checks["all_batches_present"]["passed"] is True
    # a failed WARN check (the batches' CSVs hold NaN on purpose) never blocks, nor is it named
    assert (checks["nan_share"]["severity"], checks["nan_share"]["passed"]) == ("WARN", False)
    assert "nan_share" not in sub.status["message"]
    analysis = lab.db.analysis(analysis_id)
    assert analysis["error"] is not None and analysis["finish"] is None
    assert "image_rows_match_plan" in analysis["status"]["message"]
    # the tables stay, to be inspected; imagedb says they are not a finished analysis
    assert (merged.tables_dir / "Image.parquet").is_file()
    [told] = lab.db.notifications_of(analysis_id)
    assert told.state == "failed" and "quality check image_rows_match_plan failed" in told.message


@pytest.mark.parametrize(
    "declared",
    [{}, {"quality": "warn"}, {"pipeline_meta": {"quality": "block"}, "quality": "warn"}],
    ids=["unset", "warn", "the stage's warn over the pipeline's block"],
)
def test_the_same_analysis_without_quality_block_finishes_with_the_warning_in_imagedb(lab, monkeypatch, declared):
    sub_id, analysis_id, outcome, _ = features_step_on_short_tables(lab, monkeypatch, **declared)
    assert outcome["job_folder"].startswith("results/QC-PLATE/")
    sub = lab.db.sub_analysis(sub_id)
    assert sub.finish is not None and sub.error is None and sub.status["state"] == "finished"
    failed = [c for c in sub.status["checks"] if not c["passed"]]
    assert [(c["name"], c["severity"]) for c in failed] == [("image_rows_match_plan", "ERROR"), ("nan_share", "WARN")]
    assert lab.db.analysis(analysis_id)["finish"] is not None
    [told] = lab.db.notifications_of(analysis_id)
    assert told.state == "finished"
    assert told.message.startswith(
        "finished (1 sub-analysis); quality warnings: image_rows_match_plan: 4 image rows for 5 planned image sets; "
        "nan_share: "
    )
