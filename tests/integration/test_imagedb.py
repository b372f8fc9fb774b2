"""imagedb against a real PostgreSQL: submission rows, what the sensor's query returns,
and how outcomes roll up from sub-analyses to the analysis."""

from __future__ import annotations

import psycopg2
import pytest

from cpp_dagster.imagedb.rows import Image, ImageDBError
from cpp_dagster.imagedb.store import ImageDB

TWO_STEP = {
    "analysis_meta": {"note": "qc then features"},
    "sub_analyses": [
        {"type": "cellprofiler", "pipeline_file": "qc.cppipe", "sub_type": "qc"},
        {"type": "cellprofiler", "pipeline_file": "features.cppipe", "sub_type": "features", "batch_size": 4},
    ],
}


def plate(db: ImageDB, barcode: str = "P1", finished: bool = True) -> int:
    db.put_channel_map(1, {1: "HOECHST", 2: "MITO"})
    acq = db.add_plate_acquisition(barcode, channel_map_id=1, folder=f"/nas/{barcode}")
    db.add_images(acq, barcode, [Image("B02", 1, ch, f"/nas/{barcode}/B02_s1_w{ch}.tif") for ch in (1, 2)])
    if finished:
        db.finish_plate_acquisition(acq)
    return acq


def test_schema_applies_twice_without_error(db):
    db.apply_schema()  # idempotent: re-applying to an existing imagedb is safe


def test_submission_creates_analysis_and_chained_sub_analyses(db):
    db.put_pipeline("two-step", TWO_STEP)
    acq = plate(db)
    submitted = db.submit_analysis(acq, "two-step", priority=1)
    assert len(submitted.sub_ids) == 2
    first, second = (db.sub_analysis(s) for s in submitted.sub_ids)
    assert first.depends_on_sub_id == [] and second.depends_on_sub_id == [first.sub_id]
    assert second.meta["batch_size"] == 4 and second.analysis_id == submitted.analysis_id
    analysis = db.analysis(submitted.analysis_id)
    assert analysis["pipeline_name"] == "two-step" and analysis["submitted"] is not None
    assert analysis["meta"] == {"note": "qc then features"} and analysis["priority"] == 1


def test_unknown_pipeline_is_a_clear_error(db):
    with pytest.raises(ImageDBError, match="no analysis pipeline named 'nope'"):
        db.submit_analysis(plate(db), "nope")


def test_values_are_parameters_not_sql(db):
    hostile = "x'); DROP TABLE images; --"
    db.put_pipeline(hostile, TWO_STEP)
    submitted = db.submit_analysis(plate(db), hostile)
    assert db.analysis(submitted.analysis_id)["pipeline_name"] == hostile
    assert len(db.images(1)) == 2  # the images table is still there


def test_ready_waits_for_finished_acquisition_and_dependencies(db):
    db.put_pipeline("two-step", TWO_STEP)
    unfinished = plate(db, "UNFINISHED", finished=False)
    db.submit_analysis(unfinished, "two-step")
    acq = plate(db, "READY")
    first, second = db.submit_analysis(acq, "two-step").sub_ids

    assert [r.sub_id for r in db.ready_sub_analyses()] == [first]  # not the unfinished plate, not the dependent
    db.mark_sub_started(first, batches=1, image_sets=1)
    assert db.ready_sub_analyses() == []  # started: never offered again
    db.mark_sub_finished(first, {"job_folder": "x", "file_list": []})
    ready = db.ready_sub_analyses()
    assert [r.sub_id for r in ready] == [second] and ready[0].plate_barcode == "READY"


def test_failed_dependency_fails_dependents_with_the_reason(db):
    db.put_pipeline("two-step", TWO_STEP)
    first, second = db.submit_analysis(plate(db), "two-step").sub_ids
    db.mark_sub_failed(first, "boom")
    assert db.ready_sub_analyses() == []
    dependent = db.sub_analysis(second)
    assert dependent.error is not None and dependent.start is None  # never started
    assert dependent.status["message"] == f"not started: it depends on sub-analysis {first}, which failed"


