"""The demo analysis on "Kubernetes": the real K8sRunLauncher and k8s_job_executor talk
HTTP to a local stand-in of the Kubernetes API (tests/support/k8s_standin.py), which runs every
Job's container command with its env as a local process. One Job per batch; every Job
validates against the Kubernetes schema and carries the analysis's pod configuration when
launched with the sensor's run config, the deployment's defaults when launched without."""

from __future__ import annotations

import dagster as dg
import kubernetes_validate
import pyarrow.parquet as pq
import pytest
from dagster_helpers import events
from k8s_cluster import (
    DEFAULT_BATCH_RESOURCES,
    DEFAULT_IMAGE,
    IMAGE,
    analysis_cluster,
    assert_least_privilege,
    launch,
    secrets_of,
    sensor_run_config,
    step_jobs,
    submit_demo,
    wait_for_run,
)
from k8s_standin import SCHEMA_VERSION

from cpp_dagster.analysis.planning import DEFAULT_JOB_TIMEOUT_S
from cpp_dagster.features.columns import BATCH_COLUMN


@pytest.fixture
def cluster(lab, pg_server, tmp_path, monkeypatch):
    with analysis_cluster(lab, pg_server, tmp_path, monkeypatch) as found:
        yield found


def test_every_batch_is_its_own_valid_job_with_the_analysis_pod_config(lab, cluster):
    k8s, instance = cluster
    request, sub_id = submit_demo(lab, instance, "K8S-1")
    key = request.partition_key
    launch(instance, key, job=request.job_name, run_config=sensor_run_config(lab, sub_id), tags=request.tags)
    run = wait_for_run(instance, key)
    assert run.status == dg.DagsterRunStatus.SUCCESS, k8s.pod_log(k8s.jobs[0]["metadata"]["name"])[-3000:]

    kinds = [j["metadata"]["labels"]["app.kubernetes.io/component"] for j in k8s.jobs]
    assert kinds.count("run_worker") == 1  # the run itself ran as a Job, launched by K8sRunLauncher
    batches = step_jobs(k8s, "run_cellprofiler")
    assert len(batches) == 2 == len({j["metadata"]["name"] for j in batches})
    assert len(step_jobs(k8s, "plan_batches")) == 1 and len(step_jobs(k8s, "merge_tables")) == 1
    assert k8s.unhandled == []

    for job in k8s.jobs:
        kubernetes_validate.validate(job, SCHEMA_VERSION, strict=True)
    for job in (j for j in k8s.jobs if j["metadata"]["labels"]["app.kubernetes.io/component"] == "step_worker"):
        assert_least_privilege(job)
        assert secrets_of(job) == ["imagedb-credentials"]  # no training credentials in an analysis pod
    for job in batches:
        pod = job["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"] == IMAGE
        assert container["resources"] == {
            "requests": {"cpu": "1", "memory": "4Gi"},
            "limits": {"cpu": "2", "memory": "8Gi"},
        }  # sub_type features
        assert job["spec"]["activeDeadlineSeconds"] == 1800 + 300  # demo job_timeout + start-up grace
        assert job["spec"]["backoffLimit"] == 0
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts["nas-images"].get("readOnly") is True and not mounts["nas-results"].get("readOnly")
        assert mounts["tmp"]["mountPath"] == "/tmp"
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["nas-images"]["persistentVolumeClaim"]["claimName"] == "nas-images"
        assert volumes["tmp"]["emptyDir"]["medium"] == "Memory"
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["nodeSelector"] == {"cpp-dagster/node": "true"}
        assert "priorityClassName" not in pod  # priority is not 1
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["OMP_NUM_THREADS"] == "1" and env["CPP_EXECUTOR"] == "k8s"
        assert "CPP_IMAGEDB_URL" not in env  # the credentials come from the Secret, not the spec
        assert {"secretRef": {"name": "imagedb-credentials"}} in container["envFrom"]
        labels = job["spec"]["template"]["metadata"]["labels"]
        assert labels["cpp-dagster/sub-analysis"] == str(sub_id) and labels["dagster/run-id"] == run.run_id
        assert labels["cpp-dagster/sub-type"] == "features" and labels["cpp-dagster/pod-settings"] == "sub-analysis"
        assert container["args"][:3] == ["dagster", "api", "execute_step"]
    for job in step_jobs(k8s, "plan_batches") + step_jobs(k8s, "merge_tables"):
        assert job["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGE
        assert job["spec"]["template"]["metadata"]["labels"]["cpp-dagster/sub-analysis"] == str(sub_id)

    sub = lab.db.sub_analysis(sub_id)
    assert sub.finish and sub.error is None and sub.status["message"].startswith("2 / 2 batches finished")
    results = lab.nas / sub.result["job_folder"]
    image = pq.read_table(results / "Image.parquet")
    assert image.num_rows == 2 and set(image[BATCH_COLUMN].to_pylist()) == {"batch_0000", "batch_0001"}
    assert pq.read_table(results / "Nuclei.parquet").num_rows > 10


@pytest.mark.parametrize("kills", [1, 2], ids=["killed-once-then-retried", "killed-twice-fails"])
def test_killed_batch_pod_is_retried_then_fails_the_analysis(lab, cluster, kills):
    """Launched with the sensor's tags but without its run config (as a re-launch from the
    UI would be): the pods get the deployment's defaults, and the analysis still runs."""
    k8s, instance = cluster
    request, sub_id = submit_demo(lab, instance, f"K8S-KILL{kills}")
    key = request.partition_key
    killed: list[str] = []

    def kill_batch_pods():
        for job in step_jobs(k8s, "batch_0001"):
            name = job["metadata"]["name"]
            if name not in killed and len(killed) < kills and "cellprofiler" in k8s.pod_log(name).lower():
                if k8s.kill(name, reason="OOMKilled"):  # as the kubelet would on a memory limit
                    killed.append(name)  # only a kill that reached a running container counts

    launch(instance, key, job=request.job_name, tags=request.tags)
    # polled often: on a loaded machine a one-image-set batch may not outlive a 1 s poll
    run = wait_for_run(instance, key, on_poll=kill_batch_pods, poll_s=0.2)
    assert len(killed) == kills
    retried = events(instance, run.run_id, dg.DagsterEventType.STEP_UP_FOR_RETRY)
    assert [e.step_key for e in retried] == ["features_step.run_cellprofiler[batch_0001]"]
    assert killed[0] + "-1" in {j["metadata"]["name"] for j in k8s.jobs}  # the retry is a new Job
    for job in step_jobs(k8s, "run_cellprofiler"):  # the defaults: no sub-analysis settings reached them
        pod = job["spec"]["template"]["spec"]
        assert pod["containers"][0]["image"] == DEFAULT_IMAGE
        assert pod["containers"][0]["resources"] == DEFAULT_BATCH_RESOURCES
        assert job["spec"]["activeDeadlineSeconds"] == DEFAULT_JOB_TIMEOUT_S + 300
        assert job["spec"]["template"]["metadata"]["labels"]["cpp-dagster/pod-settings"] == "defaults"
        assert_least_privilege(job)

    sub = lab.db.sub_analysis(sub_id)
    if kills == 1:
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert sub.finish and sub.error is None
        return
    assert run.status == dg.DagsterRunStatus.FAILURE
    # The pod was killed: no hook ran in it. The run-failure sensor (run by the daemon)
    # records the outcome.
    from cpp_dagster.definitions import build_defs
    from cpp_dagster.defs.analysis.sensors import record_run_failure

    failure = events(instance, run.run_id, dg.DagsterEventType.RUN_FAILURE)[0]
    context = dg.build_run_status_sensor_context(
        sensor_name=record_run_failure.name,
        dagster_event=failure,
        dagster_instance=instance,
        dagster_run=run,
        resources=build_defs().resources,
    ).for_run_failure()
    record_run_failure(context)
    sub = lab.db.sub_analysis(sub_id)
    assert sub.error is not None and sub.finish is None
    assert "run_cellprofiler[batch_0001]" in sub.status["message"]
    assert "Discovered failed Kubernetes job" in sub.status["message"]
    assert lab.db.analysis(sub.analysis_id)["error"] is not None
