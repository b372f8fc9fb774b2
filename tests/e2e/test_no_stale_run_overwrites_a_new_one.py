"""A failed or cancelled run that is still finishing never changes the re-run that
replaced it (its row in imagedb, its work folders, its results), and a sub-analysis is
run by one run at a time. Real imagedb, real CellProfiler, real Dagster runs and sensors.
imagedb's refusal of a stale write alone: tests/integration/test_stale_and_simultaneous_writes_to_imagedb.py."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import uuid

import dagster as dg
import pytest
from dagster_helpers import events, launch, tick
from submissions import submit

from cpp_dagster.analysis import lifecycle
from cpp_dagster.analysis.sub_analysis import resolve, work_dir
from cpp_dagster.demo.register import DEMO_PIPELINE_FILE, register_plate
from cpp_dagster.features.results_folder import versions_dir
from cpp_dagster.imagedb.outcome import StaleRunError
from cpp_dagster.imagedb.rows import RunStamp


def snapshot(folder) -> dict[str, str]:
    """Every file under a results folder (through its link) with a hash of its bytes."""
    root = folder.resolve()
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_the_old_runs_late_outcome_never_changes_the_rerun_row_or_files(lab):
    db, settings = lab.db, lab.settings
    acq = register_plate(db, settings, barcode="RACE", wells=["B02"], sites=[1, 2], seed=5)
    sub_id = submit(lab, acq, batch_size=1)
    old, new = RunStamp(0, "run-generation-0"), RunStamp(1, "run-generation-1")

    # Generation 0: batch_0000 finishes; batch_0001 fails and the run is failed while
    # that batch's retry is still running.
    first = lifecycle.prepare(db, settings, resolve(db, settings, sub_id, old))
    b0, b1 = first.batches
    lifecycle.run_batch(settings, b0)
    assert db.record_batch_finished(sub_id, b0.name, old).startswith("1 / 2 batches finished")
    assert db.mark_sub_failed(sub_id, "step run_cellprofiler[batch_0001] failed: exit code 1", old)

    # The lab re-runs it; generation 1 plans into folders of its own.
    assert db.rerun_sub_analysis(sub_id) == 1
    second = lifecycle.prepare(db, settings, resolve(db, settings, sub_id, new))
    assert all("/g1/" in s.batch_dir for s in second.batches)
    assert all("/g0/" in s.batch_dir for s in first.batches)
    started = db.sub_analysis(sub_id)

    # The old run's retry of batch_0001 now finishes, and its outcome arrives.
    late = lifecycle.run_batch(settings, b1)
    assert "/g0/" in late.output_dir
    assert db.record_batch_finished(sub_id, b1.name, old) is None
    with pytest.raises(StaleRunError):
        lifecycle.merge(db, settings, first.sub, [b0.batch_dir, b1.batch_dir])
    assert not db.mark_sub_failed(sub_id, "cancelled: run-generation-0 was cancelled", old)
    assert not db.mark_sub_started(sub_id, batches=2, image_sets=2, stamp=old)
    with pytest.raises(StaleRunError):
        lifecycle.complete(db, settings, first.sub)
    assert db.sub_analysis(sub_id) == started  # the row of generation 1, untouched
    assert started.error is None and started.finish is None and started.status["run_id"] == new.run_id
    results = second.sub.results_dir
    assert not results.exists()  # nothing published by the stale merge
    assert list(versions_dir(results).iterdir()) == []  # and no staging left behind

    # Generation 1 runs: both batches are reused (verified outputs, same fingerprint),
    # linked into its own folders, then merged and completed.
    outcomes = [lifecycle.run_batch(settings, s) for s in second.batches]
    assert [o.reused for o in outcomes] == [True, True]
    assert all("/g1/" in o.output_dir for o in outcomes)
    progress = [db.record_batch_finished(sub_id, s.name, new) for s in second.batches]
    assert [p[:5] for p in progress] == ["1 / 2", "2 / 2"]
    merged = lifecycle.merge(db, settings, second.sub, [s.batch_dir for s in second.batches])
    lifecycle.write_single_cell(db, settings, merged)
    lifecycle.write_well_profiles(db, settings, merged)
    result = lifecycle.complete(db, settings, second.sub)
    finished, files = db.sub_analysis(sub_id), snapshot(results)
    assert finished.finish and finished.error is None and result["file_list"]

    # The old run's outcome arriving even later changes nothing either.
    assert not db.mark_sub_failed(sub_id, "very late failure", old)
    with pytest.raises(StaleRunError):
        lifecycle.merge(db, settings, first.sub, [b0.batch_dir, b1.batch_dir])
    with pytest.raises(StaleRunError):
        lifecycle.write_single_cell(db, settings, dataclasses.replace(merged, sub=first.sub))
    assert db.sub_analysis(sub_id) == finished and snapshot(results) == files
    assert [p.name.split("-")[0] for p in versions_dir(results).iterdir()] == ["v"]  # one version, no staging


def test_a_failure_of_generation_0_reported_after_generation_1_started_is_refused(lab, dagster_instance):
    """Through the real run-failure sensor, as the daemon evaluates it late."""
    from cpp_dagster.definitions import build_defs
    from cpp_dagster.defs.analysis.sensors import record_run_failure

    acq = register_plate(lab.db, lab.settings, barcode="LATE", wells=["B02"], sites=[1], seed=2)
    sub_id = submit(lab, acq, batch_size=1, pipeline_file="late/features.cppipe")  # not there yet
    (request,) = tick(dagster_instance).run_requests
    assert request.tags["imagedb/generation"] == "0"
    failed = launch(dagster_instance, request)
    assert failed.status == dg.DagsterRunStatus.FAILURE and lab.db.sub_analysis(sub_id).error

    (lab.settings.pipelines_dir / "late").mkdir()
    shutil.copyfile(
        lab.settings.pipelines_dir / DEMO_PIPELINE_FILE, lab.settings.pipelines_dir / "late/features.cppipe"
    )
    assert lab.db.rerun_sub_analysis(sub_id) == 1
    (again,) = tick(dagster_instance).run_requests
    assert again.tags["imagedb/generation"] == "1"
    lifecycle.prepare(
        lab.db, lab.settings, resolve(lab.db, lab.settings, sub_id, RunStamp(1, "the-rerun"))
    )  # as generation 1's plan step
    running = lab.db.sub_analysis(sub_id)

    event = events(dagster_instance, failed.run_id, dg.DagsterEventType.RUN_FAILURE)[0]
    record_run_failure(
        dg.build_run_status_sensor_context(
            sensor_name=record_run_failure.name,
            dagster_event=event,
            dagster_instance=dagster_instance,
            dagster_run=failed,
            resources=build_defs().resources,
        ).for_run_failure()
    )
    sub = lab.db.sub_analysis(sub_id)
    assert sub == running and sub.error is None and sub.status["state"] == "running"
    assert lab.db.analysis(sub.analysis_id)["error"] is None


def test_one_active_run_per_partition(lab, dagster_instance):
    """While the sensor's run of a sub-analysis is active, a Materialize of the same
    plate x pipeline partition from the UI stops before planning (and before submitting
    anything) and changes nothing; the run queue's tag limit (dagster.yaml) is what
    normally holds it back."""
    import yaml

    from cpp_dagster.definitions import analysis_job_def
    from cpp_dagster.settings import PROJECT_ROOT

    limits = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())["concurrency"]["runs"][
        "tag_concurrency_limits"
    ]
    assert {"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in limits
    helm = yaml.safe_load((PROJECT_ROOT / "helm-values.yaml").read_text())["concurrency"]["runs"][
        "tagConcurrencyLimits"
    ]
    assert {"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in helm

    acq = register_plate(lab.db, lab.settings, barcode="ONCE", wells=["B02"], sites=[1], seed=2)
    sub_id = submit(lab, acq, batch_size=1)
    (request,) = tick(dagster_instance).run_requests
    sensor_run = dagster_instance.add_run(
        dg.DagsterRun(
            job_name="analysis_job",
            run_id=str(uuid.uuid4()),
            status=dg.DagsterRunStatus.STARTED,
            tags={"dagster/partition": request.partition_key, **request.tags},
        )
    )
    lifecycle.prepare(
        lab.db, lab.settings, resolve(lab.db, lab.settings, sub_id, RunStamp(0, sensor_run.run_id))
    )  # the sensor's run is planning
    before = lab.db.sub_analysis(sub_id)

    with dg.execute_job(
        dg.reconstructable(analysis_job_def),
        instance=dagster_instance,
        tags={"dagster/partition": request.partition_key},
        raise_on_error=False,
        asset_selection=list(request.asset_selection),
    ) as ui:
        assert not ui.success
        (failure,) = [e for e in ui.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert failure.step_key == "features_step.plan_batches"
    assert f"is being run by run {sensor_run.run_id}" in failure.event_specific_data.error.message
    assert lab.db.sub_analysis(sub_id) == before  # imagedb unchanged, no second plan
    assert lab.db.analysis_of_run(ui.run_id) is None  # and nothing submitted
    assert sorted(p.name for p in work_dir(lab.settings, sub_id).iterdir()) == ["batch_0000"]
