"""Every pod this project creates is admitted in a namespace that enforces Pod Security
Admission `restricted` (deploy/namespace.yaml): each analysis and training step Job as
dagster-k8s's own builder makes it from the executor's config, and the run worker as
K8sRunLauncher builds it from helm-values.yaml. What a hostile spec would be refused for
shows the check can fail (tests/support/pod_security.py)."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml
from k8s_cluster import EXAMPLE, IDS, helm_run_launcher, options, step_job, step_layer
from k8s_standin import SCHEMA_VERSION
from pod_security import restricted_violations

from cpp_dagster.k8s.executor import with_defaults
from cpp_dagster.k8s.pod_config import (
    ANALYSIS_STEPS,
    TRAINING_STEPS,
    PodSettings,
    analysis_run_config,
    executor_defaults,
)
from cpp_dagster.settings import PROJECT_ROOT


@pytest.fixture
def settings() -> PodSettings:
    return PodSettings.load(EXAMPLE)


def test_the_namespace_enforces_restricted():
    namespace = yaml.safe_load((PROJECT_ROOT / "deploy" / "namespace.yaml").read_text())
    kubernetes_validate.validate(namespace, SCHEMA_VERSION, strict=True)
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels["pod-security.kubernetes.io/warn"] == labels["pod-security.kubernetes.io/audit"] == "restricted"


@pytest.mark.parametrize("engine", ["embedded", "cpsign"])
def test_every_step_pod_is_admitted_under_restricted(settings, engine):
    defaults = executor_defaults(settings, engine)
    sensor = with_defaults(
        defaults, settings, analysis_run_config(settings, options(priority=1), IDS)["execution"]["config"]
    )
    for config in (with_defaults(defaults, settings, {}), sensor):
        for op in (*ANALYSIS_STEPS, *TRAINING_STEPS):
            job = step_job(step_layer(config, op), op)
            assert restricted_violations(job["spec"]["template"]["spec"]) == [], op


def test_the_run_worker_from_the_helm_values_is_admitted_under_restricted():
    import kubernetes
    from dagster_k8s.job import DagsterK8sJobConfig, UserDefinedDagsterK8sConfig, construct_dagster_k8s_job
    from dagster_k8s.models import k8s_snake_case_dict

    values = yaml.safe_load((PROJECT_ROOT / "helm-values.yaml").read_text())
    launcher = helm_run_launcher()
    job = construct_dagster_k8s_job(
        job_config=DagsterK8sJobConfig(
            job_image="registry.example.org/cpp-dagster:0.1.0",
            dagster_home="/opt/dagster/dagster_home",
            security_context=k8s_snake_case_dict(kubernetes.client.V1SecurityContext, launcher["security_context"]),
        ),
        args=["dagster", "api", "execute_run"],
        job_name="dagster-run-x",
        user_defined_k8s_config=UserDefinedDagsterK8sConfig.from_dict(
            {
                "container_config": launcher["run_k8s_config"]["container_config"],
                "pod_spec_config": launcher["run_k8s_config"]["pod_spec_config"],
            }
        ),
        component="run_worker",
    )
    pod = kubernetes.client.ApiClient().sanitize_for_serialization(job)["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    for part in ("dagsterWebserver", "dagsterDaemon"):  # the chart's own pods
        spec = {
            "securityContext": values[part]["podSecurityContext"],
            "containers": [{"name": part, "securityContext": values[part]["securityContext"]}],
        }
        assert restricted_violations(spec) == [], part
        assert values[part]["checkDbReadyInitContainer"] is False  # its busybox runs as root


HOSTILE = {
    "privileged": ({"containers": [{"securityContext": {"privileged": True}}]}, "privileged"),
    "root": ({"securityContext": {"runAsUser": 0}}, "runAsUser 0"),
    "host PID": ({"hostPID": True}, "hostPID"),
    "hostPath /": ({"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}, "volume root: ['hostPath']"),
    "Unconfined seccomp": (
        {"securityContext": {"seccompProfile": {"type": "Unconfined"}}},
        "seccompProfile Unconfined",
    ),
    "SYS_ADMIN": (
        {"containers": [{"securityContext": {"capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]}}}]},
        "adds capabilities",
    ),
}


@pytest.mark.parametrize("change, refused_for", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_step_pod_would_be_refused(settings, change, refused_for):
    job = step_job(
        step_layer(with_defaults(executor_defaults(settings, "embedded"), settings, {}), "run_cellprofiler"), "x"
    )
    pod = job["spec"]["template"]["spec"]
    for key, value in change.items():
        if key == "containers":
            pod["containers"][0]["securityContext"].update(value[0]["securityContext"])
        elif key == "securityContext":
            pod["securityContext"].update(value)
        elif key == "volumes":
            pod["volumes"] += value
        else:
            pod[key] = value
    assert any(refused_for in v for v in restricted_violations(pod)), restricted_violations(pod)
