"""The analysis assets of a sub-analysis partition:
feature_tables (plan -> one CellProfiler step per batch -> merge, with quality checks and
the plate map) -> single_cell_table -> well_profiles (which completes it in imagedb).

Partitioned by sub-analysis. Under the multiprocess executor each batch is its own
process; under the k8s executor its own pod. Outputs between steps are small
descriptors stored by the IO manager on the shared work area; the data itself
(LoadData CSVs, CellProfiler outputs, Parquet) lives on the NAS.
"""

import os

import dagster as dg

from cpp_dagster import analysis, config
from cpp_dagster.cellprofiler import BatchOutcome, BatchTimeout
from cpp_dagster.defs.hooks import record_failure_in_imagedb
from cpp_dagster.defs.partitions import (
    GENERATION_TAG,
    other_active_runs,
    run_stamp,
    sub_analysis_partitions,
    sub_id_of,
)
from cpp_dagster.defs.resources import ImageDBResource, NasResource
from cpp_dagster.features import checks, plate_map
from cpp_dagster.imagedb.rows import RunStamp

plate_acquisitions = dg.AssetSpec(
    ["imagedb", "plate_acquisitions"],
    kinds={"postgres"},
    group_name="imagedb",
    description="Plate acquisitions registered in imagedb (observed by the pending_sub_analyses sensor).",
)


def _sub_id(context: dg.OpExecutionContext) -> int:
    sub_id = sub_id_of(context.partition_key)
    if sub_id is None:
        raise dg.Failure(f"partition {context.partition_key!r} is not a sub-analysis key (acqA_anB_subC)")
    return sub_id


def _stamp(context: dg.OpExecutionContext) -> RunStamp:
    """This run's RunStamp (generation tag, root run id), carried by every imagedb write."""
    return run_stamp(context.instance.get_run_by_id(context.run_id))


@dg.op(ins={"acquisitions": dg.In(dg.Nothing)}, out=dg.DynamicOut(analysis.BatchSpec))
def plan_batches(context: dg.OpExecutionContext, imagedb: ImageDBResource, nas: NasResource):
    """Image sets -> batches -> one LoadData CSV per batch on the work area. Only one run
    of a sub-analysis at a time: the run queue holds a second one back (tag concurrency
    limit on dagster/partition in dagster.yaml); one launched past the queue stops here."""
    db, sub_id = imagedb.db(), _sub_id(context)
    others = other_active_runs(context.instance, context.run)
    if others:
        raise dg.Failure(f"sub-analysis {sub_id} is being run by run {others[0]}: one run of a sub-analysis at a "
                         "time; this run changed nothing (launch it again once that run has ended)",
                         allow_retries=False)
    prepared = analysis.prepare(db, nas.settings(), sub_id, _stamp(context))
    if GENERATION_TAG not in context.run.tags:  # launched from the UI: it adopted the current generation
        context.instance.add_run_tags(context.run_id, {GENERATION_TAG: str(prepared.stamp.generation)})
    context.log.info(
        f"sub-analysis {prepared.sub_analysis.sub_id} of plate {prepared.acquisition.plate_barcode}: "
        f"{prepared.image_sets} image sets in {len(prepared.batches)} batches"
    )
    for spec in prepared.batches:
        yield dg.DynamicOutput(spec, mapping_key=spec.name,
                               metadata={"image_sets": spec.image_sets, "loaddata": spec.batch_dir + "/loaddata.csv"})


PROGRESS_TAG = "imagedb/progress"

# Crashes, evictions and killed step processes are retried; a batch killed by its
# job_timeout is not, unless CPP_RETRY_TIMEOUTS=true (see run_cellprofiler).
BATCH_RETRY_POLICY = dg.RetryPolicy(
    max_retries=int(os.getenv("CPP_BATCH_RETRIES", "1")),
    delay=float(os.getenv("CPP_BATCH_RETRY_DELAY_S", "5")),
    backoff=dg.Backoff.EXPONENTIAL,
)


