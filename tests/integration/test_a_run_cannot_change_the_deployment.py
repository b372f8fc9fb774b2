"""A run's config cannot change the deployment: Dagster itself resolves the real
Definitions' run config on Kubernetes (the k8s executor's narrow `per_step` request and
the resources), and every hostile field or value is refused with a message naming it,
while the sensor's own request still reaches the pods. The same through the real
webserver and the Kubernetes stand-in: tests/e2e/test_k8s_hostile_launches_are_refused.py."""

from __future__ import annotations

import dagster as dg
import pytest
import yaml
from k8s_cluster import EXAMPLE, IDS, assert_least_privilege, options, secrets_of, step_job, step_layer

from cpp_dagster import deployment
from cpp_dagster.defs.analysis.sensors import judge
from cpp_dagster.k8s.pod_config import PodConfigError, PodSettings, analysis_run_config
from cpp_dagster.k8s.run_grant import grants
from cpp_dagster.settings import load_settings


@pytest.fixture
def k8s_defs(monkeypatch, tmp_path):
    monkeypatch.setenv("CPP_EXECUTOR", "k8s")
    monkeypatch.setenv("CPP_K8S_CONFIG", str(EXAMPLE))
    from cpp_dagster.definitions import build_defs

    return build_defs()


def per_step(op: str = "run_cellprofiler", **request) -> dict:
    return {"execution": {"config": {"per_step": {op: request}}}}


def executor(defs: dg.Definitions, run_config: dict) -> dict:
    """The k8s executor config Dagster resolves for the sensor's job with `run_config`."""
    return dg.validate_run_config(defs.resolve_job_def("feature_tables_job"), run_config)["execution"]["k8s"]


def refusal(defs: dg.Definitions, run_config: dict) -> str:
    """What Dagster says when it refuses `run_config` (schema or grant), or fails the test."""
    with pytest.raises((dg.DagsterInvalidConfigError, dg.DagsterUserCodeExecutionError)) as refused:
        executor(defs, run_config)
    error = refused.value
    cause = getattr(error, "user_exception", None)
    return str(error) + (f" | {cause}" if cause else "")


SCHEMA_REFUSED = {
    "privileged step pods": (
        {
            "execution": {
                "config": {"step_k8s_config": {"container_config": {"security_context": {"privileged": True}}}}
            }
        },
        'unexpected config entry "step_k8s_config"',
    ),
    "a hostPath / volume": (
        {
            "execution": {
                "config": {
                    "per_step_k8s_config": {
                        "run_cellprofiler": {
                            "pod_spec_config": {"volumes": [{"name": "r", "host_path": {"path": "/"}}]}
                        }
                    }
                }
            }
        },
        'unexpected config entry "per_step_k8s_config"',
    ),
    "root and host PID inside per_step": (
        per_step(pod_spec_config={"host_pid": True, "security_context": {"run_as_user": 0}}),
        'unexpected config entry "pod_spec_config"',
    ),
    "another Secret": (per_step(env_from=[{"secret_ref": {"name": "training-credentials"}}]), "env_from"),
    "an image of its own": (per_step(image="evil.example.org/miner:latest"), 'unexpected config entry "image"'),
    "another namespace": ({"execution": {"config": {"job_namespace": "kube-system"}}}, "job_namespace"),
    "a service account": ({"execution": {"config": {"service_account_name": "admin"}}}, "service_account_name"),
    "the code server's env through a source": (
        per_step(cp_version={"env": "CPP_IMAGEDB_URL"}),
        "is not valid for expected type",
    ),
    "a GPU": (per_step(resources={"limits": {"nvidia.com/gpu": "8"}}), "nvidia.com/gpu"),
    "the NAS root": ({"resources": {"deployment": {"config": {"nas_root": "/"}}}}, "nas_root"),
    "the pipelines folder": (
        {"resources": {"deployment": {"config": {"pipelines_dir": "/tmp/evil"}}}},
        "pipelines_dir",
    ),
    "CellProfiler": ({"resources": {"deployment": {"config": {"cellprofiler": "/bin/sh"}}}}, "cellprofiler"),
    "the work area": ({"resources": {"deployment": {"config": {"work_root": "/"}}}}, "work_root"),
    "imagedb's URL": ({"resources": {"imagedb": {"config": {"url": "postgresql://me@evil/x"}}}}, '"url"'),
    "the registry's URL": ({"resources": {"model_registry": {"config": {"url": "http://127.0.0.1:9/"}}}}, '"url"'),
    "the registry's folder": ({"resources": {"model_registry": {"config": {"directory": "/"}}}}, "directory"),
    "the training store's URL": ({"resources": {"training_store": {"config": {"url": "postgresql://x"}}}}, '"url"'),
    "the IO manager's folder": ({"resources": {"io_manager": {"config": {"base_dir": "/etc"}}}}, "base_dir"),
}


