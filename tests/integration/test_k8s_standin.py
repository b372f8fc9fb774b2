"""The Kubernetes stand-in (tests/support/k8s_standin.py), driven only through the official
kubernetes client and dagster_k8s's DagsterKubernetesClient."""

from __future__ import annotations

import sys
import time

import kubernetes
import pytest
from k8s_standin import KubeStandIn
from kubernetes.client.rest import ApiException

NS = "default"


def job_body(name: str, code: str, *, env=None, env_from=None, deadline=None, **container):
    """A minimal valid batch/v1 Job running `python -c code` (as Dagster does: args only)."""
    c = {
        "name": "main",
        "image": "standin/python:3.11",
        "args": [sys.executable, "-c", code],
        **({"env": env} if env else {}),
        **({"envFrom": env_from} if env_from else {}),
        **container,
    }
    spec = {
        "backoffLimit": 0,
        "template": {"metadata": {"labels": {"app": "t"}}, "spec": {"containers": [c], "restartPolicy": "Never"}},
    }
    if deadline:
        spec["activeDeadlineSeconds"] = deadline
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {"app": "t", "case": name}},
        "spec": spec,
    }


@pytest.fixture
def k8s(tmp_path):
    with KubeStandIn(
        secrets={"creds": {"token": "s3cret"}}, config_maps={"cfg": {"MODE": "fast"}}, cwd=tmp_path
    ) as k8s:
        yield k8s
    assert k8s.unhandled == []


@pytest.fixture
def apis(k8s):
    client = kubernetes.config.new_client_from_config(config_file=k8s.kubeconfig_path, context=k8s.context)
    yield kubernetes.client.BatchV1Api(client), kubernetes.client.CoreV1Api(client)
    client.close()


def wait_done(batch, name, timeout=20):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        status = batch.read_namespaced_job_status(name, NS).status
        if status.succeeded or status.failed:
            return status
        time.sleep(0.1)
    raise AssertionError(f"job {name} did not finish")


def only_pod(core, name):
    pods = core.list_namespaced_pod(NS, label_selector=f"job-name={name}").items
    assert len(pods) == 1
    return pods[0]


def test_success_logs_env_and_labels(k8s, apis, tmp_path):
    batch, core = apis
    code = (
        "import os; print('hello from', os.environ['HOSTNAME']); "
        "print('V', os.environ['PLAIN'], os.environ['TOKEN'], os.environ['POD'], "
        "os.environ['NAMESPACE'], os.environ['MODE'], os.environ.get('OPT', 'none')); "
        "print('CWD', os.getcwd())"
    )
    env = [
        {"name": "PLAIN", "value": "p1"},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": True}}},
    ]
    created = batch.create_namespaced_job(
        NS, job_body("ok", code, env=env, env_from=[{"configMapRef": {"name": "cfg"}}])
    )
    assert created.metadata.uid and created.metadata.namespace == NS
    status = wait_done(batch, "ok")
    assert status.succeeded == 1 and not status.failed and status.completion_time
    assert [(c.type, c.status) for c in status.conditions] == [("Complete", "True")]

    pod = only_pod(core, "ok")
    assert pod.metadata.name.startswith("ok-") and len(pod.metadata.name) == len("ok-") + 5
    assert pod.metadata.labels["app"] == "t"
    assert pod.metadata.labels["controller-uid"] == created.metadata.uid
    assert pod.status.phase == "Succeeded"
    term = pod.status.container_statuses[0].state.terminated
    assert (term.exit_code, term.reason) == (0, "Completed")
    # kubernetes client 36 returns str(bytes) ("b'...'") from read_namespaced_pod_log
    # (kubernetes-client/python#2596); dagster_k8s reads it with _preload_content=False.
    log = core.read_namespaced_pod_log(pod.metadata.name, NS, _preload_content=False).data.decode()
    assert f"hello from {pod.metadata.name}" in log
    assert f"V p1 s3cret {pod.metadata.name} {NS} fast none" in log
    assert f"CWD {tmp_path}" in log
    assert k8s.pod_log("ok") == log

    # selectors and lookups
    assert [j.metadata.name for j in batch.list_namespaced_job(NS, label_selector="app=t,case=ok").items] == ["ok"]
    assert batch.list_namespaced_job(NS, label_selector="app=t,case=other").items == []
    assert core.list_namespaced_pod(NS, label_selector="job-name=other").items == []
    assert batch.read_namespaced_job("ok", NS).status.succeeded == 1
    assert core.read_namespaced_pod(pod.metadata.name, NS).status.phase == "Succeeded"
    assert core.list_namespaced_event(NS).items == []
    assert k8s.jobs[0]["metadata"]["name"] == "ok"
    assert ("POST", f"/apis/batch/v1/namespaces/{NS}/jobs") in k8s.requests


