"""The ops of a pipeline step: plan -> one CellProfiler op per batch -> merge -> (for the
features step) single-cell table -> well profiles and completion.

Thin wrappers around cpp_dagster.analysis. The sub-analysis is resolved once, by
plan_batches (`lifecycle.prepare` -> `SubAnalysisRun`), and passed along as an input; the
step's assets materialize together in the last op, once the sub-analysis is complete in
imagedb, so a partition is green only when its step finished, derived tables included.
Under the multiprocess executor each op is its own process; under the k8s executor its own
pod (per-step pod settings are keyed by these op names).
"""

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import psutil

from cpp_dagster.analysis import attempts, lifecycle
from cpp_dagster.analysis.cellprofiler import BatchAbandoned, BatchOutcome, BatchTimeout
from cpp_dagster.analysis.quality import NO_OBJECT_TABLES
from cpp_dagster.analysis.sub_analysis import Stage, SubAnalysisRun, resolve
from cpp_dagster.defs.analysis import run_target
from cpp_dagster.defs.analysis.partitions import GENERATION_TAG, PROGRESS_TAG, other_active_runs, run_stamp
from cpp_dagster.defs.resources import DeploymentResource, ImageDBResource
from cpp_dagster.features.schema import SchemaError
from cpp_dagster.imagedb.outcome import progress_message
from cpp_dagster.settings import Settings

CELLPROFILER_POOL = "cellprofiler"  # every batch op's pool: the cap on CellProfiler processes across runs
OP_NAMES = (
    "plan_batches",
    "run_cellprofiler",
    "merge_tables",
    "write_single_cell_table",
    "write_well_profiles",
    "complete_step",
)


# The graph (node name, the first part of a step key) of each pipeline step's ops: the
# asset's name, but the features step's graph holds three assets.
STAGE_GRAPHS = {Stage.ILLUMINATION: Stage.ILLUMINATION.value, Stage.QC: Stage.QC.value, Stage.FEATURES: "features_step"}


def stage_of_key(step_key: str) -> Stage | None:
    """The pipeline step of a step key (`features_step.merge_tables` -> FEATURES)."""
    graph = step_key.split(".", 1)[0]
    return next((stage for stage, name in STAGE_GRAPHS.items() if name == graph), None)


def stage_of(context: dg.OpExecutionContext) -> Stage:
    """The pipeline step (asset) this op belongs to."""
    keys = {key.to_user_string() for key in context.assets_def.keys}
    return next(stage for stage in Stage if stage.value in keys)


@dg.op(
    ins={"acquisitions": dg.In(dg.Nothing), "illumination": dg.In(dg.Nothing), "qc": dg.In(dg.Nothing)},
    out={"batches": dg.DynamicOut(lifecycle.BatchSpec), "sub": dg.Out(is_required=False)},
)
def plan_batches(context: dg.OpExecutionContext, imagedb: ImageDBResource, deployment: DeploymentResource):
    """Which sub-analysis (run_target.target), then image sets -> batches -> one LoadData CSV
    per batch on the work area. One run of a partition at a time: the run queue holds a
    second one back (tag concurrency limit on dagster/partition in dagster.yaml); one
    launched past the queue stops here. `sub` is the resolved SubAnalysisRun, or the
    reason this step has nothing to do (e.g. the pipeline has no such step), which its
    asset then reports; nothing is yielded when it waits (acquisition not finished)."""
    db, stage = imagedb.db(), stage_of(context)
    others = other_active_runs(context.instance, context.run)
    if others:
        raise dg.Failure(
            f"plate x pipeline {context.partition_key} is being run by run {others[0]}: one run of a "
            "partition at a time; this run changed nothing (launch it again once that run has ended)",
            allow_retries=False,
        )
    settings = deployment.settings
    found = run_target.target(context, db, stage, run_steps=settings.launch.ui_runs_run_steps)
    if found.sub_id is None:
        context.log.info(found.reason)
        if not found.waits:
            yield dg.Output(found.reason, "sub")
        return
    sub = resolve(db, settings, found.sub_id, run_stamp(context.run))
    run_target.check_stage(sub, stage)
    prepared = lifecycle.prepare(db, settings, sub)
    if GENERATION_TAG not in context.run.tags:  # launched from the UI: it adopted the current generation
        context.instance.add_run_tags(context.run_id, {GENERATION_TAG: str(prepared.stamp.generation)})
    context.log.info(
        f"sub-analysis {found.sub_id} ({stage.value}) of plate {prepared.sub.plate_barcode}: "
        f"{prepared.image_sets} image sets in {len(prepared.batches)} batches"
    )
    for spec in prepared.batches:
        yield dg.DynamicOutput(
            spec,
            mapping_key=spec.name,
            output_name="batches",
            metadata={"image_sets": spec.image_sets, "loaddata": spec.batch_dir + "/loaddata.csv"},
        )
    yield dg.Output(prepared.sub, "sub")


