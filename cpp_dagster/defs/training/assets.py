"""Model training as Dagster assets (the second workflow), one partition per configuration version:

compound_database, training_configurations (external: the lab's database and the store)
  -> training_data -> descriptors -> split_models (one op per split) -> aggregated_model
  -> published_model

A new version in the store is launched once by `new_training_configurations`. The
checks `compound_counts`, `validity` and `efficiency` are blocking: a model that fails
them is not published.
"""

from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from cpp_dagster.defs.resources import DeploymentResource
from cpp_dagster.defs.training.resources import ModelRegistryResource, TrainingStoreResource
from cpp_dagster.training import steps
from cpp_dagster.training.compounds import DATASET_NAME, CompoundDatabaseError
from cpp_dagster.training.configuration import ConfigError
from cpp_dagster.training.engines import engine_for_deployment
from cpp_dagster.training.engines.base import Evaluation, SplitParams, TrainingFiles
from cpp_dagster.training.registry import RegistryError
from cpp_dagster.training.store import ConfigVersion, UnknownVersion, load_version, save_version

GROUP = "model_training"
training_versions = dg.DynamicPartitionsDefinition(name="training_config_version")


_EXPECTED = (ConfigError, CompoundDatabaseError, steps.TrainingInputError, UnknownVersion, RegistryError)


def _version(context, training_store: TrainingStoreResource, deployment: DeploymentResource) -> ConfigVersion:
    """The run's configuration version: read from the store once, by `training_data`, which
    writes it into the version folder; the later steps read it there (a version never
    changes), or from the store when the folder has lost it (the work area was cleaned)."""
    return load_version(_folder(context, deployment)) or _stored_version(context, training_store, deployment)


def _stored_version(context, training_store: TrainingStoreResource, deployment: DeploymentResource) -> ConfigVersion:
    try:
        version = training_store.store().get(context.partition_key)
    except UnknownVersion as error:
        raise dg.Failure(str(error)) from None
    save_version(version, _folder(context, deployment))
    return version


def _stop_unless(passed: bool, message: str) -> None:
    """After a failed blocking check: fail the step with the check's own words (Dagster's
    error would only name the check), so the run says why and nothing downstream runs."""
    if not passed:
        raise dg.Failure(message)


def _folder(context, deployment: DeploymentResource) -> Path:
    return steps.version_folder(deployment.settings.work_root, context.partition_key)


compound_database = dg.AssetSpec(
    "compound_database",
    group_name=GROUP,
    description="The compound database a configuration's query reads (locally: " + DATASET_NAME + ").",
)
training_configurations = dg.AssetSpec(
    "training_configurations",
    group_name=GROUP,
    description="The versioned configuration store (`cpp-dagster train add`); each version is a partition.",
)


@dg.asset(
    partitions_def=training_versions,
    group_name=GROUP,
    deps=[compound_database, training_configurations],
    check_specs=[
        dg.AssetCheckSpec(
            "compound_counts",
            asset="training_data",
            blocking=True,
            description="compounds used, held out and skipped (and why); fails when more "
            "than max_skipped_fraction of the rows are skipped",
        )
    ],
)
def training_data(
    context: dg.AssetExecutionContext, training_store: TrainingStoreResource, deployment: DeploymentResource
):
    """Runs the configuration's query against its compound database; writes the training
    set, the held-out set, the skipped rows and one parameter file per split."""
    version = _stored_version(context, training_store, deployment)
    config = version.config
    context.log.info(f"version {version.version} of {config.workflow!r}: query on {config.database!r}")
    try:
        ingested = steps.ingest(config, _folder(context, deployment), deployment.settings.training)
    except _EXPECTED as error:
        raise dg.Failure(str(error)) from None
    counts = {
        "rows": ingested.rows,
        "trained_on": ingested.trained_on,
        "held_out": ingested.heldout,
        "skipped": ingested.skipped,
    }
    yield dg.Output(
        ingested.files,
        metadata={
            **counts,
            "config_version": version.version,
            "workflow": config.workflow,
            "database": config.database,
            "splits": len(ingested.files.splits),
            "folder": dg.MetadataValue.path(str(ingested.files.folder)),
        },
    )
    passed = ingested.skipped_fraction <= config.max_skipped_fraction
    summary = (
        f"{ingested.skipped} of {ingested.rows} rows skipped ({ingested.skipped_fraction:.1%}; at most "
        f"{config.max_skipped_fraction:.1%} allowed)"
    )
    reasons = ", ".join(f"{n} {reason}" for reason, n in ingested.skipped_reasons.items())
    yield dg.AssetCheckResult(
        check_name="compound_counts",
        passed=passed,
        description=summary,
        metadata={
            **counts,
            "skipped_fraction": ingested.skipped_fraction,
            "skipped_reasons": dg.MetadataValue.json(ingested.skipped_reasons),
            "skipped_examples": dg.MetadataValue.md("\n".join(f"- {e}" for e in ingested.skipped_examples) or "none"),
        },
    )
    _stop_unless(
        passed, f"check compound_counts failed: {summary}: {reasons}; e.g. {'; '.join(ingested.skipped_examples[:3])}"
    )


