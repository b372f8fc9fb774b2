"""Every failure of an analysis ends as an `error` timestamp and a readable message in
imagedb (and a failed run in Dagster); nothing half-written becomes visible."""
from __future__ import annotations

import uuid

import dagster as dg
import pytest
from dagster_helpers import events, launch, tick

from cpp_dagster.demo.register import DEMO_PIPELINE, demo_pipeline_meta, register_plate
from cpp_dagster.demo.synthetic_plate import write_plate
from cpp_dagster.imagedb.rows import Image


def submit(lab, acq: int, **sub_meta) -> int:
    meta = demo_pipeline_meta(batch_size=2)
    meta["sub_analyses"][0].update(sub_meta)
    name = f"custom-{uuid.uuid4().hex[:6]}"
    lab.db.put_pipeline(name, meta)
    return lab.db.submit_analysis(acq, name).sub_ids[0]


def run_once(lab, instance, sub_id: int) -> dg.DagsterRun:
    requests = [r for r in tick(instance).run_requests if r.tags["imagedb/sub_id"] == str(sub_id)]
    assert len(requests) == 1
    return launch(instance, requests[0])


def assert_failed(lab, sub_id: int, run: dg.DagsterRun, *fragments: str) -> str:
    assert run.status == dg.DagsterRunStatus.FAILURE
    sub = lab.db.sub_analysis(sub_id)
    assert sub.error is not None and sub.finish is None and sub.status["state"] == "failed"
    message = sub.status["message"]
    for fragment in fragments:
        assert fragment in message
    analysis = lab.db.analysis(sub.analysis_id)
    assert analysis["error"] is not None and analysis["finish"] is None
    return message