ORPHANED_EXIT_CODE = 75


def _orphaned_watch() -> Callable[[], bool] | None:
    """True once the run worker that started this step process is gone. Locally (the
    multiprocess executor) each step is forked by its run worker's forkserver, which
    outlives the run worker while any step holds its pipe, so the step watches the run
    worker itself (psutil: by pid and start time, a zombie counts as gone). A step that
    was not forked so (a pod on Kubernetes, the in-process executor) is not watched."""
    try:
        forkserver = psutil.Process(os.getppid())
        if "multiprocessing.forkserver" not in " ".join(forkserver.cmdline()):
            return None
        worker = forkserver.parent()
    except psutil.Error:
        return None
    if worker is None:
        return None

    def gone() -> bool:
        try:
            return not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE
        except psutil.Error:
            return True

    return gone


@dg.op(pool=CELLPROFILER_POOL)
def run_cellprofiler(
    context: dg.OpExecutionContext, imagedb: ImageDBResource, deployment: DeploymentResource, batch: lifecycle.BatchSpec
) -> BatchOutcome:
    """Real CellProfiler, headless, on one batch. Its output is this step's stdout."""
    context.log.info(f"{batch.name}: {batch.image_sets} image sets, timeout {batch.job_timeout} s")
    with attempts.attempt(Path(batch.batch_dir), context.retry_number) as previous:
        return _run_batch(context, imagedb, deployment, batch, previous)


def _run_batch(
    context: dg.OpExecutionContext,
    imagedb: ImageDBResource,
    deployment: DeploymentResource,
    batch: lifecycle.BatchSpec,
    previous: attempts.Attempt | None,
) -> BatchOutcome:
    lived = attempts.ran_out_of_time(previous, batch.job_timeout)
    if lived is not None and not deployment.settings.launch.retry_timeouts:
        # killed with no word (on Kubernetes at the Job's deadline): as the batch's own timer
        # would have, fail past the RetryPolicy instead of running CellProfiler again
        raise dg.Failure(
            description=f"{batch.name} ran out of time: its previous attempt was killed after {lived:.0f} s, "
            f"and its job timeout is {batch.job_timeout} s (on Kubernetes the Job's deadline stops a pod "
            "that outlives it); not retried, as it would take as long again",
            allow_retries=False,
        )
    try:
        outcome = lifecycle.run_batch(deployment.settings, batch, abandoned=_orphaned_watch())
    except BatchAbandoned as abandoned:
        # The run worker died (killed, out of memory) and left this step process behind.
        # Stop without a word to imagedb or the run (no failure hook): the run's retry runs
        # this batch again, in this same folder.
        context.log.warning(f"{batch.name}: {abandoned}; this step process exits")
        os._exit(ORPHANED_EXIT_CODE)
    except BatchTimeout as timeout:
        if deployment.settings.launch.retry_timeouts:
            raise
        # Fails the step past its RetryPolicy: a batch that ran out of time would take as
        # long again (crashes and evictions are still retried).
        raise dg.Failure(description=str(timeout), allow_retries=False) from timeout
    except SchemaError as unconvertible:
        # CellProfiler's verified outputs that cannot be converted (an empty or header-only
        # table, no ImageNumber): running CellProfiler again would write the same
        raise dg.Failure(
            description=f"{batch.name}: its outputs cannot be converted: {unconvertible}", allow_retries=False
        ) from unconvertible
    progress = imagedb.db().record_batch_finished(batch.sub_id, batch.name, batch.stamp)
    if progress is None:
        raise dg.Failure(
            f"sub-analysis {batch.sub_id} has been re-run or started by another run since this run "
            f"planned it (generation {batch.stamp.generation}); {batch.name} is not recorded",
            allow_retries=False,
        )
    context.instance.add_run_tags(context.run_id, {PROGRESS_TAG: progress})  # the runs list shows it
    how = "reused from an earlier run" if outcome.reused else f"done in {outcome.seconds:.1f} s"
    context.log.info(f"{batch.name} {how}; sub-analysis {batch.sub_id}: {progress}")
    context.add_output_metadata(
        {
            "exit_code": outcome.exit_code,
            "reused": outcome.reused,
            "seconds": round(outcome.seconds, 2),
            "image_sets": outcome.image_sets,
            "cellprofiler_log": dg.MetadataValue.path(outcome.log_path),
            "progress": progress,
        }
    )
    return outcome


