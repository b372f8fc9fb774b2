"""Sensors: keep the plate x pipeline partitions in step with imagedb, launch ready
sub-analyses exactly once, submit automation rules, and record what hooks cannot see."""

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import dagster as dg

from cpp_dagster.analysis.planning import SubAnalysisOptions
from cpp_dagster.analysis.sub_analysis import Stage
from cpp_dagster.defs.analysis.assets import FEATURE_TABLES, PROFILES, SINGLE_CELL, plate_acquisitions
from cpp_dagster.defs.analysis.hooks import failure_message
from cpp_dagster.defs.analysis.partition_growth import new_keys
from cpp_dagster.defs.analysis.partitions import (
    ANALYSIS_ID_TAG,
    GENERATION_TAG,
    SUB_ID_TAG,
    analysis_partitions,
    other_active_runs,
    partition_key,
    pipeline_key,
    plate_keys,
    run_stamp,
)
from cpp_dagster.defs.analysis.run_target import sub_analyses_of_run
from cpp_dagster.defs.resources import ImageDBResource
from cpp_dagster.ids import parse_id
from cpp_dagster.imagedb.ready import Unlaunchable
from cpp_dagster.imagedb.rows import ReadySubAnalysis

analysis_job = dg.define_asset_job(
    "analysis_job",
    selection=dg.AssetSelection.groups("analysis"),
    partitions_def=analysis_partitions,
    description="Every step of a pipeline on a plate (pipeline x plate partition): illumination, QC, feature "
    "tables, single-cell table, well profiles; launched from the UI, it submits the pipeline.",
)

# The assets a sensor-launched run of a sub-analysis materializes, by its step, and the
# job that runs them (one sub-analysis per run).
STAGE_ASSETS = {
    Stage.ILLUMINATION: [dg.AssetKey(Stage.ILLUMINATION.value)],
    Stage.QC: [dg.AssetKey(Stage.QC.value)],
    Stage.FEATURES: [FEATURE_TABLES, SINGLE_CELL, PROFILES],
}
STAGE_JOBS = {
    stage: dg.define_asset_job(
        f"{stage.value}_job",
        selection=dg.AssetSelection.assets(*keys),
        partitions_def=analysis_partitions,
        description=f"One sub-analysis of sub_type {stage.name.lower()}: its {stage.value} stage, launched by the "
        "pending_sub_analyses sensor.",
    )
    for stage, keys in STAGE_ASSETS.items()
}
PAGE_SIZE = 500


@dataclass(frozen=True)
class Launching:
    """What the launch sensors need from the deployment, given by definitions.py:
    `check` raises ValueError for a sub-analysis's options this deployment cannot run
    (e.g. no image for its cp_version); `run_config` is the run config of its run (the
    per-step pod settings on Kubernetes; {} locally)."""

    interval_s: int = 30
    max_requests: int = 2000
    max_new_keys: int = 300
    check: Callable[[SubAnalysisOptions], None] = lambda options: None
    run_config: Callable[[ReadySubAnalysis, SubAnalysisOptions], dict] = lambda ready, options: {}


def run_request(
    r: ReadySubAnalysis, options: SubAnalysisOptions, plate: str, rerun: int = 0, run_config: dict | None = None
) -> dg.RunRequest:
    key = f"sub{r.sub_id}"
    stage = Stage.of(options.sub_type)
    return dg.RunRequest(
        # One run per sub-analysis and re-run generation, ever: a failed run is not
        # requested again by itself; `cpp-dagster rerun` bumps the generation.
        run_key=key if rerun == 0 else f"{key}:rerun{rerun}",
        job_name=STAGE_JOBS[stage].name,
        partition_key=partition_key(pipeline_key(r.pipeline_name, r.analysis_id), plate),
        asset_selection=STAGE_ASSETS[stage],
        run_config=run_config or {},
        tags={
            "dagster/priority": str(10 - r.priority),
            "imagedb/plate_barcode": r.plate_barcode,
            SUB_ID_TAG: str(r.sub_id),
            ANALYSIS_ID_TAG: str(r.analysis_id),
            GENERATION_TAG: str(rerun),
        },
    )


def judge(check: Callable[[SubAnalysisOptions], None], meta: dict) -> tuple[SubAnalysisOptions | None, str | None]:
    """A sub-analysis's options, parsed once per tick, or why its meta cannot run here.
    Anything raised on a meta nobody foresaw is still this row's problem, never the
    whole tick's."""
    try:
        options = SubAnalysisOptions.from_meta(meta)
        check(options)
    except ValueError as e:
        return None, str(e)
    except Exception as e:  # one row's surprise must not stop every other row
        return None, f"its meta could not be read ({type(e).__name__}: {e})"
    return options, None


