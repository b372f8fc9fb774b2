"""`k8s_job_executor` from dagster-k8s, with the analysis's pod configuration added.

Model-training runs get their layer the same way, from the pod settings' `training`
section (engine, image, CPSign license Secret, resources by step).

dagster-k8s merges step-pod config from the run launcher, the code location, the
executor config, op tags and `per_step_k8s_config`: all static. What a batch pod needs
depends on the analysis (cp_version -> image, sub_type -> resources, job_timeout,
priority), so `AnalysisK8sStepHandler` merges one more layer on top, computed from the
run's sub-analysis in imagedb (`pod_config.step_config`). Everything else, Job
construction, launch, health checks, retries and termination, is dagster-k8s's own code.
"""
from __future__ import annotations

from functools import lru_cache

import dagster as dg
from dagster._core.executor.step_delegating import StepHandlerContext
from dagster_k8s import k8s_job_executor
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.executor import K8sStepHandler
from dagster_k8s.job import UserDefinedDagsterK8sConfig

from cpp_dagster.config import imagedb_url
from cpp_dagster.defs.partitions import sub_id_of
from cpp_dagster.imagedb.store import ImageDB
from cpp_dagster.k8s.pod_config import TRAINING_STEPS, AnalysisIds, PodSettings, step_config, training_step_config
from cpp_dagster.planning import SubAnalysisOptions


@lru_cache(maxsize=256)
def _analysis(sub_id: int) -> tuple[SubAnalysisOptions, AnalysisIds]:
    sub = ImageDB(imagedb_url()).sub_analysis(sub_id)
    return (SubAnalysisOptions.from_meta(sub.meta),
            AnalysisIds(sub.plate_acquisition_id, sub.analysis_id, sub.sub_id))


@lru_cache(maxsize=1)
def _settings() -> PodSettings:
    return PodSettings.load()


def analysis_step_config(partition_key: str | None, op_name: str) -> dict:
    """The pod config layer of one step of a sub-analysis's run or of a model-training run
    ({} for other runs)."""
    sub_id = sub_id_of(partition_key)
    if sub_id is None:
        if op_name in TRAINING_STEPS:
            from cpp_dagster.training.engines import engine_name

            workflow = partition_key.rsplit("-", 1)[0][:63] if partition_key else None
            return training_step_config(_settings(), op_name, engine_name(), workflow)
        return {}
    options, ids = _analysis(sub_id)
    return step_config(_settings(), options, ids, op_name)


class AnalysisK8sStepHandler(K8sStepHandler):
    def _get_container_context(self, step_handler_context: StepHandlerContext) -> K8sContainerContext:
        context = super()._get_container_context(step_handler_context)
        step_key = self._get_step_key(step_handler_context)
        op_name = step_handler_context.get_step_context(step_key).step.op_name
        layer = analysis_step_config(step_handler_context.dagster_run.tags.get("dagster/partition"), op_name)
        if not layer:
            return context
        return context.merge(K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(layer)))


def _create(init_context: dg.InitExecutorContext):
    executor = k8s_job_executor.executor_creation_fn(init_context)
    # StepDelegatingExecutor holds its handler as _step_handler; the subclass only
    # overrides _get_container_context and keeps every field the base built.
    executor._step_handler.__class__ = AnalysisK8sStepHandler  # noqa: SLF001
    return executor


cpp_k8s_executor = dg.ExecutorDefinition(
    name="k8s",
    config_schema=k8s_job_executor.config_schema,
    requirements=k8s_job_executor.get_requirements,
    executor_creation_fn=_create,
    description="dagster-k8s k8s_job_executor plus the pod configuration of each analysis",
)
