"""The k8s executor: dagster-k8s's own `k8s_job_executor`, with the deployment's pod
settings as its defaults. Every step (each CellProfiler batch, each training split) is
its own Kubernetes Job.

How per-step pod settings reach a pod. dagster-k8s merges each step pod's config from,
later entries winning (dicts merged key by key, lists appended without duplicates):
the run launcher (Helm `runK8sConfig`), the code location, the executor's
`step_k8s_config`, the op's `dagster-k8s/config` tag, and `per_step_k8s_config[op name]`.
This project fills the executor's two fields:

- `step_k8s_config`: what every step pod shares (NAS volumes, /tmp, least privilege,
  placement), from the pod settings.
- `per_step_k8s_config`: the training steps by op name (image, CPSign license, resources,
  deadline, Secret), and each analysis step's layer. The sensor launches a
  sub-analysis's run with run config `execution.config.per_step_k8s_config` built by
  `pod_config.analysis_run_config` (image per cp_version, resources per sub_type,
  job_timeout deadline, priority class, labels). A run launched without it (e.g.
  *Materialize* in the UI) gets the deployment's defaults (`default_cp_version`,
  resources `default`, the default job_timeout, label `cpp-dagster/pod-settings:
  defaults`).

The defaults are kept under per-run config with `configured` and a config schema (the
executor's own): a run's `step_k8s_config` and `per_step_k8s_config[op]` are merged onto
the defaults with dagster-k8s's own merge (`K8sContainerContext.merge`), every other
field of the run's executor config is passed on as given. A plain
`k8s_job_executor.configured({...})` would silently drop a run's executor config (checked
with dagster 1.13: `validate_run_config` keeps the fixed values), so the sensor's pod
settings would never reach a pod.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster_k8s import k8s_job_executor
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import UserDefinedDagsterK8sConfig

from cpp_dagster.k8s.pod_config import ANALYSIS_STEPS, PodSettings, executor_defaults

LAYER_KEYS = (
    "container_config",
    "pod_template_spec_metadata",
    "pod_spec_config",
    "job_config",
    "job_metadata",
    "job_spec_config",
)


def merge_layers(onto: Mapping[str, Any] | None, layer: Mapping[str, Any] | None) -> dict:
    """`layer` merged onto `onto` as dagster-k8s merges two levels of a step pod's config
    (DEEP, or SHALLOW if `layer` says `merge_behavior: SHALLOW`)."""

    def context(raw):
        return K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(dict(raw or {})))

    merged = context(onto).merge(context(layer)).run_k8s_config.to_dict()
    return {key: merged[key] for key in LAYER_KEYS if merged[key]}


def with_defaults(defaults: Mapping[str, Any], run_config: Mapping[str, Any]) -> dict:
    """The executor config of a run: its own, with `step_k8s_config` and each
    `per_step_k8s_config` entry merged onto the defaults."""
    config = dict(run_config)
    config["step_k8s_config"] = merge_layers(defaults.get("step_k8s_config"), run_config.get("step_k8s_config"))
    default_steps, run_steps = defaults.get("per_step_k8s_config", {}), run_config.get("per_step_k8s_config") or {}
    config["per_step_k8s_config"] = {
        op: merge_layers(default_steps.get(op), run_steps.get(op)) for op in {**default_steps, **run_steps}
    }
    return config


def k8s_executor(
    pod_settings: PodSettings, training_engine: str, analysis_steps: tuple[str, ...] = ANALYSIS_STEPS
) -> dg.ExecutorDefinition:
    """`k8s_job_executor` with `pod_settings` as its defaults; accepts the same run config
    as `k8s_job_executor` (e.g. `pod_config.analysis_run_config`). Call it when the
    definitions load; `training_engine` is the deployment's (CPP_TRAINING_ENGINE)."""
    defaults = executor_defaults(pod_settings, training_engine, analysis_steps)
    return k8s_job_executor.configured(
        lambda run_config: with_defaults(defaults, run_config),
        config_schema=k8s_job_executor.config_schema,
        description="dagster-k8s k8s_job_executor with the deployment's pod settings as defaults "
        "(per-run config: execution.config.per_step_k8s_config)",
    )
