"""Sensors: launch ready sub-analyses exactly once; record what hooks cannot see."""

import os
from collections import Counter

import dagster as dg

from cpp_dagster.defs.assets import plate_acquisitions
from cpp_dagster.defs.executor import preflight
from cpp_dagster.defs.hooks import failure_message
from cpp_dagster.defs.partitions import (
    GENERATION_TAG,
    other_active_runs,
    partition_key,
    run_stamp,
    sub_analysis_partitions,
    sub_id_of,
)
from cpp_dagster.defs.resources import ImageDBResource
from cpp_dagster.imagedb.ready import Unlaunchable
from cpp_dagster.imagedb.rows import ReadySubAnalysis

analysis_job = dg.define_asset_job(
    "analysis_job",
    selection=dg.AssetSelection.keys("feature_tables").downstream(),
    partitions_def=sub_analysis_partitions,
    description="One sub-analysis: plan, CellProfiler per batch, merge and checks, "
    "single-cell table, well profiles, write-back.",
)

PAGE_SIZE = 500
MAX_REQUESTS_PER_TICK = int(os.getenv("CPP_SENSOR_MAX_REQUESTS", "2000"))


def run_request(r: ReadySubAnalysis, rerun: int = 0) -> dg.RunRequest:
    key = partition_key(r.plate_acquisition_id, r.analysis_id, r.sub_id)
    return dg.RunRequest(
        # One run per sub-analysis and re-run generation, ever: a failed run is not
        # requested again by itself; `cpp-dagster rerun` bumps the generation.
        run_key=key if rerun == 0 else f"{key}:rerun{rerun}",
        partition_key=key,
        tags={"dagster/priority": str(10 - r.priority), "imagedb/plate_barcode": r.plate_barcode,
              "imagedb/sub_id": str(r.sub_id), "imagedb/analysis_id": str(r.analysis_id),
              GENERATION_TAG: str(rerun)},
    )


@dg.sensor(
    job=analysis_job,
    minimum_interval_seconds=int(os.getenv("CPP_SENSOR_INTERVAL_S", "30")),
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def pending_sub_analyses(context: dg.SensorEvaluationContext, imagedb: ImageDBResource):
    """Sub-analyses that are submitted, whose acquisition is finished and whose
    dependencies are finished, by priority. The run key makes each one run once across
    ticks and daemon restarts; a sub-analysis leaves the query once its run starts.

    Each row is judged on its own, and one that can never run fails in imagedb with the
    reason while every other row goes on: its JSON has the wrong shape (`meta must be a
    JSON object`, `depends_on_sub_id must be a list of sub-analysis ids`), it depends on a
    sub-analysis that does not exist or has failed, or its meta cannot run here (bad
    options, no image for its cp_version)."""
    db = imagedb.db()
    failed = [row for row in db.malformed_sub_analyses() if db.mark_sub_failed(row.sub_id, row.message)]
    failed += db.fail_unresolvable_dependencies()
    ready: list[ReadySubAnalysis] = []
    after = None
    while len(ready) < MAX_REQUESTS_PER_TICK:
        page = db.ready_sub_analyses(limit=PAGE_SIZE, after=after)
        ready += page
        if len(page) < PAGE_SIZE:
            break
        after = (page[-1].priority, page[-1].sub_id)
    launchable = []
    for r in ready:
        problem = preflight_problem(r.meta)
        if problem is None:
            launchable.append(r)
        elif db.mark_sub_failed(r.sub_id, f"not launched: {problem}"):
            failed.append(Unlaunchable(r.sub_id, f"not launched: {problem}"))
    for row in failed:
        context.log.warning(f"sub-analysis {row.sub_id} failed: {row.message}")
    ready = launchable
    if not ready:
        return dg.SkipReason("no submitted sub-analysis is ready"
                             + (f"; {len(failed)} that can never run failed in imagedb" if failed else ""))
    reruns = db.rerun_generations([r.sub_id for r in ready])
    requests = [run_request(r, reruns.get(r.sub_id, 0)) for r in ready]
    acquisitions = {r.plate_acquisition_id: r.plate_barcode for r in ready}
    ready_per_plate = Counter(r.plate_acquisition_id for r in ready)
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[sub_analysis_partitions.build_add_request([r.partition_key for r in requests])],
        asset_events=[
            dg.AssetObservation(
                asset_key=plate_acquisitions.key,
                metadata={"plate_acquisition_id": acq_id, "plate_barcode": barcode,
                          "ready_sub_analyses": ready_per_plate[acq_id]},
            )
            for acq_id, barcode in sorted(acquisitions.items())
        ],
    )


