"""Executor by deployment: CPP_EXECUTOR=k8s on Kubernetes, multiprocess locally.

Set on the Definitions, so it holds for sensor runs, UI materializations and backfills
(those use the implicit asset job)."""
from __future__ import annotations

import os

import dagster as dg


def executor_for_deployment() -> dg.ExecutorDefinition:
    kind = os.getenv("CPP_EXECUTOR", "multiprocess")
    if kind == "multiprocess":
        return dg.multiprocess_executor.configured({"max_concurrent": int(os.getenv("CPP_MAX_CONCURRENT", "2"))})
    if kind == "in_process":
        return dg.in_process_executor
    raise ValueError(f"CPP_EXECUTOR={kind!r}: expected 'multiprocess' or 'in_process'")
