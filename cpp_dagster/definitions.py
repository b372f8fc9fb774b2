"""The code location: both workflows' definitions, merged, with the shared resources and
the deployment's executor. Loaded by workspace.yaml and by [tool.dagster] in pyproject
(`defs`, built when the code location loads, never at import). The settings are read
once, here, and passed down."""

from __future__ import annotations

import dagster as dg

from cpp_dagster import deployment
from cpp_dagster.defs.analysis import analysis_defs
from cpp_dagster.defs.resources import DeploymentResource, ImageDBResource, WorkAreaIOManager
from cpp_dagster.defs.training import training_defs
from cpp_dagster.settings import load_settings


def build_defs() -> dg.Definitions:
    settings = load_settings()
    launching = deployment.launching(settings)
    shared = dg.Definitions(
        resources={
            "imagedb": ImageDBResource(),
            "deployment": DeploymentResource(),
            # Step outputs (small descriptors) live on the shared work area, not a step-local disk.
            "io_manager": WorkAreaIOManager(),
        },
        executor=deployment.executor(settings),
    )
    return dg.Definitions.merge(
        analysis_defs(
            launching, deployment.batch_retry_policy(settings), overview_interval_s=settings.launch.overview_interval_s
        ),
        training_defs(
            deployment.split_retry_policy(settings),
            sensor_interval_s=launching.interval_s,
            run_config=deployment.training_run_config(settings),
        ),
        shared,
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_defs()


def analysis_job_def() -> dg.JobDefinition:
    """For dg.reconstructable(...) in tests and the demo."""
    return build_defs().resolve_job_def("analysis_job")


def training_job_def() -> dg.JobDefinition:
    return build_defs().resolve_job_def("model_training")