@pytest.mark.parametrize("run_config, says", SCHEMA_REFUSED.values(), ids=SCHEMA_REFUSED.keys())
def test_fields_a_run_is_not_granted_are_refused_by_dagsters_config_check(k8s_defs, run_config, says):
    message = refusal(k8s_defs, run_config)
    assert isinstance(message, str) and says in message, message


GRANT_REFUSED = {
    "a terabyte of memory": (per_step(resources={"limits": {"memory": "1Ti"}}), "above this deployment's cap of 64Gi"),
    "a thousand CPUs": (per_step(resources={"requests": {"cpu": "1000"}}), "above this deployment's cap of 16"),
    "a negative CPU": (per_step(resources={"requests": {"cpu": "-1"}}), "not a positive amount"),
    "a quantity that is no number": (per_step(resources={"limits": {"memory": "²"}}), "is not a Kubernetes quantity"),
    "a request above its limit": (
        per_step(resources={"requests": {"cpu": "4"}, "limits": {"cpu": "2"}}),
        "the request is above the limit",
    ),
    "a deadline of 31 years": (per_step(deadline_seconds=10**9), "not between 1 and this deployment's cap"),
    "no deadline at all": (per_step(deadline_seconds=0), "not between 1"),
    "a system priority class": (
        per_step(priority_class="system-node-critical"),
        "not one of this deployment's priority classes (cpp-high)",
    ),
    "a label another controller selects on": (
        per_step(labels={"app.kubernetes.io/name": "ingress"}),
        "is not granted to a run (only cpp-dagster/<name>)",
    ),
    "a label value with a newline": (per_step(labels={"cpp-dagster/x": "a\nb"}), "is not a label value"),
    "an unknown CellProfiler": (per_step(cp_version="0.0.evil"), "cp_version '0.0.evil' has no container image"),
}


@pytest.mark.parametrize("run_config, says", GRANT_REFUSED.values(), ids=GRANT_REFUSED.keys())
def test_values_beyond_the_grant_are_refused_with_the_field_named(k8s_defs, run_config, says):
    message = refusal(k8s_defs, run_config)
    assert says in message and "execution.config.per_step.run_cellprofiler" in message, message


def test_the_sensors_request_and_a_request_within_the_grant_reach_the_pods(k8s_defs):
    settings = PodSettings.load(EXAMPLE)
    sensor = executor(k8s_defs, analysis_run_config(settings, options(sub_type="qc", priority=1), IDS))
    batch = step_layer(sensor, "run_cellprofiler")
    assert batch["container_config"]["resources"] == settings.resources["qc"]
    assert batch["pod_spec_config"]["priority_class_name"] == "cpp-high"
    job = step_job(batch, "run_cellprofiler")
    assert_least_privilege(job)
    assert secrets_of(job) == ["imagedb-credentials"]

    request = per_step(resources={"limits": {"memory": "16Gi"}}, labels={"cpp-dagster/who": "me"})
    own = step_layer(executor(k8s_defs, request), "run_cellprofiler")
    assert own["container_config"]["resources"]["limits"] == {"cpu": "2", "memory": "16Gi"}
    assert own["pod_template_spec_metadata"]["labels"]["cpp-dagster/who"] == "me"
    assert_least_privilege(step_job(own, "run_cellprofiler"))


def test_a_sub_analysis_whose_deadline_exceeds_the_cap_fails_before_launch(monkeypatch, tmp_path):
    """The sensor checks the request it would launch with: a job_timeout beyond the
    deployment's deadline cap is this sub-analysis's readable error, not a refused run."""
    pods = yaml.safe_load(EXAMPLE.read_text())
    pods["run_limits"] = {"deadline_seconds": 3600}
    pods_file = tmp_path / "pods.yaml"
    pods_file.write_text(yaml.safe_dump(pods))
    monkeypatch.setenv("CPP_EXECUTOR", "k8s")
    monkeypatch.setenv("CPP_K8S_CONFIG", str(pods_file))
    launching = deployment.launching(load_settings())
    meta = {"pipeline_file": "x.cppipe", "cp_version": "5.0.0.dev784"}
    assert judge(launching.check, {**meta, "job_timeout": 3000}) == (options(job_timeout=3000), None)
    refused, why = judge(launching.check, {**meta, "job_timeout": 7200})
    assert refused is None
    assert "deadline_seconds: 7500 is not between 1 and this deployment's cap of 3600 s" in why
    grant = grants(PodSettings.load(pods_file), {"run_cellprofiler": {"deadline_seconds": 3300}})
    assert grant["run_cellprofiler"]["job_spec_config"] == {"active_deadline_seconds": 3300}
    with pytest.raises(PodConfigError, match="unknown keys in the pod settings' run_limits"):
        PodSettings.from_mapping({"run_limits": {"gpu": "1"}})
