"""The assets of a pipeline, one per step, all partitioned by plate x pipeline:

    imagedb/plate_acquisitions -> illumination_functions (sub_type icf) -+
                               -> image_qc (sub_type qc)                 -+-> feature_tables
                                                 -> single_cell_table -> well_profiles

Each step is a graph asset (plan -> CellProfiler per batch -> merge -> ...), see steps.py.
The features step's three assets materialize together when the sub-analysis is complete
(feature tables, single-cell table and well profiles written, imagedb finished): a failure
in any of its ops leaves all three failed for that partition, in Dagster as in imagedb.
"""

import dagster as dg

from cpp_dagster.analysis import lifecycle, quality
from cpp_dagster.analysis.quality import NO_OBJECT_TABLES
from cpp_dagster.analysis.sub_analysis import Stage
from cpp_dagster.defs.analysis.hooks import record_failure_in_imagedb
from cpp_dagster.defs.analysis.partitions import analysis_partitions
from cpp_dagster.defs.analysis.steps import (
    STAGE_GRAPHS,
    complete_step,
    merge_tables,
    plan_batches,
    result_links,
    run_cellprofiler,
    write_single_cell_table,
)
from cpp_dagster.defs.resources import DeploymentResource, ImageDBResource
from cpp_dagster.features import plate_map
from cpp_dagster.settings import Settings

plate_acquisitions = dg.AssetSpec(
    ["imagedb", "plate_acquisitions"],
    kinds={"postgres"},
    group_name="imagedb",
    description="Plate acquisitions registered in imagedb (observed by the pending_sub_analyses sensor).",
)

FEATURE_TABLES, SINGLE_CELL, PROFILES = (
    dg.AssetKey(n) for n in ("feature_tables", "single_cell_table", "well_profiles")
)
ILLUMINATION, QC = dg.AssetKey(Stage.ILLUMINATION.value), dg.AssetKey(Stage.QC.value)
CHECKS = {
    "image_rows_match_plan": "The Image table has one row per planned image set",
    "all_batches_present": "Every planned batch is in the merged tables",
    "well_cell_counts": "Cells (the base object: Cells, else e.g. Nuclei) per well near the plate median "
    "(empty or over-seeded wells flagged)",
    "nan_share": "Share of NaN per feature under the threshold (features over it listed)",
    "column_drift": "Columns identical across batches (drift reported)",
}


def _metadata_value(value):
    return dg.MetadataValue.json(value) if isinstance(value, (dict, list, tuple)) else value


def feature_tables_metadata(merged: lifecycle.Merged, found: dict, settings: Settings) -> dict:
    tables = merged.merge.tables
    lines = ["| table | rows | columns | file |", "|---|---|---|---|"]
    lines += [f"| {t.name} | {t.rows} | {t.columns} | {t.path.name} |" for t in tables.values()]
    metadata: dict = {
        **result_links(merged.sub, settings),
        "tables": dg.MetadataValue.md("\n".join(lines)),
        "image_sets": merged.sub.status.image_sets or 0,
        "object_tables": ", ".join(merged.object_tables) or NO_OBJECT_TABLES,
    }
    for t in tables.values():
        metadata[f"{t.name}_rows"] = t.rows
        metadata[f"{t.name}_columns"] = t.columns
    base = found["well_cell_counts"].metadata.get("object")
    main = tables.get(base) or next(iter(tables.values()), None)
    if main is not None:
        metadata["dagster/row_count"] = main.rows
    counts = found["well_cell_counts"].metadata.get("counts")
    if counts:
        metadata["plate_map"] = dg.MetadataValue.md(plate_map.plate_map_markdown(plate_map.plate_map_png(counts)))
    return metadata


@dg.op(
    out={
        "feature_tables": dg.Out(dg.Nothing),
        "single_cell_table": dg.Out(dg.Nothing),
        "well_profiles": dg.Out(dg.Nothing),
        **{name: dg.Out(dg.Nothing) for name in CHECKS},
    }
)
def write_well_profiles(
    context: dg.OpExecutionContext, imagedb: ImageDBResource, deployment: DeploymentResource, merged, single_cell: dict
):
    """Per-well profiles and the quality checks, then the sub-analysis complete in imagedb
    (the checks in its status; a failed ERROR check fails it under `quality: block`); then
    the three assets of the features step materialize together, with the checks."""
    if not isinstance(merged, lifecycle.Merged):  # nothing to do, and why
        for name in ("feature_tables", "single_cell_table", "well_profiles"):
            yield dg.Output(None, name, metadata={"reason": merged})
        return
    db, settings = imagedb.db(), deployment.settings
    profiles = lifecycle.write_well_profiles(db, settings, merged)
    found = quality.feature_checks(merged)
    try:  # the checks go into imagedb with the outcome; under `quality: block` one may fail it
        outcome = lifecycle.complete(db, settings, merged.sub, found)
    except quality.QualityBlocked as blocked:
        raise dg.Failure(description=str(blocked), allow_retries=False) from blocked
    context.log.info(f"sub-analysis {merged.sub.sub_id} finished: {len(outcome['file_list'])} result files")
    yield dg.Output(None, "feature_tables", metadata=feature_tables_metadata(merged, found, settings))
    yield dg.Output(None, "single_cell_table", metadata=single_cell)
    yield dg.Output(
        None,
        "well_profiles",
        metadata=(
            {"written": False, "reason": NO_OBJECT_TABLES}
            if profiles is None
            else {
                "path": dg.MetadataValue.path(str(profiles.path)),
                "wells": profiles.wells,
                "columns": profiles.columns,
                "dagster/row_count": profiles.wells,
            }
        ),
    )
    for name, result in found.items():
        yield dg.AssetCheckResult(
            asset_key=FEATURE_TABLES,
            check_name=name,
            passed=result.passed,
            description=result.description,
            severity=dg.AssetCheckSeverity.ERROR if result.severity == "ERROR" else dg.AssetCheckSeverity.WARN,
            metadata={k: _metadata_value(v) for k, v in result.metadata.items()},
        )


