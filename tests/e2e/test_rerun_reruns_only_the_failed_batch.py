"""Re-running a failed analysis (`cpp-dagster rerun`, or re-execution from failure in the
UI) runs only the failed batch again and gives the tables of a clean run; real imagedb,
real Dagster runs and real CellProfiler. Submitting:
tests/integration/test_submission_by_cli_ui_and_automation.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
from dagster_helpers import events, launch, tick

from cpp_dagster.demo.register import DEMO_PIPELINE, register_plate

CLI = str(Path(sys.executable).with_name("cpp-dagster"))


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
    outputs = {
        e.step_key: e.event_specific_data.metadata["reused"].value
        for e in events(dagster_instance, rerun.run_id, dg.DagsterEventType.STEP_OUTPUT)
        if ".run_cellprofiler[" in e.step_key
    }
    assert outputs == {
        "features_step.run_cellprofiler[batch_0000]": True,
        "features_step.run_cellprofiler[batch_0001]": False,
    }
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

    lab.db.put_pipeline(
        "two-step",
        {
            "sub_analyses": [
                {
                    "type": "cellprofiler",
                    "sub_type": "features",
                    "pipeline_file": "demo/demo_features.cppipe",
                    "batch_size": 2,
                },
                {
                    "type": "cellprofiler",
                    "sub_type": "features",
                    "pipeline_file": "demo/demo_features.cppipe",
                    "batch_size": 4,
                },
            ]
        },
    )
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
    with dg.execute_job(
        dg.reconstructable(analysis_job_def),
        instance=dagster_instance,
        tags=ui_tags,
        reexecution_options=options,
        raise_on_error=False,
    ) as result:  # as the UI's button
        assert result.success, [
            (e.step_key, e.event_specific_data.error.message[:300])
            for e in result.all_events
            if e.event_type == dg.DagsterEventType.STEP_FAILURE
        ]
        executed = {e.step_key for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_START}
    assert "features_step.run_cellprofiler[batch_0001]" in executed
    assert not executed & {"features_step.plan_batches", "features_step.run_cellprofiler[batch_0000]"}
    sub = lab.db.sub_analysis(first)
    assert sub.finish and sub.error is None
    assert lab.db.sub_analysis(second).error is None  # its dependent may now start
    assert [r.tags["imagedb/sub_id"] for r in tick(dagster_instance).run_requests] == [str(second)]