@dg.op(pool="cellprofiler", retry_policy=BATCH_RETRY_POLICY)
def run_cellprofiler(
    context: dg.OpExecutionContext, imagedb: ImageDBResource, nas: NasResource, batch: analysis.BatchSpec
) -> BatchOutcome:
    """Real CellProfiler, headless, on one batch. Its output is this step's stdout."""
    context.log.info(f"{batch.name}: {batch.image_sets} image sets, timeout {batch.job_timeout} s")
    try:
        outcome = analysis.run_batch(nas.settings(), batch)
    except BatchTimeout as timeout:
        if config.retry_timeouts():
            raise
        # Fails the step past its RetryPolicy: a batch that ran out of time would take as
        # long again (crashes and evictions are still retried).
        raise dg.Failure(description=str(timeout), allow_retries=False) from timeout
    progress = imagedb.db().record_batch_finished(batch.sub_id, batch.name, batch.stamp)
    if progress is None:
        raise dg.Failure(f"sub-analysis {batch.sub_id} has been re-run or started by another run since this run "
                         f"planned it (generation {batch.stamp.generation}); {batch.name} is not recorded",
                         allow_retries=False)
    context.instance.add_run_tags(context.run_id, {PROGRESS_TAG: progress})  # the runs list shows it
    how = "reused from an earlier run" if outcome.reused else f"done in {outcome.seconds:.1f} s"
    context.log.info(f"{batch.name} {how}; sub-analysis {batch.sub_id}: {progress}")
    context.add_output_metadata({
        "exit_code": outcome.exit_code,
        "reused": outcome.reused,
        "seconds": round(outcome.seconds, 2),
        "image_sets": outcome.image_sets,
        "cellprofiler_log": dg.MetadataValue.path(outcome.log_path),
        "progress": progress,
    })
    return outcome


FEATURE_TABLES = dg.AssetKey("feature_tables")
CHECKS = {
    "image_rows_match_plan": "The Image table has one row per planned image set",
    "all_batches_present": "Every planned batch is in the merged tables",
    "well_cell_counts": "Cells (the base object: Cells, else e.g. Nuclei) per well near the plate median "
                        "(empty or over-seeded wells flagged)",
    "nan_share": "Share of NaN per feature under the threshold (features over it listed)",
    "column_drift": "Columns identical across batches (drift reported)",
}


@dg.op(out={"feature_tables": dg.Out(dg.Nothing), **{name: dg.Out(dg.Nothing) for name in CHECKS}})
def merge_feature_tables(
    context: dg.OpExecutionContext, imagedb: ImageDBResource, nas: NasResource, outcomes: list[BatchOutcome]
):
    """Streaming merge into one Parquet per object table, then the quality checks and
    the plate map on the merged tables (in this step: no extra pods)."""
    db, sub_id = imagedb.db(), _sub_id(context)
    batch_dirs = [os.path.dirname(o.output_dir) for o in sorted(outcomes, key=lambda o: o.batch)]
    merged = analysis.merge(db, nas.settings(), sub_id, batch_dirs, _stamp(context))
    tables = merged.merge.tables
    status = db.sub_analysis(sub_id).status or {}
    if isinstance(status.get("message"), str):
        # batch steps that finish at once may set the progress tag out of order; once all
        # have finished, the tag says what imagedb says
        context.instance.add_run_tags(context.run_id, {PROGRESS_TAG: status["message"]})
    objects = analysis.object_tables(db, nas.settings(), sub_id)
    checks = feature_checks(merged.tables_dir, planned_image_sets=int(status.get("image_sets") or 0),
                            batches=[o.batch for o in outcomes],
                            drift={t.name: list(t.drift) for t in tables.values()}, object_tables=objects)
    lines = ["| table | rows | columns | file |", "|---|---|---|---|"]
    lines += [f"| {t.name} | {t.rows} | {t.columns} | {t.path.name} |" for t in tables.values()]
    metadata: dict = {
        "results_path": dg.MetadataValue.path(str(merged.tables_dir)),
        "tables": dg.MetadataValue.md("\n".join(lines)),
        "batches": len(outcomes),
        "image_sets": sum(o.image_sets for o in outcomes),
        "object_tables": ", ".join(objects) or NO_OBJECT_TABLES,
    }
    for t in tables.values():
        metadata[f"{t.name}_rows"] = t.rows
        metadata[f"{t.name}_columns"] = t.columns
    base = checks["well_cell_counts"].metadata.get("object")
    main = tables.get(base) or next(iter(tables.values()), None)
    if main is not None:
        metadata["dagster/row_count"] = main.rows
    counts = checks["well_cell_counts"].metadata.get("counts")
    if counts:
        metadata["plate_map"] = dg.MetadataValue.md(plate_map.plate_map_markdown(plate_map.plate_map_png(counts)))
    yield dg.Output(None, "feature_tables", metadata=metadata)
    for name, outcome in checks.items():
        yield dg.AssetCheckResult(
            asset_key=FEATURE_TABLES, check_name=name, passed=outcome.passed, description=outcome.description,
            severity=dg.AssetCheckSeverity.ERROR if outcome.severity == "ERROR" else dg.AssetCheckSeverity.WARN,
            metadata={k: _metadata_value(v) for k, v in outcome.metadata.items()},
        )


