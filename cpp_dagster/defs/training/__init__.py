"""The model-training workflow's Dagster wiring (one partition per configuration version)."""

from __future__ import annotations

from collections.abc import Callable

import dagster as dg

from cpp_dagster.defs.training.assets import (
    aggregated_model,
    build_split_models,
    compound_database,
    descriptors,
    published_model,
    training_configurations,
    training_data,
)
from cpp_dagster.defs.training.resources import ModelRegistryResource, TrainingStoreResource
from cpp_dagster.defs.training.sensors import build_training_sensor, training_job


def training_defs(
    split_retry_policy: dg.RetryPolicy,
    *,
    sensor_interval_s: int = 30,
    run_config: Callable[[str], dict] = lambda workflow: {},
) -> dg.Definitions:
    return dg.Definitions(
        assets=[
            compound_database,
            training_configurations,
            training_data,
            descriptors,
            build_split_models(split_retry_policy),
            aggregated_model,
            published_model,
        ],
        jobs=[training_job],
        sensors=[build_training_sensor(sensor_interval_s, run_config)],
        resources={"training_store": TrainingStoreResource(), "model_registry": ModelRegistryResource()},
    )
