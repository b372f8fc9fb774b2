"""What differs between deployments, chosen once when the definitions load (from the
typed Settings): CPP_EXECUTOR=k8s on Kubernetes (each step its own pod, dagster-k8s's
k8s_job_executor), multiprocess locally (each step its own process, forked from a
forkserver that has the project loaded). The op code is the same.

The executor is set on the Definitions, so it holds for sensor runs, UI
materializations and backfills (those use the implicit asset job). On Kubernetes the
launch sensor also checks that the deployment has an image for a sub-analysis's
cp_version before launching it, and gives each run its per-step pod settings.
"""

from __future__ import annotations

from collections.abc import Callable

import dagster as dg

from cpp_dagster.analysis.planning import SubAnalysisOptions
from cpp_dagster.defs.analysis import Launching
from cpp_dagster.defs.analysis.steps import OP_NAMES
from cpp_dagster.imagedb.rows import ReadySubAnalysis
from cpp_dagster.settings import Settings

# Imported once per run by the multiprocess executor's forkserver, so that each step is a
# fork of a process that has Dagster and the project loaded, not a fresh Python that
# imports them (6-7 s per step on 2 cores, paid on the critical path of every run). A
# step's environment is the run worker's, as with spawn: the forkserver starts in it.
# dagster_postgres is the instance's storage, which every step opens (3 s to import).
STEP_PRELOAD = ["cpp_dagster.definitions", "dagster_postgres"]


def executor(settings: Settings) -> dg.ExecutorDefinition:
    if settings.launch.executor == "k8s":  # dagster-k8s is slow to import: only on Kubernetes
        from cpp_dagster.k8s.executor import k8s_executor
        from cpp_dagster.k8s.pod_config import PodSettings

        return k8s_executor(
            PodSettings.load(settings.launch.k8s_config), settings.training.engine, analysis_steps=OP_NAMES
        )
    if settings.launch.executor == "in_process":
        return dg.in_process_executor
    return dg.multiprocess_executor.configured(
        {
            "max_concurrent": settings.launch.max_concurrent,
            "start_method": {"forkserver": {"preload_modules": STEP_PRELOAD}},
        }
    )


def launching(settings: Settings) -> Launching:
    """How the sensor launches: on Kubernetes it first checks that the deployment grants
    a sub-analysis's run what it needs (an image for its cp_version, its deadline within
    the cap; ValueError with a readable message, and the sub-analysis fails without a
    run), and gives its run the per-step requests."""
    launch = settings.launch
    if launch.executor != "k8s":
        return Launching(
            interval_s=launch.sensor_interval_s,
            max_requests=launch.sensor_max_requests,
            max_new_keys=launch.sensor_max_new_keys,
        )
    from cpp_dagster.k8s.pod_config import AnalysisIds, PodSettings, analysis_run_config
    from cpp_dagster.k8s.run_grant import grants

    pods = PodSettings.load(settings.launch.k8s_config)

    def run_config(ready: ReadySubAnalysis, options: SubAnalysisOptions) -> dict:
        ids = AnalysisIds(ready.plate_acquisition_id, ready.analysis_id, ready.sub_id)
        return analysis_run_config(pods, options, ids, steps=OP_NAMES)

    def check(options: SubAnalysisOptions) -> None:
        requests = analysis_run_config(pods, options, AnalysisIds(0, 0, 0), steps=OP_NAMES)
        grants(pods, requests["execution"]["config"]["per_step"])  # what the executor will check

    return Launching(
        interval_s=launch.sensor_interval_s,
        max_requests=launch.sensor_max_requests,
        max_new_keys=launch.sensor_max_new_keys,
        check=check,
        run_config=run_config,
    )


def training_run_config(settings: Settings) -> Callable[[str], dict]:
    """The run config of a model-training run, by workflow (its pod label on Kubernetes)."""
    if settings.launch.executor != "k8s":
        return lambda workflow: {}
    from cpp_dagster.k8s.pod_config import training_run_config as on_kubernetes

    return on_kubernetes


def batch_retry_policy(settings: Settings) -> dg.RetryPolicy:
    """Crashes, evictions and killed step processes are retried; a batch killed by its
    job_timeout is not, unless CPP_RETRY_TIMEOUTS=true (see steps.run_cellprofiler)."""
    return dg.RetryPolicy(
        max_retries=settings.launch.batch_retries,
        delay=settings.launch.batch_retry_delay_s,
        backoff=dg.Backoff.EXPONENTIAL,
    )


def split_retry_policy(settings: Settings) -> dg.RetryPolicy:
    """Retries of a model-training split (CPP_SPLIT_RETRIES)."""
    return dg.RetryPolicy(max_retries=settings.training.split_retries, delay=10)