@dg.op
def merge_tables(
    context: dg.OpExecutionContext,
    imagedb: ImageDBResource,
    deployment: DeploymentResource,
    sub,
    outcomes: list[BatchOutcome],
):
    """Streaming merge of the batches into one Parquet per object table, in the results
    folder (which switches as a whole): `lifecycle.Merged`. A step with nothing to do
    (`sub` is not a SubAnalysisRun but the reason) passes its reason on."""
    if not isinstance(sub, SubAnalysisRun):
        return sub
    db = imagedb.db()
    batch_dirs = [o.output_dir.rsplit("/", 1)[0] for o in sorted(outcomes, key=lambda o: o.batch)]
    merged = lifecycle.merge(
        db,
        deployment.settings,
        sub,
        batch_dirs,
        runs=[this_run(context)],
        retries=batch_retries(context),
        image=os.environ.get("DAGSTER_CURRENT_IMAGE"),  # set by dagster-k8s in its pods
    )
    if outcomes:
        # batch steps that finish at once may set the progress tag out of order; once all
        # have finished, the tag says what imagedb says: every batch finished
        context.instance.add_run_tags(context.run_id, {PROGRESS_TAG: progress_message(len(outcomes), len(outcomes), 0)})
    context.log.info(
        f"merged {len(outcomes)} batches into {sub.tables_dir}: {', '.join(sorted(merged.merge.tables)) or 'no tables'}"
    )
    return merged


def this_run(context: dg.OpExecutionContext) -> dict:
    """The run merging, for the provenance: its id, start (UTC) and the runs it re-executes;
    it finishes after the merge, so `merged` stands for its end as far as the tables go."""
    record = context.instance.get_run_record_by_id(context.run_id)
    started = record.start_time if record is not None else None
    return {
        "run_id": context.run_id,
        "job": context.run.job_name,
        "parent_run_id": context.run.parent_run_id,
        "root_run_id": context.run.root_run_id,
        "started": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds") if started else None,
        "merged": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def batch_retries(context: dg.OpExecutionContext) -> dict[str, int]:
    """Batch name -> how often its CellProfiler step was retried in this run."""
    counts: dict[str, int] = {}
    for entry in context.instance.all_logs(context.run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY):
        key = entry.step_key or ""
        if ".run_cellprofiler[" in key:
            batch = key.rsplit("[", 1)[1].rstrip("]")
            counts[batch] = counts.get(batch, 0) + 1
    return counts


@dg.op
def write_single_cell_table(
    context: dg.OpExecutionContext, imagedb: ImageDBResource, deployment: DeploymentResource, merged
) -> dict:
    """The joined single-cell table; its metadata (the asset materializes at the end)."""
    if not isinstance(merged, lifecycle.Merged):
        return {}
    result = lifecycle.write_single_cell(imagedb.db(), deployment.settings, merged)
    if result is None:
        context.log.info(f"no single-cell table: {NO_OBJECT_TABLES}")
        return {"written": False, "reason": NO_OBJECT_TABLES}
    return {
        "path": dg.MetadataValue.path(str(result.path)),
        "dagster/row_count": result.rows,
        "columns": result.columns,
        "base_object": result.base,
    }


def result_links(sub: SubAnalysisRun, settings: Settings) -> dict:
    """The results folder on the NAS, and its URL in the lab's file browser when
    CPP_RESULTS_URL_TEMPLATE is set."""
    from cpp_dagster.analysis.lab_overview import result_url

    links = {
        "results_path": dg.MetadataValue.path(str(sub.results_dir)),
        "sub_analysis": sub.sub_id,
        "analysis": sub.analysis_id,
        "plate_acquisition": sub.acquisition.id,
    }
    template = settings.results_url_template
    if template:
        links["results_url"] = dg.MetadataValue.url(
            result_url(str(sub.results_dir.relative_to(settings.nas_root)), template)
        )
    return links


@dg.op(out={"result": dg.Out(dg.Nothing)})
def complete_step(context: dg.OpExecutionContext, imagedb: ImageDBResource, deployment: DeploymentResource, merged):
    """The end of a step others depend on (illumination, QC): record it finished in
    imagedb, then materialize its asset with the files it wrote."""
    stage = stage_of(context)
    if not isinstance(merged, lifecycle.Merged):
        return dg.Output(None, "result", metadata={"reason": merged})
    settings = deployment.settings
    outcome = lifecycle.complete(imagedb.db(), settings, merged.sub)
    context.log.info(
        f"sub-analysis {merged.sub.sub_id} ({stage.value}) finished: {len(outcome['file_list'])} result files"
    )
    return dg.Output(
        None,
        "result",
        metadata={
            **result_links(merged.sub, settings),
            "files": len(outcome["file_list"]),
            "file_list": dg.MetadataValue.json(outcome["file_list"]),
        },
    )
