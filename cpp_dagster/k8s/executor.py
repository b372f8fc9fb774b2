"""The k8s executor: dagster-k8s's own `k8s_job_executor`, with the deployment's pod
settings as its config and a run's narrow request on top. Every step (each CellProfiler
batch, each training split) is its own Kubernetes Job.

How per-step pod settings reach a pod. dagster-k8s merges each step pod's config from,
later entries winning (dicts merged key by key, lists appended without duplicates):
the run launcher (Helm `runK8sConfig`), the code location, the executor's
`step_k8s_config`, the op's `dagster-k8s/config` tag, and `per_step_k8s_config[op name]`.
This project fills the executor's two fields, from the deployment only:

- `step_k8s_config`: what every step pod shares (NAS volumes, /tmp, least privilege,
  placement), from the pod settings.
- `per_step_k8s_config`: the training steps by op name (image, CPSign license, resources,
  deadline, Secret) and the analysis steps' defaults, each with what the run asked for
  merged on top.

A run's executor config is not dagster-k8s's: anyone who can reach the UI can launch a
run, so a run may only ask, per step op, `execution.config.per_step.<op>` for a
cp_version, resources, a deadline, a priority class and labels, each within what the
deployment grants (`run_grant.py`). The schema refuses every other field (Dagster's own
config validation, in the UI's Launchpad and at launch: `step_k8s_config`,
`job_namespace`, `env_secrets`, ...), and the config mapping refuses values beyond the
grant (a RunGrantError naming the field) before any pod is created. The sensor launches
a sub-analysis's run with such a request (`pod_config.analysis_run_config`: image per
cp_version, resources per sub_type, job_timeout deadline, priority class, labels). A run
launched without it (e.g. *Materialize* in the UI) gets the deployment's defaults
(`default_cp_version`, resources `default`, the default job_timeout, label
`cpp-dagster/pod-settings: defaults`).

The schema is kept under per-run config with `configured` (its config schema is the
narrow one): a plain `k8s_job_executor.configured({...})` would silently drop a run's
executor config (checked with dagster 1.13: `validate_run_config` keeps the fixed
values), so the sensor's pod settings would never reach a pod.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster_k8s import k8s_job_executor
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import UserDefinedDagsterK8sConfig

from cpp_dagster.k8s.pod_config import ANALYSIS_STEPS, PodSettings, executor_defaults
from cpp_dagster.k8s.run_grant import grants

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


def _optional(config_type) -> dg.Field:
    return dg.Field(config_type, is_required=False)


# Plain `str`/`int`, never StringSource: a run must not name an environment variable of
# the code server (`{env: CPP_IMAGEDB_URL}`) whose value an error message would quote.
_QUANTITIES = dg.Shape({name: _optional(str) for name in ("cpu", "memory")})
STEP_REQUEST = dg.Shape(
    {
        "cp_version": _optional(str),
        "resources": _optional(dg.Shape({"requests": _optional(_QUANTITIES), "limits": _optional(_QUANTITIES)})),
        "deadline_seconds": _optional(int),
        "priority_class": _optional(str),
        "labels": _optional(dg.Map(str, str)),
    },
    description="what a run may ask of one step op's pods (cpp_dagster/k8s/run_grant.py)",
)
RUN_CONFIG_SCHEMA = {
    "per_step": dg.Field(
        dg.Map(str, STEP_REQUEST),
        is_required=False,
        default_value={},
        description="by op name: cp_version, resources, deadline_seconds, priority_class, labels",
    )
}


def with_defaults(defaults: Mapping[str, Any], settings: PodSettings, run_config: Mapping[str, Any]) -> dict:
    """The k8s executor config of a run: the defaults, with the run's checked `per_step`
    requests merged onto each op's layer. RunGrantError for a request beyond the grant."""
    requested = grants(settings, run_config.get("per_step"))
    default_steps = defaults.get("per_step_k8s_config", {})
    return {
        "step_k8s_config": dict(defaults.get("step_k8s_config") or {}),
        "per_step_k8s_config": {
            op: merge_layers(default_steps.get(op), requested.get(op)) for op in {**default_steps, **requested}
        },
    }


def k8s_executor(
    pod_settings: PodSettings, training_engine: str, analysis_steps: tuple[str, ...] = ANALYSIS_STEPS
) -> dg.ExecutorDefinition:
    """`k8s_job_executor` with `pod_settings` as its config; a run may add only the
    narrow `per_step` requests (e.g. `pod_config.analysis_run_config`). Call it when the
    definitions load; `training_engine` is the deployment's (CPP_TRAINING_ENGINE)."""
    defaults = executor_defaults(pod_settings, training_engine, analysis_steps)
    return k8s_job_executor.configured(
        lambda run_config: with_defaults(defaults, pod_settings, run_config),
        config_schema=RUN_CONFIG_SCHEMA,
        description="dagster-k8s k8s_job_executor with the deployment's pod settings; a run may ask only "
        "execution.config.per_step.<op>: cp_version, resources, deadline_seconds, priority_class, labels",
    )