def preflight_problem(meta: dict) -> str | None:
    """Why this sub-analysis's meta cannot run here, or None. `preflight` raises
    PlanningError/PodConfigError (ValueError) for what it checks; anything else it raises
    on a meta nobody foresaw is still this row's problem, never the whole tick's."""
    try:
        preflight(meta)
    except ValueError as e:
        return str(e)
    except Exception as e:  # one row's surprise must not stop every other row
        return f"its meta could not be read ({type(e).__name__}: {e})"
    return None


@dg.sensor(minimum_interval_seconds=int(os.getenv("CPP_SENSOR_INTERVAL_S", "30")),
           default_status=dg.DefaultSensorStatus.RUNNING)
def automation_rules(context: dg.SensorEvaluationContext, imagedb: ImageDBResource):
    """Submit the pipelines of image_analyses_automation rules for newly finished
    acquisitions, once each (recorded in image_analyses_automation_submitted). The
    submitted analyses are then launched by pending_sub_analyses like any other. A rule
    whose pipeline cannot be submitted (e.g. it names a missing pipeline) is recorded as a
    failed analysis in imagedb, with the reason, and the other rules go on."""
    submitted = imagedb.db().submit_by_automation()
    if not submitted:
        return dg.SkipReason("no finished acquisition matches an automation rule")
    for acq, pipeline, analysis in submitted:
        if analysis.error:
            context.log.warning(f"automation: {pipeline!r} for plate acquisition {acq} failed "
                                f"(analysis {analysis.analysis_id}): {analysis.error}")
        else:
            context.log.info(f"automation: submitted {pipeline} for plate acquisition {acq} "
                             f"(analysis {analysis.analysis_id}, sub-analyses {analysis.sub_ids})")
    return dg.SensorResult(asset_events=[
        dg.AssetObservation(asset_key=plate_acquisitions.key,
                            metadata={"plate_acquisition_id": acq, "submitted_by_automation": pipeline,
                                      "analysis_id": analysis.analysis_id,
                                      **({"automation_error": analysis.error} if analysis.error else {})})
        for acq, pipeline, analysis in submitted])


def _record(context: dg.RunStatusSensorContext, imagedb: ImageDBResource, message: str) -> None:
    """The run's failure, stamped with its generation and run id: imagedb refuses it when
    the sub-analysis has been re-run (or started by another run) since, so a failed old
    run never marks the newer re-run failed; and while another run of the same
    sub-analysis is active, that run decides."""
    run = context.dagster_run
    sub_id = sub_id_of(run.tags.get("dagster/partition"))
    if sub_id is None:
        return
    if other_active_runs(context.instance, run):
        context.log.info(f"sub-analysis {sub_id}: another run is active; not recorded: {message}")
    elif imagedb.db().mark_sub_failed(sub_id, message, run_stamp(run)):
        context.log.info(f"sub-analysis {sub_id} marked failed: {message}")


@dg.run_failure_sensor(default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=10)
def record_run_failure(context: dg.RunFailureSensorContext, imagedb: ImageDBResource):
    """A failed run whose failure no hook recorded (killed worker, start timeout, a step
    that failed without running its hook): the sub-analysis fails with the steps' errors."""
    steps = context.get_step_failure_events()
    if steps:
        message = "; ".join(
            failure_message(e.step_key, e.event_specific_data.error.message.strip() if e.event_specific_data.error else "")
            for e in steps
        )
    else:
        message = f"run {context.dagster_run.run_id} failed: {context.dagster_event.message}"
    _record(context, imagedb, message)


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.CANCELED,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=10,
)
def record_run_cancellation(context: dg.RunStatusSensorContext, imagedb: ImageDBResource):
    _record(context, imagedb, f"cancelled: run {context.dagster_run.run_id} was cancelled in Dagster")


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
)
def record_run_without_outcome(context: dg.RunStatusSensorContext, imagedb: ImageDBResource):
    """A run that succeeded without completing its sub-analysis (e.g. only feature_tables
    was materialized from the UI) must not leave it started forever."""
    key = context.dagster_run.tags.get("dagster/partition")
    sub_id = sub_id_of(key)
    if sub_id is None:
        return
    newest = context.instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": key}), limit=1)
    if newest and newest[0].run_id != context.dagster_run.run_id:
        return  # a later run of this sub-analysis decides its outcome
    sub = imagedb.db().sub_analysis(sub_id)
    if sub.start and not sub.finish and not sub.error:
        _record(context, imagedb, f"run {context.dagster_run.run_id} succeeded but did not write all outputs; "
                                  "materialize feature_tables, single_cell_table and well_profiles together "
                                  "(the analysis_job) to complete it")
