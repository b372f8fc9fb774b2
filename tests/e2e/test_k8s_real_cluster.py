"""Opt-in: against a real cluster named by CPP_K8S_TEST_CONTEXT (a kube context, e.g.
`kind-cpp`). Skipped otherwise. A kind recipe: docs/deploy.md, "How it is tested without a
cluster".

1. The batch Job of the demo analysis, built by dagster-k8s's own construct_dagster_k8s_job
   with the project's pod settings, is accepted by the real API server (server-side
   dry run: schema, defaulting and admission, nothing is created).
2. With CPP_K8S_TEST_IMAGE (an image built from the Dockerfile and loaded into the
   cluster), a Job in that image imports the code location and runs
   `cellprofiler --version`, and succeeds.
"""

from __future__ import annotations

import os
import time
import uuid

import pytest

from cpp_dagster.analysis.planning import SubAnalysisOptions
from cpp_dagster.demo.register import demo_pipeline_meta
from cpp_dagster.k8s.executor import merge_layers
from cpp_dagster.k8s.pod_config import AnalysisIds, PodSettings, analysis_step_config, step_base_config
from cpp_dagster.settings import PROJECT_ROOT

CONTEXT = os.environ.get("CPP_K8S_TEST_CONTEXT")
NAMESPACE = os.environ.get("CPP_K8S_TEST_NAMESPACE", "default")
pytestmark = pytest.mark.skipif(
    not CONTEXT,
    reason="CPP_K8S_TEST_CONTEXT is not set: no Kubernetes cluster to test against "
    "(set it to a kube context, e.g. kind-cpp; docs/deploy.md 'How it is tested without a cluster')",
)


def batch_job(image: str | None = None, args: list[str] | None = None):
    from dagster_k8s.job import DagsterK8sJobConfig, UserDefinedDagsterK8sConfig, construct_dagster_k8s_job

    settings = PodSettings.load(os.environ.get("CPP_K8S_CONFIG", PROJECT_ROOT / "deploy" / "k8s-pods.yaml"))
    options = SubAnalysisOptions.from_meta(demo_pipeline_meta()["sub_analyses"][0])
    layer = merge_layers(
        step_base_config(settings),  # the executor's step_k8s_config, then the batch's own layer
        analysis_step_config(settings, "run_cellprofiler", options, AnalysisIds(1, 1, 1)),
    )
    if image:
        layer["container_config"]["image"] = image
    name = f"cpp-dagster-test-{uuid.uuid4().hex[:8]}"
    return construct_dagster_k8s_job(
        DagsterK8sJobConfig(
            job_image=image or layer["container_config"]["image"], dagster_home="/opt/dagster/dagster_home"
        ),
        args=args or ["dagster", "api", "execute_step"],
        job_name=name,
        user_defined_k8s_config=UserDefinedDagsterK8sConfig.from_dict(layer),
        labels={"dagster/op": "run_cellprofiler"},
    )


@pytest.fixture
def batch_api():
    import kubernetes

    kubernetes.config.load_kube_config(context=CONTEXT)
    return kubernetes.client.BatchV1Api()


def test_real_api_server_accepts_the_batch_job(batch_api):
    created = batch_api.create_namespaced_job(NAMESPACE, batch_job(), dry_run="All")
    assert created.spec.active_deadline_seconds == 1800 + 300
    assert created.spec.template.spec.containers[0].resources.limits["memory"] == "8Gi"


@pytest.mark.skipif(not os.environ.get("CPP_K8S_TEST_IMAGE"), reason="CPP_K8S_TEST_IMAGE is not set: no image to run")
def test_image_runs_cellprofiler_in_a_pod(batch_api):
    import kubernetes

    script = "python -c 'import cpp_dagster.definitions' && $CPP_CELLPROFILER --version"
    job = batch_job(os.environ["CPP_K8S_TEST_IMAGE"], ["sh", "-c", script])
    job.spec.template.spec.volumes = [v for v in job.spec.template.spec.volumes if v.name == "tmp"]
    job.spec.template.spec.containers[0].volume_mounts = [
        m for m in job.spec.template.spec.containers[0].volume_mounts if m.name == "tmp"
    ]
    job.spec.template.spec.node_selector = None  # a test cluster has no labelled nodes
    batch_api.create_namespaced_job(NAMESPACE, job)
    name = job.metadata.name
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            status = batch_api.read_namespaced_job_status(name, NAMESPACE).status
            if status.succeeded or status.failed:
                break
            time.sleep(3)
        assert status.succeeded == 1, f"job {name} did not succeed: {status}"
    finally:
        batch_api.delete_namespaced_job(name, NAMESPACE, propagation_policy="Background")
        kubernetes.config.load_kube_config(context=CONTEXT)
