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

import dagster as dg

from cpp_dagster.defs.analysis import Launching
from cpp_dagster.planning import SubAnalysisOptions


def deployment() -> str:
    kind = os.getenv("CPP_EXECUTOR", "multiprocess")
    if kind not in ("multiprocess", "in_process", "k8s"):
        raise ValueError(f"CPP_EXECUTOR={kind!r}: expected 'multiprocess', 'in_process' or 'k8s'")
    return kind


def executor_for_deployment() -> dg.ExecutorDefinition:
    kind = deployment()
    if kind == "k8s":
        from cpp_dagster.k8s.executor import cpp_k8s_executor

        return cpp_k8s_executor
    if kind == "in_process":
        return dg.in_process_executor
    return dg.multiprocess_executor.configured({"max_concurrent": int(os.getenv("CPP_MAX_CONCURRENT", "2"))})


def check_options(options: SubAnalysisOptions) -> None:
    """What can be checked before a run is launched: on Kubernetes, the deployment has
    an image for its cp_version. Raises ValueError with a readable message."""
    if deployment() == "k8s":
        from cpp_dagster.k8s.pod_config import PodSettings

        PodSettings.load().image_for(options.cp_version)


def launching() -> Launching:
    return Launching(interval_s=int(os.getenv("CPP_SENSOR_INTERVAL_S", "30")),
                     max_requests=int(os.getenv("CPP_SENSOR_MAX_REQUESTS", "2000")), check=check_options)


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