def test_ready_is_ordered_by_priority_then_id_and_pages(db):
    db.put_pipeline("one", {"sub_analyses": [{"type": "cellprofiler", "pipeline_file": "a.cppipe"}]})
    acq = plate(db)
    normal = [db.submit_analysis(acq, "one").sub_ids[0] for _ in range(3)]
    high = db.submit_analysis(acq, "one", priority=1).sub_ids[0]
    low = db.submit_analysis(acq, "one", priority=5).sub_ids[0]
    expected = [high, *normal, low]
    assert [r.sub_id for r in db.ready_sub_analyses()] == expected
    pages, after = [], None
    while True:
        page = db.ready_sub_analyses(limit=2, after=after)
        if not page:
            break
        pages.append([r.sub_id for r in page])
        after = (page[-1].priority, page[-1].sub_id)
    assert pages == [expected[0:2], expected[2:4], expected[4:5]]


def test_progress_is_counted_once_per_batch(db):
    db.put_pipeline("one", {"sub_analyses": [{"type": "cellprofiler", "pipeline_file": "a.cppipe"}]})
    sub = db.submit_analysis(plate(db), "one").sub_ids[0]
    db.mark_sub_started(sub, batches=3, image_sets=9)
    assert db.sub_analysis(sub).status["message"].startswith("0 / 3 batches finished")
    db.record_batch_finished(sub, "batch_0000")
    message = db.record_batch_finished(sub, "batch_0000")  # a retried batch reports twice
    assert message.startswith("1 / 3 batches finished, ~") and message.endswith(" h left")
    assert db.sub_analysis(sub).status["message"] == message


def test_analysis_finishes_with_its_last_sub_analysis(db):
    db.put_pipeline("two-step", TWO_STEP)
    submitted = db.submit_analysis(plate(db), "two-step")
    first, second = submitted.sub_ids
    db.mark_sub_finished(first, {"job_folder": "r", "file_list": ["a"]})
    assert db.analysis(submitted.analysis_id)["finish"] is None
    db.mark_sub_finished(second, {"job_folder": "r", "file_list": ["b"]})
    analysis = db.analysis(submitted.analysis_id)
    assert analysis["finish"] is not None and analysis["error"] is None
    assert db.sub_analysis(second).result == {"job_folder": "r", "file_list": ["b"]}


def test_the_ui_run_that_submitted_an_analysis_still_finds_it_once_it_finished_or_recovered(db):
    """`analysis_of_run` reads the analysis's status: finishing (or recovering from a
    failure) clears the failure, never the record of the run that submitted it."""
    db.put_pipeline("two-step", TWO_STEP)
    submission = db.submit_for_run(plate(db), "two-step", "run-1", claim=lambda types: set(range(len(types))))
    first, second = submission.analysis.sub_ids
    db.mark_sub_failed(first, "boom")
    db.rerun_sub_analysis(first)
    for sub_id in (first, second):
        db.mark_sub_finished(sub_id, {"job_folder": "r", "file_list": [str(sub_id)]})
    analysis = db.analysis(submission.analysis.analysis_id)
    assert analysis["finish"] is not None and analysis["error"] is None
    assert "state" not in analysis["status"] and "message" not in analysis["status"]
    assert db.analysis_of_run("run-1") == submission.analysis.analysis_id


def test_failure_is_recorded_once_and_fails_the_analysis(db):
    db.put_pipeline("two-step", TWO_STEP)
    submitted = db.submit_analysis(plate(db), "two-step")
    first = submitted.sub_ids[0]
    assert db.mark_sub_failed(first, "step plan_batches failed: no images left after the filters")
    assert not db.mark_sub_failed(first, "a later, less precise report")
    sub = db.sub_analysis(first)
    assert sub.error is not None and sub.start is not None and sub.finish is None
    assert sub.status["message"] == "step plan_batches failed: no images left after the filters"
    analysis = db.analysis(submitted.analysis_id)
    assert analysis["error"] is not None and "no images left" in analysis["status"]["message"]


def test_a_rerun_clears_the_earlier_outcome(db):
    db.put_pipeline("one", {"sub_analyses": [{"type": "cellprofiler", "pipeline_file": "a.cppipe"}]})
    submitted = db.submit_analysis(plate(db), "one")
    sub = submitted.sub_ids[0]
    db.mark_sub_failed(sub, "boom")
    db.mark_sub_started(sub, batches=2, image_sets=4)
    again = db.sub_analysis(sub)
    assert again.error is None and again.status["state"] == "running"
    assert db.analysis(submitted.analysis_id)["error"] is None


