"""The feature-table asset: plan -> one CellProfiler step per batch -> merge.

Partitioned by sub-analysis. Under the multiprocess executor each batch is its own
process; under the k8s executor its own pod. Outputs between steps are small
descriptors stored by the IO manager on the shared work area; the data itself
(LoadData CSVs, CellProfiler outputs, Parquet) lives on the NAS.
"""

import os

import dagster as dg

from cpp_dagster import analysis
from cpp_dagster.cellprofiler import BatchOutcome
from cpp_dagster.defs.hooks import record_failure_in_imagedb
from cpp_dagster.defs.partitions import sub_analysis_partitions, sub_id_of
from cpp_dagster.defs.resources import ImageDBResource, NasResource

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


@dg.op(ins={"acquisitions": dg.In(dg.Nothing)}, out=dg.DynamicOut(analysis.BatchSpec))
def plan_batches(context: dg.OpExecutionContext, imagedb: ImageDBResource, nas: NasResource):
    """Image sets -> batches -> one LoadData CSV per batch on the work area."""
    prepared = analysis.prepare(imagedb.db(), nas.settings(), _sub_id(context))
    context.log.info(
        f"sub-analysis {prepared.sub_analysis.sub_id} of plate {prepared.acquisition.plate_barcode}: "
        f"{prepared.image_sets} image sets in {len(prepared.batches)} batches"
    )
    for spec in prepared.batches:
        yield dg.DynamicOutput(spec, mapping_key=spec.name,
                               metadata={"image_sets": spec.image_sets, "loaddata": spec.batch_dir + "/loaddata.csv"})


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
    outcome = analysis.run_batch(nas.settings(), batch)
    progress = imagedb.db().record_batch_finished(batch.sub_id, batch.name)
    context.log.info(f"{batch.name} done in {outcome.seconds:.1f} s; sub-analysis {batch.sub_id}: {progress}")
    context.add_output_metadata({
        "exit_code": outcome.exit_code,
        "seconds": round(outcome.seconds, 2),
        "image_sets": outcome.image_sets,
        "cellprofiler_log": dg.MetadataValue.path(outcome.log_path),
        "progress": progress,
    })
    return outcome


@dg.op
def merge_feature_tables(
    context: dg.OpExecutionContext, imagedb: ImageDBResource, nas: NasResource, outcomes: list[BatchOutcome]
) -> dg.MaterializeResult:
    """Streaming merge into one Parquet per object table; success recorded in imagedb."""
    settings = nas.settings()
    batch_dirs = [os.path.dirname(o.output_dir) for o in sorted(outcomes, key=lambda o: o.batch)]
    done = analysis.finish(imagedb.db(), settings, _sub_id(context), batch_dirs)
    tables = done.merge.tables
    lines = ["| table | rows | columns | file |", "|---|---|---|---|"]
    lines += [f"| {t.name} | {t.rows} | {t.columns} | {t.path.name} |" for t in tables.values()]
    metadata: dict = {
        "results_path": dg.MetadataValue.path(str(done.results_dir)),
        "tables": dg.MetadataValue.md("\n".join(lines)),
        "batches": len(outcomes),
        "image_sets": sum(o.image_sets for o in outcomes),
    }
    for t in tables.values():
        metadata[f"{t.name}_rows"] = t.rows
        metadata[f"{t.name}_columns"] = t.columns
    main = tables.get("Cells") or next(iter(tables.values()), None)
    if main is not None:
        metadata["dagster/row_count"] = main.rows
    return dg.MaterializeResult(metadata=metadata)


@dg.graph_asset(
    partitions_def=sub_analysis_partitions,
    ins={"acquisitions": dg.AssetIn(key=plate_acquisitions.key, dagster_type=dg.Nothing)},
    hooks={record_failure_in_imagedb},
    group_name="cellprofiler",
    kinds={"parquet"},
    description="One Parquet per CellProfiler object table of a sub-analysis, in "
    "results/<plate_barcode>/<plate_acquisition_id>/<analysis_id>/ on the NAS.",
)
def feature_tables(acquisitions):
    return merge_feature_tables(plan_batches(acquisitions).map(run_cellprofiler).collect())
