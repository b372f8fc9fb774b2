"""Submitting (CLI, Dagster UI job, automation rules) and re-running analyses, with real
imagedb, real Dagster runs and real CellProfiler."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import psycopg2
import pyarrow.parquet as pq
from dagster_helpers import events, launch, launch_from_ui, tick

from cpp_dagster.demo.register import DEMO_PIPELINE, register_plate

CLI = str(Path(sys.executable).with_name("cpp-dagster"))


def rows_of(db, analysis_id: int) -> list[tuple]:
    """What the lab's other tools see of a submission, without the generated ids."""
    analysis = db.analysis(analysis_id)
    subs = db.sub_analyses_of(analysis_id)
    chain = [[subs.index(next(s for s in subs if s.sub_id == d)) for d in sub.depends_on_sub_id] for sub in subs]
    return [(analysis["pipeline_name"], analysis["meta"], analysis["priority"])] + [
        (sub.meta, sub.priority, links) for sub, links in zip(subs, chain)]


def test_cli_ui_and_automation_submissions_create_the_same_rows(lab, dagster_instance):
    """The UI's submission is a Materialize (or backfill) of a plate x pipeline partition;
    for a plate still being imaged it submits and waits, with the same rows as the CLI."""
    acq = register_plate(lab.db, lab.settings, barcode="SUBMIT", wells=["B02"], sites=[1], seed=3, finished=False)
    tick(dagster_instance)  # the partitions appear with the plate and the pipeline
    assert dagster_instance.has_dynamic_partition("plate", "SUBMIT")
    ui = launch_from_ui(dagster_instance, DEMO_PIPELINE, "SUBMIT")
    assert ui.status == dg.DagsterRunStatus.SUCCESS
    by_ui = lab.db.analysis_of_run(ui.run_id)
    assert by_ui is not None and ui.tags["imagedb/analysis_id"] == str(by_ui)
    assert dagster_instance.get_latest_materialization_event(dg.AssetKey("feature_tables")) is None  # it waits
    cli = subprocess.run([CLI, "submit", "--plate-acquisition", str(acq), "--pipeline", DEMO_PIPELINE],
                         env=os.environ, capture_output=True, text=True, check=True)
    by_cli = json.loads(cli.stdout)["analysis_id"]

    lab.db.finish_plate_acquisition(acq)
    with psycopg2.connect(lab.db.url) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO image_analyses_automation (project, pipeline_name, channel_map) VALUES ('demo', %s, 1)",
                    (DEMO_PIPELINE,))
    automation = tick(dagster_instance, "automation_rules")
    assert len(automation.asset_events) == 1
    assert tick(dagster_instance, "automation_rules").asset_events == []  # once per acquisition

    analyses = [s.analysis_id for s in map(lab.db.sub_analysis, range(1, 4))]
    assert [by_ui, by_cli] == analyses[:2] and len(set(analyses)) == 3
    assert rows_of(lab.db, analyses[0]) == rows_of(lab.db, analyses[1]) == rows_of(lab.db, analyses[2])


def test_cli_submission_options_and_clear_errors(lab):
    acq = register_plate(lab.db, lab.settings, barcode="OPTIONS", wells=["B02", "B03"], sites=[1, 2], seed=3)
    out = subprocess.run([CLI, "submit", "--plate-acquisition", str(acq), "--pipeline", DEMO_PIPELINE,
                          "--wells", "B03", "--sites", "2", "--cp-version", "5.0.0.dev784", "--priority", "1"],
                         env=os.environ, capture_output=True, text=True, check=True)
    sub = lab.db.sub_analysis(json.loads(out.stdout)["sub_analysis_ids"][0])
    assert (sub.meta["well_filter"], sub.meta["site_filter"], sub.priority) == (["B03"], [2], 1)
    bad = subprocess.run([CLI, "submit", "--plate-acquisition", str(acq), "--pipeline", "no-such-pipeline"],
                         env=os.environ, capture_output=True, text=True)
    assert bad.returncode == 2 and "no analysis pipeline named 'no-such-pipeline'" in bad.stderr