def test_indexes_the_queries_use_exist(db):
    with psycopg2.connect(db.url) as conn, conn.cursor() as cur:
        cur.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")
        names = {r[0] for r in cur.fetchall()}
    assert {
        "images_plate_acquisition_id_idx",
        "image_sub_analyses_pending_idx",
        "image_sub_analyses_analysis_id_idx",
    } <= names


def test_outputs_recorded_while_running_are_kept_once_in_order(db):
    db.put_pipeline("one", {"sub_analyses": [{"type": "cellprofiler", "pipeline_file": "a.cppipe"}]})
    sub = db.submit_analysis(plate(db), "one").sub_ids[0]
    db.mark_sub_started(sub, batches=1, image_sets=1)
    db.add_outputs(sub, ["r/Image.parquet", "r/Cells.parquet"])
    assert db.add_outputs(sub, ["r/Cells.parquet", "r/single_cell.parquet"]) == [
        "r/Image.parquet",
        "r/Cells.parquet",
        "r/single_cell.parquet",
    ]
    db.mark_sub_started(sub, batches=1, image_sets=1)  # a re-run starts from nothing
    assert db.add_outputs(sub, []) == []


def test_submission_overrides_reach_every_sub_analysis(db):
    db.put_pipeline("two-step", TWO_STEP)
    submitted = db.submit_analysis(
        plate(db),
        "two-step",
        priority=1,
        overrides={"well_filter": ["B02"], "site_filter": [1, 2], "cp_version": "4.2.8"},
    )
    for sub_id in submitted.sub_ids:
        sub = db.sub_analysis(sub_id)
        assert sub.meta["well_filter"] == ["B02"] and sub.meta["site_filter"] == [1, 2]
        assert sub.meta["cp_version"] == "4.2.8" and sub.meta["priority"] == 1 and sub.priority == 1
    with pytest.raises(ImageDBError, match="no plate acquisition 999"):
        db.submit_analysis(999, "two-step")


def test_automation_rules_submit_once_per_finished_acquisition(db):
    db.put_pipeline("two-step", TWO_STEP)
    db.put_pipeline("other", TWO_STEP)
    with psycopg2.connect(db.url) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO image_analyses_automation (project, cell_line, pipeline_name, channel_map) VALUES (%s, %s, %s, %s)",
            [("screen", None, "two-step", 1), (None, None, "other", 2), ("screen", "U2OS", "other", 1)],
        )
        cur.execute("UPDATE plate_acquisition SET project = 'screen'")
    matching = plate(db, "MATCH")
    waiting = plate(db, "WAITING", finished=False)
    with psycopg2.connect(db.url) as conn, conn.cursor() as cur:
        cur.execute("UPDATE plate_acquisition SET project = 'screen'")
    first = db.submit_by_automation()
    assert [(acq, pipeline) for acq, pipeline, _ in first] == [(matching, "two-step")]  # cell-line rule not applied
    assert len(first[0][2].sub_ids) == 2
    assert db.submit_by_automation() == []  # a repeated tick (or a restarted daemon) submits nothing
    db.finish_plate_acquisition(waiting)
    assert [acq for acq, _, _ in db.submit_by_automation()] == [waiting]
    with psycopg2.connect(db.url) as conn, conn.cursor() as cur:
        cur.execute("SELECT plate_acq_id FROM image_analyses_automation_submitted ORDER BY 1")
        assert [r[0] for r in cur.fetchall()] == [matching, waiting]
        cur.execute("SELECT count(*) FROM image_analyses")
        assert cur.fetchone()[0] == 2


def test_rerun_puts_a_failed_sub_analysis_back_with_a_new_generation(db):
    db.put_pipeline("two-step", TWO_STEP)
    submitted = db.submit_analysis(plate(db), "two-step")
    first, second = submitted.sub_ids
    with pytest.raises(ImageDBError, match="not started yet"):
        db.rerun_sub_analysis(first)
    db.mark_sub_started(first, batches=1, image_sets=1)
    db.mark_sub_failed(first, "boom")
    assert db.rerun_generations([first, second]) == {first: 0, second: 0}
    assert db.rerun_sub_analysis(first) == 1
    assert [r.sub_id for r in db.ready_sub_analyses()] == [first]
    assert db.sub_analysis(second).error is None  # the dependent waits again
    assert db.analysis(submitted.analysis_id)["error"] is None
    db.mark_sub_started(first, batches=1, image_sets=1)
    assert db.rerun_generations([first]) == {first: 1}  # kept while it runs again
