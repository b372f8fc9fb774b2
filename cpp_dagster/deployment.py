"""What differs between deployments, chosen once when the definitions load:
CPP_EXECUTOR=k8s on Kubernetes (each step its own pod, dagster-k8s's k8s_job_executor),
multiprocess locally (each step its own process). The op code is the same.

The executor is set on the Definitions, so it holds for sensor runs, UI
materializations and backfills (those use the implicit asset job). On Kubernetes the
launch sensor also checks that the deployment has an image for a sub-analysis's
cp_version before launching it, and gives each run its per-step pod settings.
"""
from __future__ import annotations

import os
from collections.abc import Callable

import dagster as dg

from cpp_dagster.defs.analysis import Launching
from cpp_dagster.defs.analysis.steps import OP_NAMES
from cpp_dagster.imagedb.rows import ReadySubAnalysis
from cpp_dagster.planning import SubAnalysisOptions


def deployment() -> str:
    kind = os.getenv("CPP_EXECUTOR", "multiprocess")
    if kind not in ("multiprocess", "in_process", "k8s"):
        raise ValueError(f"CPP_EXECUTOR={kind!r}: expected 'multiprocess', 'in_process' or 'k8s'")
    return kind


def executor_for_deployment() -> dg.ExecutorDefinition:
    kind = deployment()
    if kind == "k8s":  # dagster-k8s is slow to import: only on Kubernetes
        from cpp_dagster.k8s.executor import k8s_executor
        from cpp_dagster.k8s.pod_config import PodSettings

        return k8s_executor(PodSettings.load(), analysis_steps=OP_NAMES)
    if kind == "in_process":
        return dg.in_process_executor
    return dg.multiprocess_executor.configured({"max_concurrent": int(os.getenv("CPP_MAX_CONCURRENT", "2"))})


def launching() -> Launching:
    """How the sensor launches: on Kubernetes it first checks that the deployment has an
    image for a sub-analysis's cp_version (ValueError with a readable message, and the
    sub-analysis fails without a run), and gives its run the per-step pod settings."""
    interval_s = int(os.getenv("CPP_SENSOR_INTERVAL_S", "30"))
    max_requests = int(os.getenv("CPP_SENSOR_MAX_REQUESTS", "2000"))
    if deployment() != "k8s":
        return Launching(interval_s=interval_s, max_requests=max_requests)
    from cpp_dagster.k8s.pod_config import AnalysisIds, PodSettings, analysis_run_config

    pods = PodSettings.load()

    def run_config(ready: ReadySubAnalysis, options: SubAnalysisOptions) -> dict:
        ids = AnalysisIds(ready.plate_acquisition_id, ready.analysis_id, ready.sub_id)
        return analysis_run_config(pods, options, ids, steps=OP_NAMES)

    return Launching(interval_s=interval_s, max_requests=max_requests,
                     check=lambda options: pods.image_for(options.cp_version), run_config=run_config)


def training_run_config() -> Callable[[str], dict]:
    """The run config of a model-training run, by workflow (its pod label on Kubernetes)."""
    if deployment() != "k8s":
        return lambda workflow: {}
    from cpp_dagster.k8s.pod_config import training_run_config as on_kubernetes

    return on_kubernetes


def batch_retry_policy() -> dg.RetryPolicy:
    """Crashes, evictions and killed step processes are retried; a batch killed by its
    job_timeout is not, unless CPP_RETRY_TIMEOUTS=true (see steps.run_cellprofiler)."""
    return dg.RetryPolicy(max_retries=int(os.getenv("CPP_BATCH_RETRIES", "1")),
                          delay=float(os.getenv("CPP_BATCH_RETRY_DELAY_S", "5")), backoff=dg.Backoff.EXPONENTIAL)


def overview_interval_s() -> int:
    return int(os.getenv("CPP_OVERVIEW_INTERVAL_S", "60"))


def split_retry_policy() -> dg.RetryPolicy:
    """Retries of a model-training split (CPP_SPLIT_RETRIES)."""
    return dg.RetryPolicy(max_retries=int(os.getenv("CPP_SPLIT_RETRIES", "1")), delay=10)