# What every step asset shares: partitions, the failure hook, the group.
STEP = {"partitions_def": analysis_partitions, "hooks": {record_failure_in_imagedb}}
ACQUISITIONS = {"acquisitions": dg.AssetIn(key=plate_acquisitions.key, dagster_type=dg.Nothing)}


def _stage_asset(stage: Stage, description: str, run_batch) -> dg.AssetsDefinition:
    """A step others depend on (illumination, QC): plan -> batches -> merge -> complete."""

    @dg.graph_multi_asset(
        name=STAGE_GRAPHS[stage],
        ins=ACQUISITIONS,
        group_name="analysis",
        **STEP,
        outs={
            stage.value: dg.AssetOut(
                key=dg.AssetKey(stage.value), dagster_type=dg.Nothing, kinds={"cellprofiler"}, description=description
            )
        },
    )
    def _graph(acquisitions):
        batches, sub = plan_batches(acquisitions=acquisitions)
        return {stage.value: complete_step(merge_tables(sub, batches.map(run_batch).collect()))}

    return _graph


def build_step_assets(batch_retry_policy: dg.RetryPolicy) -> list[dg.AssetsDefinition]:
    """The step assets, built when the definitions load: the CellProfiler op's retry
    policy comes from the settings."""
    run_batch = run_cellprofiler.with_retry_policy(batch_retry_policy)
    return [
        _stage_asset(Stage.ILLUMINATION, ILLUMINATION_TEXT, run_batch),
        _stage_asset(Stage.QC, QC_TEXT, run_batch),
        _features_step(run_batch),
    ]


ILLUMINATION_TEXT = (
    "The illumination step of a pipeline (sub_type icf): illumination functions "
    "(ICF_<dye>.npy or <Plate>_Illum<Ch>.npy) in the analysis's results folder, which the features step uses."
)
QC_TEXT = (
    "The QC step of a pipeline (sub_type qc): image quality measurements, in a subfolder "
    "sub<id>_qc of the analysis's results folder."
)


FEATURES_OUTS = {
    "feature_tables": (
        FEATURE_TABLES,
        "One Parquet per CellProfiler object table of the features step, in "
        "results/<plate_barcode>/<plate_acquisition_id>/<analysis_id>/ on the NAS.",
    ),
    "single_cell_table": (
        SINGLE_CELL,
        "Joined single-cell table (pycytominer/CytoTable layout), one row per cell "
        "(the base object: Cells, else e.g. Nuclei); objects not one-to-one with it summarised "
        "per image.",
    ),
    "well_profiles": (
        PROFILES,
        "Per-well profiles: median of each feature per well, with object counts. Written "
        "last: the features step (and its sub-analysis in imagedb) is then complete.",
    ),
}


def _features_step(run_batch) -> dg.AssetsDefinition:
    """The features step: three assets in a chain (feature_tables -> single_cell_table ->
    well_profiles, declared with internal_asset_deps so the lineage shows it), built from
    one graph whose last op materializes them together."""
    check_outs = {f"feature_tables_{name}": dg.GraphOut() for name in CHECKS}

    @dg.graph(name=STAGE_GRAPHS[Stage.FEATURES], out={**{name: dg.GraphOut() for name in FEATURES_OUTS}, **check_outs})
    def features_step(acquisitions, illumination, qc):
        batches, sub = plan_batches(acquisitions=acquisitions, illumination=illumination, qc=qc)
        merged = merge_tables(sub, batches.map(run_batch).collect())
        done = write_well_profiles(merged, write_single_cell_table(merged))
        return {
            "feature_tables": done.feature_tables,
            "single_cell_table": done.single_cell_table,
            "well_profiles": done.well_profiles,
            **{f"feature_tables_{name}": getattr(done, name) for name in CHECKS},
        }

    return dg.AssetsDefinition.from_graph(
        features_step,
        keys_by_input_name={"acquisitions": plate_acquisitions.key, "illumination": ILLUMINATION, "qc": QC},
        keys_by_output_name={name: key for name, (key, _) in FEATURES_OUTS.items()},
        internal_asset_deps={
            "feature_tables": {plate_acquisitions.key, ILLUMINATION, QC},
            "single_cell_table": {FEATURE_TABLES},
            "well_profiles": {SINGLE_CELL},
        },
        descriptions_by_output_name={name: text for name, (_, text) in FEATURES_OUTS.items()},
        group_names_by_output_name=dict.fromkeys(FEATURES_OUTS, "analysis"),
        tags_by_output_name=dict.fromkeys(FEATURES_OUTS, {"dagster/kind/parquet": ""}),
        check_specs=[dg.AssetCheckSpec(name, asset=FEATURE_TABLES, description=text) for name, text in CHECKS.items()],
        partitions_def=analysis_partitions,
        hook_defs={record_failure_in_imagedb},
    )


__all__ = ["build_step_assets", "plate_acquisitions"]