@dg.asset(partitions_def=training_versions, group_name=GROUP)
def descriptors(
    context: dg.AssetExecutionContext,
    training_data: TrainingFiles,
    training_store: TrainingStoreResource,
    deployment: DeploymentResource,
) -> Path:
    """Molecular descriptors of the training and held-out sets (precompute)."""
    engine = engine_for_deployment(deployment.settings.training)
    try:
        out = engine.precompute(
            _version(context, training_store, deployment).config, training_data, training_data.folder
        )
    except _EXPECTED as error:
        raise dg.Failure(str(error)) from None
    context.add_output_metadata({"engine": engine.name, "file": dg.MetadataValue.path(str(out))})
    return out


@dg.op(out=dg.DynamicOut(Path))
def plan_splits(training_data: TrainingFiles):
    """One output per split parameter file: each split trains as its own step (own pod)."""
    for path in training_data.splits:
        yield dg.DynamicOutput(Path(path), mapping_key=f"split_{SplitParams.read(path).index}")


@dg.op
def train_split(
    context: dg.OpExecutionContext,
    split_file: Path,
    descriptors: Path,
    training_store: TrainingStoreResource,
    deployment: DeploymentResource,
) -> Path:
    """Train one split's share of the aggregated conformal predictor."""
    engine = engine_for_deployment(deployment.settings.training)
    split = SplitParams.read(split_file)
    context.log.info(f"split {split.index + 1} of {split.splits}: models {list(split.models)} with {engine.name}")
    try:
        return engine.train_split(
            _version(context, training_store, deployment).config, descriptors, split, Path(split_file).parent
        )
    except Exception as error:  # whatever broke, the run says which split
        raise dg.Failure(f"split {split.index + 1} of {split.splits} failed: {error}") from error


@dg.op
def collect_split_models(context: dg.OpExecutionContext, models: list[Path]) -> list[Path]:
    context.log.info(f"{len(models)} split models trained")
    return sorted(models)


def build_split_models(retry_policy: dg.RetryPolicy) -> dg.AssetsDefinition:
    """`split_models`, built when the definitions load (the retry policy of a split
    comes from the settings)."""
    train = train_split.with_retry_policy(retry_policy)

    @dg.graph_asset(name="split_models", partitions_def=training_versions, group_name=GROUP)
    def split_models(training_data: TrainingFiles, descriptors: Path) -> list[Path]:
        """The split models, trained in parallel: one step per split."""
        trained = plan_splits(training_data).map(lambda split_file: train(split_file, descriptors))
        return collect_split_models(trained.collect())

    return split_models


@dataclass(frozen=True)
class AggregatedModel:
    path: Path
    evaluation: Evaluation
    engine: str
    model_suffix: str


def _evaluation_metadata(e: Evaluation) -> dict:
    return {
        "held_out_compounds": e.compounds,
        "significance": e.significance,
        "coverage": e.coverage,
        e.efficiency_name: e.efficiency,
        "infinite_intervals": e.infinite_intervals,
        **{k: float(v) for k, v in e.point_metrics.items()},
    }


