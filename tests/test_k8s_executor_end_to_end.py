"""The demo analysis on "Kubernetes": the real K8sRunLauncher and k8s_job_executor talk
HTTP to a local stand-in of the Kubernetes API (tests/k8s_standin.py), which runs every
Job's container command with its env as a local process. One Job per batch; every Job
validates against the Kubernetes schema and carries the analysis's pod configuration."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import kubernetes_validate
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import new_database
from cpp_dagster.config import PROJECT_ROOT
from cpp_dagster.demo.register import DEMO_CP_VERSION, demo_pipeline_meta, register_plate
from cpp_dagster.local import sqlalchemy_url
from dagster_helpers import events, tick
from k8s_standin import SCHEMA_VERSION, KubeStandIn

NAMESPACE = "cpp"
IMAGE = "registry.example.org/cpp-dagster:test-cp5"
BIN = Path(sys.executable).parent


@contextmanager
def standin_cluster(pg_server, tmp_path, monkeypatch, nas_root: Path, secrets: dict[str, dict[str, str]]):
    """Stand-in API + a Dagster instance whose run launcher is K8sRunLauncher; every pod
    gets `secrets` (name -> env) as the Helm values give them."""
    pods = yaml.safe_load((PROJECT_ROOT / "deploy" / "k8s-pods.yaml").read_text())
    pods["images"] = {DEMO_CP_VERSION: IMAGE}
    pods["training"]["image"] = IMAGE
    pods_file = tmp_path / "k8s-pods.yaml"
    pods_file.write_text(yaml.safe_dump(pods))
    home = tmp_path / "dagster_home"
    home.mkdir()
    base_env = {"PATH": f"{BIN}:{os.environ['PATH']}", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}
    with KubeStandIn(base_env=base_env, secrets=secrets, cwd=PROJECT_ROOT, namespace=NAMESPACE,
                     workdir=tmp_path / "standin") as k8s:
        env_vars = {
            "CPP_EXECUTOR": "k8s",
            "CPP_K8S_CONFIG": str(pods_file),
            "CPP_NAS_ROOT": str(nas_root),
            "CPP_CELLPROFILER": str(PROJECT_ROOT / ".venv-cp" / "bin" / "cellprofiler"),
            "CPP_BATCH_RETRY_DELAY_S": "1",
            "DAGSTER_PG_URL": sqlalchemy_url(new_database(pg_server, "dagster")),
        }
        (home / "dagster.yaml").write_text(yaml.safe_dump({
            "storage": {"postgres": {"postgres_url": {"env": "DAGSTER_PG_URL"}}},
            "run_coordinator": {"module": "dagster.core.run_coordinator", "class": "DefaultRunCoordinator"},
            "run_launcher": {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": {
                "service_account_name": "cpp-dagster", "instance_config_map": "dagster-instance",
                "dagster_home": str(home), "job_image": IMAGE, "job_namespace": NAMESPACE,
                "load_incluster_config": False, "kubeconfig_file": k8s.kubeconfig_path,
                "env_secrets": list(secrets),
                "env_vars": [f"{k}={v}" for k, v in env_vars.items()]}},
            "concurrency": {"pools": {"default_limit": 4}},
            "telemetry": {"enabled": False},
        }))
        for key, value in {**env_vars, "DAGSTER_HOME": str(home)}.items():
            monkeypatch.setenv(key, value)
        with dg.DagsterInstance.get() as instance:  # from DAGSTER_HOME, as every pod's process does
            yield k8s, instance


@pytest.fixture
def cluster(lab, pg_server, tmp_path, monkeypatch):
    with standin_cluster(pg_server, tmp_path, monkeypatch, lab.settings.nas_root,
                         {"imagedb-credentials": {"CPP_IMAGEDB_URL": lab.db.url}}) as found:
        yield found


def launch(instance, key: str, job: str = "analysis_job") -> None:
    """`dagster job launch`: the run is created from the code location and handed to the
    instance's run launcher (K8sRunLauncher), as a launch from the UI would be."""
    subprocess.run([str(BIN / "dagster"), "job", "launch", "-w", str(PROJECT_ROOT / "workspace.yaml"),
                    "-j", job, "--tags", json.dumps({"dagster/partition": key})],
                   check=True, capture_output=True, text=True, timeout=300, cwd=PROJECT_ROOT)


def wait_for_run(instance, key: str, timeout: float = 600, on_poll=None) -> dg.DagsterRun:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": key}), limit=1)
        if runs and runs[0].is_finished:
            return runs[0]
        if on_poll:
            on_poll()
        time.sleep(1)
    raise TimeoutError(f"run of {key} did not finish")