def test_rerun_runs_only_the_failed_batch_and_gives_the_clean_run_tables(lab, dagster_instance):
    acq = register_plate(lab.db, lab.settings, barcode="RERUN", wells=["B02"], sites=[1, 2, 3, 4], seed=5)
    corrupt = next(im for im in lab.db.images(acq) if im.site == 3 and im.channel == 4)
    good = Path(corrupt.path).read_bytes()
    Path(corrupt.path).write_bytes(b"not a TIFF")
    sub_id = lab.db.submit_analysis(acq, DEMO_PIPELINE).sub_ids[0]
    (request,) = tick(dagster_instance).run_requests
    failed = launch(dagster_instance, request)
    assert failed.status == dg.DagsterRunStatus.FAILURE and lab.db.sub_analysis(sub_id).error

    assert tick(dagster_instance).run_requests == []  # a failed sub-analysis is not re-requested by itself
    Path(corrupt.path).write_bytes(good)  # the lab fixes the image, then re-runs
    subprocess.run([CLI, "rerun", str(sub_id)], env=os.environ, check=True, capture_output=True)
    (again,) = tick(dagster_instance).run_requests
    assert again.run_key == f"{request.run_key}:rerun1" and again.partition_key == request.partition_key
    rerun = launch(dagster_instance, again)
    assert rerun.status == dg.DagsterRunStatus.SUCCESS
    outputs = {e.step_key: e.event_specific_data.metadata["reused"].value
               for e in events(dagster_instance, rerun.run_id, dg.DagsterEventType.STEP_OUTPUT)
               if ".run_cellprofiler[" in e.step_key}
    assert outputs == {"features_step.run_cellprofiler[batch_0000]": True,
                       "features_step.run_cellprofiler[batch_0001]": False}
    sub = lab.db.sub_analysis(sub_id)
    assert sub.finish and sub.error is None

    # A clean run of the same acquisition gives the same tables.
    clean_sub = lab.db.submit_analysis(acq, DEMO_PIPELINE).sub_ids[0]
    (clean_request,) = tick(dagster_instance).run_requests
    assert launch(dagster_instance, clean_request).status == dg.DagsterRunStatus.SUCCESS
    rerun_dir = lab.nas / sub.result["job_folder"]
    clean_dir = lab.nas / lab.db.sub_analysis(clean_sub).result["job_folder"]
    for table in ("Image", "Nuclei", "Cells", "Cytoplasm"):
        a, b = pq.read_table(rerun_dir / f"{table}.parquet"), pq.read_table(clean_dir / f"{table}.parquet")
        drop = [c for c in a.column_names if c.startswith(("ExecutionTime_", "ProcessingStatus"))]
        assert a.drop_columns(drop).equals(b.drop_columns(drop)), table


def test_reexecution_from_failure_in_the_ui_reruns_only_the_failed_batch(lab, dagster_instance):
    from cpp_dagster.definitions import analysis_job_def

    lab.db.put_pipeline("two-step", {"sub_analyses": [
        {"type": "cellprofiler", "sub_type": "features", "pipeline_file": "demo/demo_features.cppipe", "batch_size": 2},
        {"type": "cellprofiler", "sub_type": "features", "pipeline_file": "demo/demo_features.cppipe", "batch_size": 4}]})
    acq = register_plate(lab.db, lab.settings, barcode="REEXEC", wells=["B02"], sites=[1, 2, 3, 4], seed=6)
    corrupt = next(im for im in lab.db.images(acq) if im.site == 4 and im.channel == 2)
    good = Path(corrupt.path).read_bytes()
    Path(corrupt.path).write_bytes(b"not a TIFF")
    first, second = lab.db.submit_analysis(acq, "two-step").sub_ids
    (request,) = tick(dagster_instance).run_requests
    failed = launch(dagster_instance, request)
    assert failed.status == dg.DagsterRunStatus.FAILURE
    assert lab.db.sub_analysis(second).status["message"].startswith("not started: it depends on")

    Path(corrupt.path).write_bytes(good)
    options = dg.ReexecutionOptions.from_failure(failed.run_id, dagster_instance)
    ui_tags = {k: v for k, v in failed.tags.items() if k.startswith(("dagster/partition", "imagedb/"))}
    with dg.execute_job(dg.reconstructable(analysis_job_def), instance=dagster_instance, tags=ui_tags,
                        reexecution_options=options, raise_on_error=False) as result:  # as the UI's button
        assert result.success, [(e.step_key, e.event_specific_data.error.message[:300])
                                for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
        executed = {e.step_key for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_START}
    assert "features_step.run_cellprofiler[batch_0001]" in executed
    assert not executed & {"features_step.plan_batches", "features_step.run_cellprofiler[batch_0000]"}
    sub = lab.db.sub_analysis(first)
    assert sub.finish and sub.error is None
    assert lab.db.sub_analysis(second).error is None  # its dependent may now start
    assert [r.tags["imagedb/sub_id"] for r in tick(dagster_instance).run_requests] == [str(second)]


def test_a_priority_that_is_not_a_whole_number_from_1_to_9_is_a_clear_submission_error(lab, dagster_instance):
    """From the command line or a pipeline's own meta: a readable error naming the
    priority and its range (not a database error), and no analysis row is created."""
    from cpp_dagster.demo.register import demo_pipeline_meta

    acq = register_plate(lab.db, lab.settings, barcode="PRIO", wells=["B02"], sites=[1], seed=3)
    meta = demo_pipeline_meta(batch_size=2)
    meta["sub_analyses"][0]["priority"] = "high"
    lab.db.put_pipeline("worded-priority", meta)
    range_text = "'priority' must be a whole number from 1 to 9, in 1 = high, 9 = low"

    out_of_range = subprocess.run([CLI, "submit", "--plate-acquisition", str(acq), "--pipeline", DEMO_PIPELINE,
                                   "--priority", "42"], env=os.environ, capture_output=True, text=True)
    assert out_of_range.returncode == 2
    assert f"the submission's priority: {range_text}; got 42" in out_of_range.stderr
    worded = subprocess.run([CLI, "submit", "--plate-acquisition", str(acq), "--pipeline", "worded-priority"],
                            env=os.environ, capture_output=True, text=True)
    assert worded.returncode == 2 and "Traceback" not in worded.stderr
    assert f"pipeline 'worded-priority': {range_text}; got 'high'" in worded.stderr

    with psycopg2.connect(lab.db.url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM image_analyses")
        assert cur.fetchone()[0] == 0
