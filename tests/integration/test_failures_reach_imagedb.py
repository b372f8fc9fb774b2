"""Every failure of an analysis ends as an `error` timestamp and a readable message in
imagedb (and a failed run in Dagster); nothing half-written becomes visible. Here the
failures before any batch runs CellProfiler; a failing batch:
tests/e2e/test_failing_batches_reach_imagedb.py."""

from __future__ import annotations

import uuid

import dagster as dg
import pytest
from analysis_failures import assert_failed, run_once
from dagster_helpers import events, tick
from submissions import submit

from cpp_dagster.demo.register import DEMO_PIPELINE, register_plate
from cpp_dagster.demo.synthetic_plate import write_plate
from cpp_dagster.imagedb.rows import Image


@pytest.mark.parametrize(
    "pipeline_file, why",
    # one outside the pipelines folder is not launched at all:
    # test_paths_stay_under_their_root_through_imagedb_and_the_job
    [("missing/nope.cppipe", "does not exist")],
)
def test_bad_pipeline_file_fails_before_any_batch(lab, dagster_instance, pipeline_file, why):
    acq = register_plate(lab.db, lab.settings, barcode="BADPIPE", wells=["B02"], sites=[1], seed=2)
    sub_id = submit(lab, acq, pipeline_file=pipeline_file)
    run = run_once(lab, dagster_instance, sub_id)
    message = assert_failed(lab, sub_id, run, "step features_step.plan_batches failed", why)
    assert pipeline_file in message
    assert not events(dagster_instance, run.run_id, dg.DagsterEventType.STEP_START)[1:]  # only the plan step


def test_filters_that_leave_no_images_are_a_clear_error(lab, dagster_instance):
    acq = register_plate(lab.db, lab.settings, barcode="NOIMG", wells=["B02"], sites=[1], seed=2)
    sub_id = submit(lab, acq, well_filter=["P24"])
    run = run_once(lab, dagster_instance, sub_id)
    assert_failed(lab, sub_id, run, "no images left after the filters", "P24")


def test_image_set_missing_a_channel_is_reported_not_guessed(lab, dagster_instance):
    folder = lab.nas / "images" / "GAP"
    files = write_plate(folder, "GAP", ["B02"], [1, 2], seed=4)
    acq = lab.db.add_plate_acquisition("GAP", channel_map_id=1, folder=str(folder))
    lab.db.add_images(
        acq,
        "GAP",
        [
            Image(f["well"], f["site"], f["channel"], f["path"], f["z"])
            for f in files
            if not (f["site"] == 2 and f["dye"] == "MITO")
        ],
    )
    lab.db.finish_plate_acquisition(acq)
    sub_id = submit(lab, acq)
    run = run_once(lab, dagster_instance, sub_id)
    assert_failed(lab, sub_id, run, "image set well B02 site 2", "missing channel(s) MITO")


def _finished_run(instance, sub_id: int, report) -> tuple[dg.DagsterRun, dg.DagsterEvent]:
    run = instance.add_run(
        dg.DagsterRun(job_name="analysis_job", run_id=str(uuid.uuid4()), tags={"imagedb/sub_id": str(sub_id)})
    )
    report(run)
    event_type = (
        dg.DagsterEventType.RUN_CANCELED if report == instance.report_run_canceled else dg.DagsterEventType.RUN_FAILURE
    )
    return run, events(instance, run.run_id, event_type)[0]


@pytest.mark.parametrize("outcome", ["canceled", "failed"])
def test_run_status_sensors_record_what_hooks_cannot_see(lab, dagster_instance, outcome):
    """A cancelled run, or a run whose worker died (no step ran a hook): the run-status
    sensors still give the sub-analysis an outcome."""
    from cpp_dagster.definitions import build_defs
    from cpp_dagster.defs.analysis.sensors import record_run_cancellation, record_run_failure

    acq = register_plate(lab.db, lab.settings, barcode="LOST", wells=["B02"], sites=[1], seed=2)
    sub_id = lab.db.submit_analysis(acq, DEMO_PIPELINE).sub_ids[0]
    lab.db.mark_sub_started(sub_id, batches=1, image_sets=1)
    report = dagster_instance.report_run_canceled if outcome == "canceled" else dagster_instance.report_run_failed
    run, event = _finished_run(dagster_instance, sub_id, report)
    sensor = record_run_cancellation if outcome == "canceled" else record_run_failure
    context = dg.build_run_status_sensor_context(
        sensor_name=sensor.name,
        dagster_event=event,
        dagster_instance=dagster_instance,
        dagster_run=run,
        resources=build_defs().resources,
    )
    sensor(context if outcome == "canceled" else context.for_run_failure())
    sub = lab.db.sub_analysis(sub_id)
    assert sub.error is not None and sub.status["state"] == "failed"
    expected = "cancelled: run" if outcome == "canceled" else f"run {run.run_id} failed"
    assert sub.status["message"].startswith(expected)
    assert lab.db.analysis(sub.analysis_id)["error"] is not None


@pytest.mark.parametrize(
    "deployment, sub_meta, why",
    [
        ("multiprocess", {"site_filter": ["one"]}, "'site_filter' must be a list of integers"),
        ("k8s", {"cp_version": "4.2.8"}, "cp_version '4.2.8' has no container image configured"),
    ],
)
def test_analysis_that_cannot_run_here_fails_without_a_run(
    lab, dagster_instance, monkeypatch, deployment, sub_meta, why
):
    from cpp_dagster.settings import PROJECT_ROOT

    monkeypatch.setenv("CPP_EXECUTOR", deployment)
    monkeypatch.setenv("CPP_K8S_CONFIG", str(PROJECT_ROOT / "deploy" / "k8s-pods.yaml"))
    acq = register_plate(lab.db, lab.settings, barcode="PREFLIGHT", wells=["B02"], sites=[1], seed=2)
    sub_id = submit(lab, acq, **sub_meta)
    data = tick(dagster_instance)
    assert data.run_requests == []
    sub = lab.db.sub_analysis(sub_id)
    assert sub.error is not None and sub.status["message"].startswith("not launched: ")
    assert why in sub.status["message"]
    assert lab.db.analysis(sub.analysis_id)["error"] is not None


def test_successful_run_that_did_not_complete_the_analysis_is_reported(lab, dagster_instance):
    """A run that started a sub-analysis and succeeded without completing it: the
    sub-analysis is not left started."""
    from cpp_dagster.definitions import build_defs
    from cpp_dagster.defs.analysis.sensors import record_run_without_outcome

    acq = register_plate(lab.db, lab.settings, barcode="PARTIAL", wells=["B02"], sites=[1], seed=2)
    sub_id = lab.db.submit_analysis(acq, DEMO_PIPELINE).sub_ids[0]
    lab.db.mark_sub_started(sub_id, batches=1, image_sets=1)
    run = dagster_instance.add_run(
        dg.DagsterRun(job_name="__ASSET_JOB", run_id=str(uuid.uuid4()), tags={"imagedb/sub_id": str(sub_id)})
    )
    dagster_instance.report_run_canceled(run)  # any terminal event to build the context from
    event = events(dagster_instance, run.run_id, dg.DagsterEventType.RUN_CANCELED)[0]
    record_run_without_outcome(
        dg.build_run_status_sensor_context(
            sensor_name=record_run_without_outcome.name,
            dagster_event=event,
            dagster_instance=dagster_instance,
            dagster_run=dagster_instance.get_run_by_id(run.run_id),
            resources=build_defs().resources,
        )
    )
    sub = lab.db.sub_analysis(sub_id)
    assert sub.error is not None and "succeeded but did not complete it" in sub.status["message"]