# A pipeline that exports only an Image table (illumination correction, QC): no cells to
# count per well, no object features, no single-cell table or well profiles.
NO_OBJECT_TABLES = "no object tables (the pipeline exports only an Image table)"


def feature_checks(results_dir, *, planned_image_sets: int, batches: list[str], drift: dict,
                   object_tables: list[str]) -> dict:
    """`object_tables`: those the sub-analysis's merge wrote (analysis.object_tables)."""
    return {
        "image_rows_match_plan": checks.image_rows_match_plan(results_dir, planned_image_sets),
        "all_batches_present": checks.all_batches_present(results_dir, batches),
        "well_cell_counts": (checks.well_counts_outliers(results_dir, objects=object_tables) if object_tables
                             else checks.not_applicable(NO_OBJECT_TABLES)),
        "nan_share": (checks.nan_share(results_dir, tables=object_tables) if object_tables
                      else checks.not_applicable(NO_OBJECT_TABLES)),
        "column_drift": checks.column_drift(drift),
    }


def _metadata_value(value):
    return dg.MetadataValue.json(value) if isinstance(value, (dict, list, tuple)) else value


@dg.graph_multi_asset(
    outs={"feature_tables": dg.AssetOut(
        key=FEATURE_TABLES, dagster_type=dg.Nothing, group_name="cellprofiler", kinds={"parquet"},
        description="One Parquet per CellProfiler object table of a sub-analysis, in "
                    "results/<plate_barcode>/<plate_acquisition_id>/<analysis_id>/ on the NAS.")},
    partitions_def=sub_analysis_partitions,
    ins={"acquisitions": dg.AssetIn(key=plate_acquisitions.key, dagster_type=dg.Nothing)},
    hooks={record_failure_in_imagedb},
    check_specs=[dg.AssetCheckSpec(name, asset=FEATURE_TABLES, description=text) for name, text in CHECKS.items()],
)
def feature_tables(acquisitions):
    merged = merge_feature_tables(plan_batches(acquisitions).map(run_cellprofiler).collect())
    return {"feature_tables": merged.feature_tables,
            **{f"feature_tables_{name}": getattr(merged, name) for name in CHECKS}}


# What the tables derived from the feature tables share: same partitions, same failure hook.
DERIVED_TABLE = {"partitions_def": sub_analysis_partitions, "hooks": {record_failure_in_imagedb},
                 "group_name": "cellprofiler", "kinds": {"parquet"}}


@dg.asset(
    deps=[FEATURE_TABLES], **DERIVED_TABLE,
    description="Joined single-cell table (pycytominer/CytoTable layout: Metadata_*, Image_*, then "
                "<Object>_* per exported object), one row per cell (the base object: Cells, else "
                "e.g. Nuclei); objects not one-to-one with it summarised per image.",
)
def single_cell_table(context: dg.AssetExecutionContext, imagedb: ImageDBResource, nas: NasResource):
    result = analysis.write_single_cell(imagedb.db(), nas.settings(), _sub_id(context), _stamp(context))
    if result is None:
        context.log.info(f"no single-cell table: {NO_OBJECT_TABLES}")
        return dg.MaterializeResult(metadata={"written": False, "reason": NO_OBJECT_TABLES})
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(result.path)), "dagster/row_count": result.rows, "columns": result.columns,
        "base_object": result.base})


@dg.asset(
    deps=[single_cell_table], **DERIVED_TABLE,
    description="Per-well profiles: median of each feature per well, with object counts. "
                "Writing them completes the sub-analysis in imagedb.",
)
def well_profiles(context: dg.AssetExecutionContext, imagedb: ImageDBResource, nas: NasResource):
    db, sub_id = imagedb.db(), _sub_id(context)
    stamp = _stamp(context)
    result = analysis.write_well_profiles(db, nas.settings(), sub_id, stamp)
    outcome = analysis.complete(db, nas.settings(), sub_id, stamp)
    context.log.info(f"sub-analysis {sub_id} finished: {len(outcome['file_list'])} result files")
    if result is None:
        return dg.MaterializeResult(metadata={"written": False, "reason": NO_OBJECT_TABLES})
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(result.path)), "wells": result.wells, "columns": result.columns,
        "dagster/row_count": result.wells})