def build_pending_sensor(launching: Launching) -> dg.SensorDefinition:
    @dg.sensor(
        jobs=list(STAGE_JOBS.values()),
        name="pending_sub_analyses",
        minimum_interval_seconds=launching.interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def pending_sub_analyses(context: dg.SensorEvaluationContext, imagedb: ImageDBResource):
        """Keeps the plate x pipeline partitions in step with imagedb, and launches the
        sub-analyses that are submitted, whose acquisition is finished and whose
        dependencies are finished, by priority. The run key makes each one run once
        across ticks and daemon restarts; a sub-analysis leaves the query once its run
        starts. Each row is judged on its own: one that can never run (wrong JSON shape,
        a missing or failed dependency, options this deployment cannot run) fails in
        imagedb with the reason while every other row goes on."""
        db = imagedb.db()
        plates = plate_keys(db.plate_acquisitions_by_id())
        failed = [row for row in db.malformed_sub_analyses() if db.mark_sub_failed(row.sub_id, row.message)]
        failed += db.fail_unresolvable_dependencies()
        ready: list[ReadySubAnalysis] = []
        after = None
        while len(ready) < launching.max_requests:
            page = db.ready_sub_analyses(limit=PAGE_SIZE, after=after)
            ready += page
            if len(page) < PAGE_SIZE:
                break
            after = (page[-1].priority, page[-1].sub_id)
        launchable: list[tuple[ReadySubAnalysis, SubAnalysisOptions]] = []
        for r in ready:
            options, why = judge(launching.check, r.meta)
            if options is not None:
                launchable.append((r, options))
            elif db.mark_sub_failed(r.sub_id, f"not launched: {why}"):
                failed.append(Unlaunchable(r.sub_id, f"not launched: {why}"))
        for row in failed:
            context.log.warning(f"sub-analysis {row.sub_id} failed: {row.message}")
        keys = new_keys(
            context.instance,
            plates,
            db.pipeline_names(),
            [(pipeline_key(r.pipeline_name, r.analysis_id), plates[r.plate_acquisition_id]) for r, _ in launchable],
            launching.max_new_keys,
        )
        held = len(launchable)
        launchable = [
            (r, o)
            for r, o in launchable
            if keys.has(pipeline_key(r.pipeline_name, r.analysis_id), plates[r.plate_acquisition_id])
        ]
        if keys.left:
            waiting = held - len(launchable)
            context.log.info(
                f"added {len(keys.pipelines) + len(keys.plates)} new partition keys (at most "
                f"{launching.max_new_keys} a tick), {keys.left} left for the next ticks"
                + (f"; {waiting} ready sub-analyses wait in imagedb for theirs" if waiting else "")
            )
        reruns = db.rerun_generations([r.sub_id for r, _ in launchable])
        requests = [
            run_request(
                r, options, plates[r.plate_acquisition_id], reruns.get(r.sub_id, 0), launching.run_config(r, options)
            )
            for r, options in launchable
        ]
        partitions = keys.requests()
        ready_per_plate = Counter(r.plate_acquisition_id for r, _ in launchable)
        if not requests and not partitions:
            return dg.SkipReason(
                "no submitted sub-analysis is ready"
                + (f"; {len(failed)} that can never run failed in imagedb" if failed else "")
            )
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=partitions,
            asset_events=[
                dg.AssetObservation(
                    asset_key=plate_acquisitions.key,
                    metadata={"plate_acquisition_id": acq_id, "plate": plates[acq_id], "ready_sub_analyses": n},
                )
                for acq_id, n in sorted(ready_per_plate.items())
            ],
        )

    return pending_sub_analyses


def build_automation_sensor(interval_s: int) -> dg.SensorDefinition:
    @dg.sensor(
        name="automation_rules", minimum_interval_seconds=interval_s, default_status=dg.DefaultSensorStatus.RUNNING
    )
    def automation_rules(context: dg.SensorEvaluationContext, imagedb: ImageDBResource):
        """Submit the pipelines of image_analyses_automation rules for newly finished
        acquisitions, once each (recorded in image_analyses_automation_submitted). The
        submitted analyses are then launched by pending_sub_analyses like any other. A
        rule whose pipeline cannot be submitted (e.g. it names a missing pipeline) is
        recorded as a failed analysis in imagedb, with the reason, and the others go on."""
        submitted = imagedb.db().submit_by_automation()
        if not submitted:
            return dg.SkipReason("no finished acquisition matches an automation rule")
        for acq, pipeline, analysis in submitted:
            if analysis.error:
                context.log.warning(
                    f"automation: {pipeline!r} for plate acquisition {acq} failed "
                    f"(analysis {analysis.analysis_id}): {analysis.error}"
                )
            else:
                context.log.info(
                    f"automation: submitted {pipeline} for plate acquisition {acq} "
                    f"(analysis {analysis.analysis_id}, sub-analyses {analysis.sub_ids})"
                )
        return dg.SensorResult(
            asset_events=[
                dg.AssetObservation(
                    asset_key=plate_acquisitions.key,
                    metadata={
                        "plate_acquisition_id": acq,
                        "submitted_by_automation": pipeline,
                        "analysis_id": analysis.analysis_id,
                        **({"automation_error": analysis.error} if analysis.error else {}),
                    },
                )
                for acq, pipeline, analysis in submitted
            ]
        )

    return automation_rules