def submit_demo(lab, instance, barcode: str) -> tuple[str, int]:
    acq = register_plate(lab.db, lab.settings, barcode=barcode, wells=["B02", "C03"], sites=[1], seed=11)
    lab.db.put_pipeline("k8s-demo", demo_pipeline_meta(batch_size=1))  # two batches of one image set
    sub_id = lab.db.submit_analysis(acq, "k8s-demo").sub_ids[0]
    (request,) = tick(instance).run_requests
    return request.partition_key, sub_id


def step_jobs(k8s, fragment: str) -> list[dict]:
    return [j for j in k8s.jobs if fragment in j["metadata"]["labels"].get("dagster/op", "")]


def test_every_batch_is_its_own_valid_job_with_the_analysis_pod_config(lab, cluster):
    k8s, instance = cluster
    key, sub_id = submit_demo(lab, instance, "K8S-1")
    launch(instance, key)
    run = wait_for_run(instance, key)
    assert run.status == dg.DagsterRunStatus.SUCCESS, k8s.pod_log(k8s.jobs[0]["metadata"]["name"])[-3000:]

    kinds = [j["metadata"]["labels"]["app.kubernetes.io/component"] for j in k8s.jobs]
    assert kinds.count("run_worker") == 1  # the run itself ran as a Job, launched by K8sRunLauncher
    batches = step_jobs(k8s, "run_cellprofiler")
    assert len(batches) == 2 == len({j["metadata"]["name"] for j in batches})
    assert len(step_jobs(k8s, "plan_batches")) == 1 and len(step_jobs(k8s, "merge_feature_tables")) == 1
    assert k8s.unhandled == []

    for job in k8s.jobs:
        kubernetes_validate.validate(job, SCHEMA_VERSION, strict=True)
    for job in batches:
        pod = job["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"] == IMAGE
        assert container["resources"] == {"requests": {"cpu": "1", "memory": "4Gi"},
                                          "limits": {"cpu": "2", "memory": "8Gi"}}  # sub_type features
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
        assert container["args"][:3] == ["dagster", "api", "execute_step"]

    sub = lab.db.sub_analysis(sub_id)
    assert sub.finish and sub.error is None and sub.status["message"].startswith("2 / 2 batches finished")
    results = lab.nas / sub.result["job_folder"]
    image = pq.read_table(results / "Image.parquet")
    assert image.num_rows == 2 and set(image["Metadata_Batch"].to_pylist()) == {"batch_0000", "batch_0001"}
    assert pq.read_table(results / "Nuclei.parquet").num_rows > 10


@pytest.mark.parametrize("kills", [1, 2], ids=["killed-once-then-retried", "killed-twice-fails"])
def test_killed_batch_pod_is_retried_then_fails_the_analysis(lab, cluster, kills):
    k8s, instance = cluster
    key, sub_id = submit_demo(lab, instance, f"K8S-KILL{kills}")
    killed: list[str] = []

    def kill_batch_pods():
        for job in step_jobs(k8s, "batch_0001"):
            name = job["metadata"]["name"]
            if name not in killed and len(killed) < kills and "cellprofiler" in k8s.pod_log(name).lower():
                k8s.kill(name, reason="OOMKilled")  # as the kubelet would on a memory limit
                killed.append(name)

    launch(instance, key)
    run = wait_for_run(instance, key, on_poll=kill_batch_pods)
    assert len(killed) == kills
    retried = events(instance, run.run_id, dg.DagsterEventType.STEP_UP_FOR_RETRY)
    assert [e.step_key for e in retried] == ["feature_tables.run_cellprofiler[batch_0001]"]
    assert killed[0] + "-1" in {j["metadata"]["name"] for j in k8s.jobs}  # the retry is a new Job

    sub = lab.db.sub_analysis(sub_id)
    if kills == 1:
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert sub.finish and sub.error is None
        return
    assert run.status == dg.DagsterRunStatus.FAILURE
    # The pod was killed: no hook ran in it. The run-failure sensor (run by the daemon)
    # records the outcome.
    from cpp_dagster.definitions import defs
    from cpp_dagster.defs.sensors import record_run_failure

    failure = events(instance, run.run_id, dg.DagsterEventType.RUN_FAILURE)[0]
    context = dg.build_run_status_sensor_context(sensor_name=record_run_failure.name, dagster_event=failure,
                                                 dagster_instance=instance, dagster_run=run,
                                                 resources=defs.resources).for_run_failure()
    record_run_failure(context)
    sub = lab.db.sub_analysis(sub_id)
    assert sub.error is not None and sub.finish is None
    assert "run_cellprofiler[batch_0001]" in sub.status["message"]
    assert "Discovered failed Kubernetes job" in sub.status["message"]
    assert lab.db.analysis(sub.analysis_id)["error"] is not None