@pytest.mark.parametrize(
    "pipeline_file, why",
    # one outside the pipelines folder is not launched at all: test_paths_stay_under_their_root
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
    lab.db.add_images(acq, "GAP", [Image(f["well"], f["site"], f["channel"], f["path"], f["z"])
                                   for f in files if not (f["site"] == 2 and f["dye"] == "MITO")])
    lab.db.finish_plate_acquisition(acq)
    sub_id = submit(lab, acq)
    run = run_once(lab, dagster_instance, sub_id)
    assert_failed(lab, sub_id, run, "image set well B02 site 2", "missing channel(s) MITO")


def test_failing_batch_is_retried_then_fails_with_exit_code_and_log_tail(lab, dagster_instance):
    acq = register_plate(lab.db, lab.settings, barcode="CORRUPT", wells=["B02"], sites=[1, 2, 3, 4], seed=5)
    corrupt = next(im for im in lab.db.images(acq) if im.site == 3 and im.channel == 4)
    with open(corrupt.path, "wb") as f:
        f.write(b"this is not a TIFF")
    sub_id = submit(lab, acq)
    run = run_once(lab, dagster_instance, sub_id)

    retried = events(dagster_instance, run.run_id, dg.DagsterEventType.STEP_UP_FOR_RETRY)
    assert [e.step_key for e in retried] == ["features_step.run_cellprofiler[batch_0001]"]
    message = assert_failed(lab, sub_id, run, "run_cellprofiler[batch_0001]", "CellProfiler exited with code 1",
                            "last lines of its log")
    assert "Traceback" in message or "Error" in message
    sub = lab.db.sub_analysis(sub_id)
    assert sub.status["finished_batches"] == ["batch_0000"]  # the good batch finished, and only it
    results = lab.nas / "results" / "CORRUPT"
    assert not list(results.rglob("*.parquet"))  # no merge of a half-done analysis
    # The failed attempt left no output folder that could pass for finished.
    batch_dir = lab.nas / "work" / f"sub_{sub_id}" / "g0" / "batch_0001"
    assert not (batch_dir / "output").exists() and (batch_dir / "cellprofiler.log").is_file()


@pytest.mark.parametrize("retry_timeouts, attempts", [(None, 1), ("true", 2)])
def test_batch_killed_by_its_job_timeout_is_not_retried(lab, dagster_instance, monkeypatch, retry_timeouts,
                                                        attempts):
    """A crash is retried (the test above); a batch that ran out of time would take as long
    again, so it fails after one attempt, with retries configured (CPP_BATCH_RETRIES=1).
    CPP_RETRY_TIMEOUTS=true retries it like a crash."""
    if retry_timeouts is None:
        monkeypatch.delenv("CPP_RETRY_TIMEOUTS", raising=False)
    else:
        monkeypatch.setenv("CPP_RETRY_TIMEOUTS", retry_timeouts)
    acq = register_plate(lab.db, lab.settings, barcode="SLOW", wells=["B02"], sites=[1], seed=5)
    sub_id = submit(lab, acq, job_timeout=1)  # CellProfiler alone takes longer to start
    run = run_once(lab, dagster_instance, sub_id)

    step = "features_step.run_cellprofiler[batch_0000]"
    retried = events(dagster_instance, run.run_id, dg.DagsterEventType.STEP_UP_FOR_RETRY)
    assert [e.step_key for e in retried] == [step] * (attempts - 1)
    assert [e.step_key for e in events(dagster_instance, run.run_id, dg.DagsterEventType.STEP_FAILURE)] == [step]
    assert_failed(lab, sub_id, run, f"step {step} failed: CellProfiler did not finish within the job timeout of 1 s "
                                    "and was killed")


def test_outputs_that_cannot_be_converted_fail_the_batch_without_running_cellprofiler_again(
        lab, dagster_instance, monkeypatch):
    """CellProfiler finished and its outputs were verified, but a table cannot be converted
    (here its Cells table is emptied after the verification): CellProfiler would write the
    same again, so the batch fails at once, with retries configured, naming the file. A
    disk error while converting (OSError) is still retried like a crash."""
    from cpp_dagster.features import batch_tables

    monkeypatch.setenv("CPP_EXECUTOR", "in_process")  # the conversion runs in this process
    monkeypatch.setenv("CPP_BATCH_RETRIES", "2")
    convert = batch_tables.convert_batch

    def emptied_cells_table(batch_dir, number=None):
        next((batch_dir / "output").glob("*Cells.csv")).write_bytes(b"")
        return convert(batch_dir, number)

    monkeypatch.setattr(batch_tables, "convert_batch", emptied_cells_table)
    acq = register_plate(lab.db, lab.settings, barcode="EMPTYCSV", wells=["B02"], sites=[1], seed=5)
    sub_id = submit(lab, acq)
    run = run_once(lab, dagster_instance, sub_id)

    step = "features_step.run_cellprofiler[batch_0000]"
    assert not events(dagster_instance, run.run_id, dg.DagsterEventType.STEP_UP_FOR_RETRY)
    assert [e.step_key for e in events(dagster_instance, run.run_id, dg.DagsterEventType.STEP_FAILURE)] == [step]
    message = assert_failed(lab, sub_id, run, f"step {step} failed: batch_0000: its outputs cannot be converted",
                            "its Cells table", "is empty (0 bytes, no header)")
    assert "Cells.csv" in message
    assert not list((lab.nas / "results").rglob("*.parquet"))


def _finished_run(instance, sub_id: int, report) -> tuple[dg.DagsterRun, dg.DagsterEvent]:
    run = instance.add_run(dg.DagsterRun(job_name="analysis_job", run_id=str(uuid.uuid4()),
                                         tags={"imagedb/sub_id": str(sub_id)}))
    report(run)
    event_type = (dg.DagsterEventType.RUN_CANCELED if report == instance.report_run_canceled
                  else dg.DagsterEventType.RUN_FAILURE)
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
    context = dg.build_run_status_sensor_context(sensor_name=sensor.name, dagster_event=event,
                                                 dagster_instance=dagster_instance, dagster_run=run,
                                                 resources=build_defs().resources)
    sensor(context if outcome == "canceled" else context.for_run_failure())
    sub = lab.db.sub_analysis(sub_id)
    assert sub.error is not None and sub.status["state"] == "failed"
    expected = "cancelled: run" if outcome == "canceled" else f"run {run.run_id} failed"
    assert sub.status["message"].startswith(expected)
    assert lab.db.analysis(sub.analysis_id)["error"] is not None


@pytest.mark.parametrize(
    "deployment, sub_meta, why",
    [("multiprocess", {"site_filter": ["one"]}, "'site_filter' must be a list of integers"),
     ("k8s", {"cp_version": "4.2.8"}, "cp_version '4.2.8' has no container image configured")],
)
def test_analysis_that_cannot_run_here_fails_without_a_run(lab, dagster_instance, monkeypatch, deployment,
                                                           sub_meta, why):
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
    run = dagster_instance.add_run(dg.DagsterRun(job_name="__ASSET_JOB", run_id=str(uuid.uuid4()),
                                                 tags={"imagedb/sub_id": str(sub_id)}))
    dagster_instance.report_run_canceled(run)  # any terminal event to build the context from
    event = events(dagster_instance, run.run_id, dg.DagsterEventType.RUN_CANCELED)[0]
    record_run_without_outcome(dg.build_run_status_sensor_context(
        sensor_name=record_run_without_outcome.name, dagster_event=event, dagster_instance=dagster_instance,
        dagster_run=dagster_instance.get_run_by_id(run.run_id), resources=build_defs().resources))
    sub = lab.db.sub_analysis(sub_id)
    assert sub.error is not None and "succeeded but did not complete it" in sub.status["message"]
