"""The model-training workflow's Dagster wiring (one partition per configuration version)."""
from __future__ import annotations

import dagster as dg

from cpp_dagster.defs.training.assets import (
    aggregated_model,
    compound_database,
    descriptors,
    published_model,
    split_models,
    training_configurations,
    training_data,
)
from cpp_dagster.defs.training.resources import ModelRegistryResource, TrainingStoreResource
from cpp_dagster.defs.training.sensors import build_training_sensor, training_job


def training_defs(*, sensor_interval_s: int = 30) -> dg.Definitions:
    return dg.Definitions(
        assets=[compound_database, training_configurations, training_data, descriptors, split_models,
                aggregated_model, published_model],
        jobs=[training_job],
        sensors=[build_training_sensor(sensor_interval_s)],
        resources={"training_store": TrainingStoreResource(), "model_registry": ModelRegistryResource()},
    )