@dg.asset(
    partitions_def=training_versions,
    group_name=GROUP,
    check_specs=[
        dg.AssetCheckSpec(
            "validity",
            asset="aggregated_model",
            blocking=True,
            description="coverage on the held-out set >= 1 - significance - validity_tolerance",
        ),
        dg.AssetCheckSpec(
            "efficiency",
            asset="aggregated_model",
            blocking=True,
            description="median interval width (regression) or mean prediction-set size "
            "(classification); fails on unbounded intervals or empty predictions",
        ),
    ],
)
def aggregated_model(
    context: dg.AssetExecutionContext,
    split_models: list[Path],
    training_data: TrainingFiles,
    training_store: TrainingStoreResource,
    deployment: DeploymentResource,
):
    """The split models combined into one predictor, evaluated on the held-out set."""
    config = _version(context, training_store, deployment).config
    engine = engine_for_deployment(deployment.settings.training)
    try:
        path = engine.aggregate(config, split_models, training_data.folder)
        evaluation = engine.evaluate(config, path, training_data, training_data.folder)
    except _EXPECTED as error:
        raise dg.Failure(str(error)) from None
    meta = _evaluation_metadata(evaluation)
    yield dg.Output(
        AggregatedModel(path, evaluation, engine.name, engine.model_suffix),
        metadata={
            **meta,
            "engine": engine.name,
            "models": config.model.nr_models,
            "file": dg.MetadataValue.path(str(path)),
        },
    )
    target = 1 - evaluation.significance - config.validity_tolerance
    valid = evaluation.coverage >= target
    validity = (
        f"coverage {evaluation.coverage:.3f} on {evaluation.compounds} held-out compounds; "
        f"expected >= {1 - evaluation.significance:.2f} - tolerance {config.validity_tolerance} = {target:.3f}"
    )
    yield dg.AssetCheckResult(
        check_name="validity",
        passed=valid,
        description=validity,
        metadata={"coverage": evaluation.coverage, "minimum": target, "held_out_compounds": evaluation.compounds},
    )
    empty_sets = int(evaluation.point_metrics.get("empty_sets", 0))
    useless = evaluation.infinite_intervals > 0 or (
        evaluation.efficiency_name.endswith("set size") and evaluation.efficiency == 0
    )
    efficiency = f"{evaluation.efficiency_name} {evaluation.efficiency:.3f}" + (
        f"; {evaluation.infinite_intervals} unbounded intervals (calibration set too small for "
        f"significance {evaluation.significance})"
        if evaluation.infinite_intervals
        else ""
    )
    yield dg.AssetCheckResult(
        check_name="efficiency",
        passed=not useless,
        description=efficiency,
        metadata={
            evaluation.efficiency_name: evaluation.efficiency,
            "infinite_intervals": evaluation.infinite_intervals,
            "empty_prediction_sets": empty_sets,
        },
    )
    _stop_unless(valid, f"check validity failed: {validity}; the model is not published")
    _stop_unless(not useless, f"check efficiency failed: {efficiency}; the model is not published")


@dg.asset(partitions_def=training_versions, group_name=GROUP)
def published_model(
    context: dg.AssetExecutionContext,
    aggregated_model: AggregatedModel,
    training_data: TrainingFiles,
    training_store: TrainingStoreResource,
    model_registry: ModelRegistryResource,
    deployment: DeploymentResource,
) -> dg.MaterializeResult:
    """The aggregated model uploaded to the model service (locally: the folder registry)."""
    version = _version(context, training_store, deployment)
    metadata = {
        "workflow": version.workflow,
        "config_version": version.version,
        "partition_key": version.partition_key,
        "config": version.config.to_dict(),
        "engine": aggregated_model.engine,
        "model_suffix": aggregated_model.model_suffix,
        "evaluation": _evaluation_metadata(aggregated_model.evaluation),
        "dagster_run_id": context.run_id,
    }
    registry = model_registry.registry(deployment.settings)
    try:
        location = registry.publish(version.workflow, version.partition_key, aggregated_model.path, metadata)
    except RegistryError as error:
        raise dg.Failure(str(error)) from None
    return dg.MaterializeResult(
        metadata={
            "location": location,
            "model": version.workflow,
            "version": version.partition_key,
            "coverage": aggregated_model.evaluation.coverage,
        }
    )