def test_nonzero_exit_fails(k8s, apis):
    batch, core = apis
    batch.create_namespaced_job(NS, job_body("three", "import sys; sys.exit(3)"))
    status = wait_done(batch, "three")
    assert status.failed == 1 and not status.succeeded
    assert [(c.type, c.reason) for c in status.conditions] == [("Failed", "BackoffLimitExceeded")]
    pod = only_pod(core, "three")
    term = pod.status.container_statuses[0].state.terminated
    assert (pod.status.phase, term.exit_code, term.reason) == ("Failed", 3, "Error")


def test_active_deadline(k8s, apis):
    batch, core = apis
    start = time.monotonic()
    batch.create_namespaced_job(NS, job_body("slow", "import time; time.sleep(60)", deadline=1))
    status = wait_done(batch, "slow", timeout=10)
    assert time.monotonic() - start < 5
    assert status.failed == 1
    assert [(c.type, c.reason) for c in status.conditions] == [("Failed", "DeadlineExceeded")]
    pod = only_pod(core, "slow")
    assert pod.status.reason == "DeadlineExceeded"
    assert pod.status.container_statuses[0].state.terminated.exit_code == 137


def test_conflict_and_invalid(k8s, apis):
    batch, _ = apis
    batch.create_namespaced_job(NS, job_body("twice", "pass"))
    with pytest.raises(ApiException) as e:
        batch.create_namespaced_job(NS, job_body("twice", "pass"))
    assert e.value.status == 409 and "AlreadyExists" in e.value.body

    no_name = job_body("noname", "pass")
    del no_name["spec"]["template"]["spec"]["containers"][0]["name"]
    with pytest.raises(ApiException) as e:
        batch.create_namespaced_job(NS, no_name)
    assert e.value.status == 422 and "'name' is a required property" in e.value.body

    wrong_type = job_body("wrongtype", "pass", deadline="soon")
    with pytest.raises(ApiException) as e:
        batch.create_namespaced_job(NS, wrong_type)
    assert e.value.status == 422 and "activeDeadlineSeconds" in e.value.body

    with pytest.raises(ApiException) as e:
        batch.read_namespaced_job("missing", NS)
    assert e.value.status == 404
    assert [j["metadata"]["name"] for j in k8s.jobs] == ["twice"]
    k8s.wait_for("twice")


def test_delete_kills_process(k8s, apis, tmp_path):
    batch, core = apis
    beat = tmp_path / "beat"
    code = (
        f"import time, pathlib\nwhile True:\n    pathlib.Path({str(beat)!r}).write_text("
        "str(time.time()))\n    time.sleep(0.05)"
    )
    batch.create_namespaced_job(NS, job_body("beating", code))
    for _ in range(100):
        if beat.exists():
            break
        time.sleep(0.05)
    assert beat.exists()
    batch.delete_namespaced_job("beating", NS, propagation_policy="Foreground")
    last = beat.read_text()
    time.sleep(0.3)
    assert beat.read_text() == last
    assert k8s.pod_log("beating") == ""
    with pytest.raises(ApiException) as e:
        batch.read_namespaced_job_status("beating", NS)
    assert e.value.status == 404
    assert core.list_namespaced_pod(NS, label_selector="job-name=beating").items == []


def test_delete_without_policy_orphans_the_pod(k8s, apis):
    """batch/v1's default propagation is Orphan: the pod runs on until deleted itself."""
    batch, core = apis
    batch.create_namespaced_job(NS, job_body("orphan", "import time; time.sleep(60)"))
    pod = only_pod(core, "orphan")
    batch.delete_namespaced_job("orphan", NS)
    with pytest.raises(ApiException):
        batch.read_namespaced_job("orphan", NS)
    pod = only_pod(core, "orphan")
    assert pod.status.phase in ("Pending", "Running") and not pod.metadata.owner_references
    core.delete_namespaced_pod(pod.metadata.name, NS)
    assert k8s.wait_for("orphan", timeout=10)["failed"] == 1
    assert core.list_namespaced_pod(NS, label_selector="job-name=orphan").items == []


