"""The code location: `defs`, loaded by workspace.yaml and by [tool.dagster] in pyproject."""
from __future__ import annotations

import dagster as dg

from cpp_dagster.defs.assets import feature_tables, plate_acquisitions, single_cell_table, well_profiles
from cpp_dagster.defs.executor import executor_for_deployment
from cpp_dagster.defs.overview import lab_overview, lab_overview_sensor
from cpp_dagster.defs.resources import ImageDBResource, NasResource, WorkAreaIOManager
from cpp_dagster.defs.sensors import (
    analysis_job,
    automation_rules,
    pending_sub_analyses,
    record_run_cancellation,
    record_run_failure,
    record_run_without_outcome,
)
from cpp_dagster.defs.submission import submit_analyses
from cpp_dagster.defs.training import (
    ModelRegistryResource,
    TrainingStoreResource,
    aggregated_model,
    compound_database,
    descriptors,
    new_training_configurations,
    published_model,
    split_models,
    training_configurations,
    training_data,
    training_job,
)


def _k8s_executor() -> dg.ExecutorDefinition:
    """dagster-k8s's k8s_job_executor with the deployment's pod settings (CPP_K8S_CONFIG)
    as defaults. Imported here only on Kubernetes (dagster-k8s is slow to import)."""
    from cpp_dagster.k8s.executor import k8s_executor
    from cpp_dagster.k8s.pod_config import PodSettings

    return k8s_executor(PodSettings.load())

defs = dg.Definitions(
    assets=[plate_acquisitions, lab_overview, feature_tables, single_cell_table, well_profiles,
            # model training (the second workflow)
            compound_database, training_configurations, training_data, descriptors, split_models,
            aggregated_model, published_model],
    jobs=[analysis_job, submit_analyses, training_job],
    sensors=[pending_sub_analyses, automation_rules, record_run_failure, record_run_cancellation,
             record_run_without_outcome, new_training_configurations, lab_overview_sensor],
    resources={
        "imagedb": ImageDBResource(),
        "nas": NasResource(),
        "training_store": TrainingStoreResource(),
        "model_registry": ModelRegistryResource(),
        # Step outputs (small descriptors) live on the shared work area, not a step-local disk.
        "io_manager": WorkAreaIOManager(),
    },
    executor=executor_for_deployment(_k8s_executor),
)


def analysis_job_def() -> dg.JobDefinition:
    """For dg.reconstructable(...) in tests and the demo."""
    return defs.resolve_job_def("analysis_job")


def training_job_def() -> dg.JobDefinition:
    return defs.resolve_job_def("model_training")
