"""Model training runs: one per new configuration version, exactly once."""

from __future__ import annotations

from collections.abc import Callable

import dagster as dg

from cpp_dagster.defs.training.assets import training_configurations, training_versions
from cpp_dagster.defs.training.resources import TrainingStoreResource
from cpp_dagster.training.store import ConfigVersion, InvalidVersion

training_job = dg.define_asset_job(
    "model_training",
    selection=dg.AssetSelection.keys(
        "training_data", "descriptors", "split_models", "aggregated_model", "published_model"
    ),
    partitions_def=training_versions,
    description="One configuration version: query, descriptors, split models, aggregate and checks, publish.",
)


def build_training_sensor(interval_s: int, run_config: Callable[[str], dict]) -> dg.SensorDefinition:
    """`run_config(workflow)`: the run config of a version's run (pod labels on Kubernetes)."""

    @dg.sensor(
        job=training_job,
        name="new_training_configurations",
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def sensor(context: dg.SensorEvaluationContext, training_store: TrainingStoreResource):
        return new_training_configurations(context, training_store, run_config)

    return sensor


def new_training_configurations(
    context: dg.SensorEvaluationContext, training_store: TrainingStoreResource, run_config: Callable[[str], dict]
):
    """Each new version in the store, once: the cursor is the last version seen, and the
    run key (the version's partition key) keeps a version at one run even if the cursor
    is lost. Re-running a version is a re-execution or a backfill in the UI. A stored
    version that no longer validates is not launched: it is reported (a warning in the
    tick's log and an observation of training_configurations with the problem), and the
    other versions go on."""
    seen = training_store.store().added_after(int(context.cursor or 0), limit=100)
    if not seen:
        return dg.SkipReason("no new training configuration version")
    versions = [v for v in seen if isinstance(v, ConfigVersion)]
    invalid = [v for v in seen if isinstance(v, InvalidVersion)]
    for v in invalid:
        context.log.warning(f"training configuration {v.partition_key} (id {v.id}) is not launched: {v.problem}")
    keys = [v.partition_key for v in versions]
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=v.partition_key,
                partition_key=v.partition_key,
                run_config=run_config(v.workflow),
                tags={"cpp-dagster/workflow": v.workflow, "cpp-dagster/config-version": v.version},
            )
            for v in versions
        ],
        dynamic_partitions_requests=[training_versions.build_add_request(keys)] if keys else [],
        asset_events=[
            dg.AssetObservation(
                asset_key=training_configurations.key,
                metadata={
                    "invalid_version": v.partition_key,
                    "workflow": v.workflow,
                    "config_version": v.version,
                    "problem": v.problem,
                },
            )
            for v in invalid
        ],
        cursor=str(seen[-1].id),
    )