def test_delete_pod_fails_job(k8s, apis):
    batch, core = apis
    batch.create_namespaced_job(NS, job_body("podgone", "import time; time.sleep(60)"))
    name = only_pod(core, "podgone").metadata.name
    core.delete_namespaced_pod(name, NS)
    status = wait_done(batch, "podgone")
    assert status.failed == 1
    with pytest.raises(ApiException) as e:
        core.read_namespaced_pod(name, NS)
    assert e.value.status == 404


def test_oom_kill(k8s, apis):
    batch, core = apis
    batch.create_namespaced_job(NS, job_body("oom", "import time; time.sleep(60)"))
    deadline = time.monotonic() + 20  # the Pod starts in the background: kill once it runs
    while not k8s.kill("oom", reason="OOMKilled"):
        assert time.monotonic() < deadline, "the oom Job's container never started"
        time.sleep(0.05)
    assert k8s.wait_for("oom", timeout=10)["failed"] == 1
    term = only_pod(core, "oom").status.container_statuses[0].state.terminated
    assert (term.reason, term.exit_code) == ("OOMKilled", 137)


def test_missing_secret(k8s, apis):
    batch, core = apis
    env = [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}}]
    batch.create_namespaced_job(NS, job_body("nosecret", "pass", env=env))
    status = wait_done(batch, "nosecret")
    assert status.failed == 1
    (cond,) = status.conditions
    assert cond.reason == "CreateContainerConfigError" and "absent" in cond.message
    pod = only_pod(core, "nosecret")
    waiting = pod.status.container_statuses[0].state.waiting
    assert waiting.reason == "CreateContainerConfigError" and "absent" in waiting.message
    with pytest.raises(ApiException) as e:
        core.read_namespaced_pod_log(pod.metadata.name, NS)
    assert e.value.status == 400


def test_unhandled_is_recorded(k8s, apis):
    _, core = apis
    with pytest.raises(ApiException) as e:
        core.list_namespaced_config_map(NS)
    assert e.value.status == 404
    assert k8s.unhandled == [("GET", f"/api/v1/namespaces/{NS}/configmaps")]
    k8s.unhandled.clear()


def test_dagster_kubernetes_client(k8s):
    from dagster_k8s.client import DagsterKubernetesClient
    from dagster_k8s.job import DagsterK8sJobConfig, construct_dagster_k8s_job

    # load_kube_config sets the process-wide default Configuration that
    # production_client()'s PatchedApiClient() picks up; restore it afterwards.
    default = kubernetes.client.Configuration.get_default_copy()
    try:
        kubernetes.config.load_kube_config(config_file=k8s.kubeconfig_path, context=k8s.context)
        api = DagsterKubernetesClient.production_client()
        config = DagsterK8sJobConfig(
            job_image="standin/python:3.11", dagster_home="/nowhere", env_secrets=["creds"], env_vars=["EXTRA=1"]
        )
        job = construct_dagster_k8s_job(
            config,
            [sys.executable, "-c", "import os, time; print(os.environ['token'], flush=True); time.sleep(60)"],
            "dagster-step-x",
        )
        api.create_namespaced_job_with_retries(body=job, namespace=NS)
        assert api.get_pod_names_in_job("dagster-step-x", NS)
        status = api.get_job_status("dagster-step-x", NS)
        assert status.active == 1 and not status.failed
        assert "dagster-step-x" in api.get_job_debug_info("dagster-step-x", NS)
        pod_name = api.get_pod_names_in_job("dagster-step-x", NS)[0]
        assert api.get_pod_by_name(pod_name, NS).metadata.name == pod_name
        for _ in range(100):
            if "s3cret" in api.retrieve_pod_logs(pod_name, NS):
                break
            time.sleep(0.05)
        assert api.retrieve_pod_logs(pod_name, NS) == "s3cret\n"
        assert "dagster" in api.get_pod_debug_info(pod_name, NS)
        assert api.delete_job("dagster-step-x", NS) is True
        assert api.get_job_status("dagster-step-x", NS) is None
        assert api.delete_job("dagster-step-x", NS) is False
        sent = k8s.jobs[0]["spec"]["template"]["spec"]["containers"][0]
        assert sent["args"][0] == sys.executable and sent["envFrom"] == [{"secretRef": {"name": "creds"}}]
    finally:
        kubernetes.client.Configuration.set_default(default)
