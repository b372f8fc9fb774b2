"""Hostile launches through the real webserver's GraphQL (what anyone on the lab network
can send: the UI has no login) on "Kubernetes": the real K8sRunLauncher and the
Definitions' k8s executor against the stand-in API (tests/support/k8s_standin.py). A run
asking its pods for privilege, root, the host, another Secret or more than the grant, or
pointing a resource at another NAS root or registry, is refused with a message naming
the field, and no run and no Job (so no pod) is created. The same refusals resolved by
Dagster in process: tests/integration/test_a_run_cannot_change_the_deployment.py."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import dagster as dg
import pytest
from k8s_cluster import analysis_cluster, launch, submit_demo
from webserver import dagster_ui

HOSTILE = {
    "privileged root pods on the host with another Secret": (
        {
            "execution": {
                "config": {
                    "step_k8s_config": {
                        "container_config": {
                            "security_context": {"privileged": True, "run_as_user": 0},
                            "env_from": [{"secret_ref": {"name": "training-credentials"}}],
                            "volume_mounts": [{"name": "host", "mount_path": "/host"}],
                        },
                        "pod_spec_config": {
                            "host_pid": True,
                            "automount_service_account_token": True,
                            "volumes": [{"name": "host", "host_path": {"path": "/"}}],
                        },
                    }
                }
            }
        },
        'unexpected config entry "step_k8s_config"',
    ),
    "dagster-k8s's per-step config": (
        {
            "execution": {
                "config": {
                    "per_step_k8s_config": {
                        "run_cellprofiler": {"container_config": {"security_context": {"privileged": True}}}
                    }
                }
            }
        },
        'unexpected config entry "per_step_k8s_config"',
    ),
    "a terabyte of memory": (
        {"execution": {"config": {"per_step": {"run_cellprofiler": {"resources": {"limits": {"memory": "1Ti"}}}}}}},
        "execution.config.per_step.run_cellprofiler.resources.limits.memory: 1Ti is above this deployment's cap",
    ),
    "the registry pointed at the caller's server": (
        {"resources": {"model_registry": {"config": {"url": "http://127.0.0.1:9/steal"}}}},
        'unexpected config entry "url"',
    ),
    "another NAS root": (
        {"resources": {"deployment": {"config": {"nas_root": "/", "cellprofiler": "/bin/sh"}}}},
        "unexpected config entries \"['cellprofiler', 'nas_root']\" at path root:resources:deployment:config",
    ),
}


@pytest.fixture
def cluster(lab, pg_server, tmp_path, monkeypatch):
    with analysis_cluster(lab, pg_server, tmp_path, monkeypatch) as found:
        yield found


def test_hostile_run_config_through_the_webserver_is_refused_and_creates_no_pod(lab, cluster):
    k8s, instance = cluster
    with dagster_ui(Path(os.environ["DAGSTER_HOME"]), os.environ["DAGSTER_PG_URL"]) as ui:
        for what, (run_config, says) in HOSTILE.items():
            launched = ui.launch_run("feature_tables_job", run_config)
            assert launched["kind"] != "LaunchRunSuccess", what
            assert any(says in m for m in launched["messages"]), (what, launched)
        assert ui.runs() == []
    assert instance.get_runs() == []
    assert k8s.jobs == [] and not any(method == "POST" for method, _ in k8s.requests)


def test_a_run_tag_cannot_shape_the_run_worker_pod(lab, cluster):
    """K8sRunLauncher applies a run's `dagster-k8s/config` tag to the run-worker pod; the
    deployed launcher's allow-lists (helm-values.yaml) refuse every field of it, so the
    launch fails with Dagster's message and no Job is created."""
    k8s, instance = cluster
    request, _ = submit_demo(lab, instance, "K8S-TAG")
    hostile = {
        "container_config": {
            "security_context": {"privileged": True, "run_as_user": 0},
            "env_from": [{"secret_ref": {"name": "training-credentials"}}],
            "command": ["sh", "-c", "cat /var/run/secrets/*"],
        },
        "pod_spec_config": {"host_pid": True},
    }
    with pytest.raises(subprocess.CalledProcessError) as refused:
        launch(instance, request.partition_key, job=request.job_name, tags={"dagster-k8s/config": json.dumps(hostile)})
    assert "violated the allowed list" in refused.value.stderr
    (run,) = instance.get_runs()
    assert run.status == dg.DagsterRunStatus.FAILURE
    assert k8s.jobs == [] and not any(method == "POST" for method, _ in k8s.requests)
