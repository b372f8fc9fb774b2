"""Executor by deployment: CPP_EXECUTOR=k8s on Kubernetes (each step its own pod),
multiprocess locally (each step its own process). The op code is the same.

Set on the Definitions, so it holds for sensor runs, UI materializations and backfills
(those use the implicit asset job). The Kubernetes executor is cpp_dagster.k8s's; the
top-level definitions pass it in (defs/ does not import k8s/)."""
from __future__ import annotations

import os
from collections.abc import Callable

import dagster as dg

from cpp_dagster.planning import SubAnalysisOptions


def deployment() -> str:
    kind = os.getenv("CPP_EXECUTOR", "multiprocess")
    if kind not in ("multiprocess", "in_process", "k8s"):
        raise ValueError(f"CPP_EXECUTOR={kind!r}: expected 'multiprocess', 'in_process' or 'k8s'")
    return kind


def executor_for_deployment(k8s_executor: Callable[[], dg.ExecutorDefinition]) -> dg.ExecutorDefinition:
    """The executor of CPP_EXECUTOR; `k8s_executor` builds the Kubernetes one (called only
    on Kubernetes)."""
    kind = deployment()
    if kind == "k8s":
        return k8s_executor()
    if kind == "in_process":
        return dg.in_process_executor
    return dg.multiprocess_executor.configured({"max_concurrent": int(os.getenv("CPP_MAX_CONCURRENT", "2"))})


def preflight(meta: dict) -> SubAnalysisOptions:
    """What can be checked before a run is launched: the meta parses and, on Kubernetes,
    the deployment has an image for its cp_version. Raises with a readable message."""
    options = SubAnalysisOptions.from_meta(meta)
    if deployment() == "k8s":
        from cpp_dagster.k8s.pod_config import PodSettings

        PodSettings.load().image_for(options.cp_version)
    return options