def _record(
    context: dg.RunStatusSensorContext, imagedb: ImageDBResource, message: str, *, only_started: bool = False
) -> None:
    """The run's failure, on every sub-analysis it runs that has not finished, stamped
    with its generation and run id: imagedb refuses it when the sub-analysis has been
    re-run (or started by another run) since, so a failed old run never marks the newer
    re-run failed; and while another run of the same partition is active, that run decides."""
    run = context.dagster_run
    db = imagedb.db()
    for sub in sub_analyses_of_run(db, run):
        if sub.finish is not None or sub.error is not None or (only_started and sub.start is None):
            continue
        if other_active_runs(context.instance, run):
            context.log.info(f"sub-analysis {sub.sub_id}: another run is active; not recorded: {message}")
        elif db.mark_sub_failed(sub.sub_id, message, run_stamp(run)):
            context.log.info(f"sub-analysis {sub.sub_id} marked failed: {message}")


# Dagster's run tags of run retries (dagster.yaml run_retries): set on a failed run once
# the instance has decided whether the daemon re-executes it, and on each retry
WILL_RETRY_TAG, RETRY_NUMBER_TAG, FAILURE_REASON_TAG = (
    "dagster/will_retry",
    "dagster/retry_number",
    "dagster/failure_reason",
)
# why a run failed without a step failing, in the lab's words
FAILURE_REASONS = {
    "UNEXPECTED_TERMINATION": "the run's worker process died (killed or out of memory)",
    "RUN_WORKER_RESTART": "the run's worker was restarted (its pod evicted or its node drained)",
    "START_TIMEOUT": "the run did not start in time (its worker never came up)",
}
# how Dagster words a run worker lost without a reason tag: the code server saw its
# process exit (local), run monitoring saw its pod fail (Kubernetes)
WORKER_LOST_MESSAGES = (
    "This run has been marked as failed from outside the execution context",
    "Detected run worker status",
)


def _settled_run(context: dg.RunFailureSensorContext, wait_s: float = 5.0) -> dg.DagsterRun:
    """The failed run as stored now, once the instance has decided whether the daemon
    re-executes it (the `dagster/will_retry` tag, added right after the failure is stored:
    waited for briefly if this tick came first)."""
    deadline = time.monotonic() + wait_s
    while True:
        run = context.instance.get_run_by_id(context.dagster_run.run_id) or context.dagster_run
        decided = WILL_RETRY_TAG in run.tags or not context.instance.run_retries_enabled
        if decided or time.monotonic() > deadline:
            return run
        time.sleep(0.5)


def run_failure_message(run: dg.DagsterRun, event_message: str) -> str:
    """A failed run's message when no step failed: the reason in the lab's words, and how
    often Dagster re-ran it before giving up."""
    reason = FAILURE_REASONS.get(run.tags.get(FAILURE_REASON_TAG, ""))
    if reason is None and event_message.startswith(WORKER_LOST_MESSAGES):
        reason = FAILURE_REASONS["UNEXPECTED_TERMINATION"]
    if reason is None:
        return f"run {run.run_id} failed: {event_message}"
    retries = parse_id(run.tags.get(RETRY_NUMBER_TAG)) or 0
    again = f"retried {retries} time{'s' * (retries != 1)}" if retries else "not retried"
    return f"run {run.run_id} failed: {reason}; {again}"


@dg.run_failure_sensor(default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=10)
def record_run_failure(context: dg.RunFailureSensorContext, imagedb: ImageDBResource):
    """A failed run whose failure no hook recorded (killed worker, start timeout, a step
    that failed without running its hook): its sub-analyses fail with the steps' errors,
    unless Dagster re-executes the run (run retries): then its retry decides."""
    run = _settled_run(context)
    if run.tags.get(WILL_RETRY_TAG) == "true":
        context.log.info(f"run {run.run_id} failed and is retried from failure: imagedb waits")
        return
    steps = context.get_step_failure_events()
    if steps:
        message = "; ".join(
            failure_message(
                e.step_key, e.event_specific_data.error.message.strip() if e.event_specific_data.error else ""
            )
            for e in steps
        )
    else:
        message = run_failure_message(run, context.dagster_event.message or "")
    _record(context, imagedb, message)


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.CANCELED, default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=10
)
def record_run_cancellation(context: dg.RunStatusSensorContext, imagedb: ImageDBResource):
    _record(context, imagedb, f"cancelled: run {context.dagster_run.run_id} was cancelled in Dagster")


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS, default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=30
)
def record_run_without_outcome(context: dg.RunStatusSensorContext, imagedb: ImageDBResource):
    """A run that succeeded without completing a sub-analysis it started (a step's asset
    left out of the selection) must not leave it started forever."""
    _record(
        context,
        imagedb,
        f"run {context.dagster_run.run_id} succeeded but did not complete it; launch "
        "every step of the pipeline (the analysis_job, or all its assets) to complete it",
        only_started=True,
    )
