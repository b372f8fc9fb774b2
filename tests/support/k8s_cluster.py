"""A local "cluster" for the end-to-end Kubernetes tests: the stand-in of the Kubernetes
API (k8s_standin.py) and a Dagster instance whose run launcher is the real
K8sRunLauncher talking to it; launching a job as the UI would, and waiting for its run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import yaml
from k8s_standin import KubeStandIn
from pg_databases import new_database

from cpp_dagster.analysis.planning import SubAnalysisOptions
from cpp_dagster.demo.register import DEMO_CP_VERSION
from cpp_dagster.k8s.image import image_reference
from cpp_dagster.k8s.pod_config import AnalysisIds
from cpp_dagster.local.environment import sqlalchemy_url
from cpp_dagster.settings import PROJECT_ROOT

# the pod settings the tests read, and a sub-analysis to build pod configs for
EXAMPLE = PROJECT_ROOT / "deploy" / "k8s-pods.yaml"
HELM_VALUES = PROJECT_ROOT / "helm-values.yaml"
RUN_WORKER_ALLOW_LISTS = ("only_allow_user_defined_k8s_config_fields", "only_allow_user_defined_env_vars")


def helm_run_launcher() -> dict:
    """The run launcher's config in helm-values.yaml, as the chart writes it into the
    instance's dagster.yaml (a CustomRunLauncher: dagster-k8s's K8sRunLauncher)."""
    launcher = yaml.safe_load(HELM_VALUES.read_text())["runLauncher"]
    assert launcher["type"] == "CustomRunLauncher"
    custom = launcher["config"]["customRunLauncher"]
    assert (custom["module"], custom["class"]) == ("dagster_k8s", "K8sRunLauncher")
    return custom["config"]


IDS = AnalysisIds(plate_acquisition_id=3, analysis_id=5, sub_id=8)


def options(**meta) -> SubAnalysisOptions:
    return SubAnalysisOptions.from_meta({"pipeline_file": "x.cppipe", "cp_version": "5.0.0.dev784", **meta})


NAMESPACE = "cpp"
# the references `make image` tags (cpp_dagster/k8s/image.py): the demo's CellProfiler, and a
# default version that differs from it
IMAGE = image_reference(DEMO_CP_VERSION)
DEFAULT_CP_VERSION = "5.0.0.default"
DEFAULT_IMAGE = image_reference(DEFAULT_CP_VERSION)
DEFAULT_BATCH_RESOURCES = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}
BIN = Path(sys.executable).parent


@contextmanager
def standin_cluster(
    pg_server,
    tmp_path,
    monkeypatch,
    nas_root: Path,
    secrets: dict[str, dict[str, str]],
    launcher_secrets: tuple[str, ...] = (),
    pod_settings: dict | None = None,
):
    """Stand-in API + a Dagster instance whose run launcher is K8sRunLauncher. The
    cluster holds `secrets` (name -> env); the run launcher passes `launcher_secrets` to
    every pod (none, as in the Helm values), and each step pod's own layer adds the
    Secret it needs (the pod settings, with `pod_settings` set on top)."""
    pods = yaml.safe_load((PROJECT_ROOT / "deploy" / "k8s-pods.yaml").read_text())
    # A default CellProfiler and default batch resources that differ from the demo
    # analysis's, so a test sees which of the two a pod got.
    pods["images"] = {DEMO_CP_VERSION: IMAGE, DEFAULT_CP_VERSION: DEFAULT_IMAGE}
    pods["default_cp_version"] = DEFAULT_CP_VERSION
    pods["resources"]["default"] = DEFAULT_BATCH_RESOURCES
    pods["training"]["image"] = IMAGE
    pods.update(pod_settings or {})
    pods_file = tmp_path / "k8s-pods.yaml"
    pods_file.write_text(yaml.safe_dump(pods))
    home = tmp_path / "dagster_home"
    home.mkdir()
    base_env = {"PATH": f"{BIN}:{os.environ['PATH']}", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}
    with KubeStandIn(
        base_env=base_env, secrets=secrets, cwd=PROJECT_ROOT, namespace=NAMESPACE, workdir=tmp_path / "standin"
    ) as k8s:
        env_vars = {
            "CPP_EXECUTOR": "k8s",
            "CPP_K8S_CONFIG": str(pods_file),
            "CPP_NAS_ROOT": str(nas_root),
            "CPP_CELLPROFILER": str(PROJECT_ROOT / ".venv-cp" / "bin" / "cellprofiler"),
            "CPP_BATCH_RETRY_DELAY_S": "1",
            "DAGSTER_PG_URL": sqlalchemy_url(new_database(pg_server, "dagster")),
        }
        (home / "dagster.yaml").write_text(
            yaml.safe_dump(
                {
                    "storage": {"postgres": {"postgres_url": {"env": "DAGSTER_PG_URL"}}},
                    "run_coordinator": {"module": "dagster.core.run_coordinator", "class": "DefaultRunCoordinator"},
                    "run_launcher": {
                        "module": "dagster_k8s",
                        "class": "K8sRunLauncher",
                        "config": {
                            "service_account_name": "cpp-dagster",
                            "instance_config_map": "dagster-instance",
                            "dagster_home": str(home),
                            "job_image": IMAGE,
                            "job_namespace": NAMESPACE,
                            "load_incluster_config": False,
                            "kubeconfig_file": k8s.kubeconfig_path,
                            "env_secrets": [name for name in launcher_secrets if name in secrets],
                            "env_vars": [f"{k}={v}" for k, v in env_vars.items()],
                            # as deployed: nothing of a run's tags reaches the run-worker pod
                            **{key: helm_run_launcher()[key] for key in RUN_WORKER_ALLOW_LISTS},
                        },
                    },
                    "concurrency": {"pools": {"default_limit": 4}},
                    "telemetry": {"enabled": False},
                }
            )
        )
        for key, value in {**env_vars, "DAGSTER_HOME": str(home)}.items():
            monkeypatch.setenv(key, value)
        with dg.DagsterInstance.get() as instance:  # from DAGSTER_HOME, as every pod's process does
            yield k8s, instance


def launch(
    instance, key: str, job: str = "analysis_job", run_config: dict | None = None, tags: dict[str, str] | None = None
) -> None:
    """`dagster job launch`: the run is created from the code location and handed to the
    instance's run launcher (K8sRunLauncher), as a launch from the UI (no run config) or
    by the daemon for a sensor's request (its run config and tags) would be."""
    subprocess.run(
        [
            str(BIN / "dagster"),
            "job",
            "launch",
            "-w",
            str(PROJECT_ROOT / "workspace.yaml"),
            "-j",
            job,
            "--tags",
            json.dumps({**(tags or {}), "dagster/partition": key}),
            "--config-json",
            json.dumps(run_config or {}),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=PROJECT_ROOT,
    )


def wait_for_run(instance, key: str, timeout: float = 600, on_poll=None, poll_s: float = 1) -> dg.DagsterRun:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": key}), limit=1)
        if runs and runs[0].is_finished:
            return runs[0]
        if on_poll:
            on_poll()
        time.sleep(poll_s)
    raise TimeoutError(f"run of {key} did not finish")


def step_layer(executor_config: dict, op: str) -> dict:
    """The pod config a step gets from the k8s executor's config: `per_step_k8s_config[op]`
    merged onto `step_k8s_config`, as dagster-k8s's step handler merges them."""
    from cpp_dagster.k8s.executor import merge_layers

    return merge_layers(executor_config.get("step_k8s_config"), executor_config["per_step_k8s_config"].get(op))


def step_job(layer: dict, op: str, launcher_secrets: tuple[str, ...] = ()) -> dict:
    """The step Job dagster-k8s's own builder makes with this pod-config layer (on top of
    the run launcher's Secrets), as the API server receives it."""
    import kubernetes
    from dagster_k8s.job import DagsterK8sJobConfig, UserDefinedDagsterK8sConfig, construct_dagster_k8s_job

    job = construct_dagster_k8s_job(
        job_config=DagsterK8sJobConfig(
            job_image=image_reference("5.0.0.code-location"),
            dagster_home="/opt/dagster",
            env_secrets=list(launcher_secrets),
        ),
        args=["dagster", "api", "execute_step"],
        job_name=f"dagster-step-{op.replace('_', '-')}",
        user_defined_k8s_config=UserDefinedDagsterK8sConfig.from_dict(layer),
        component="step_worker",
        labels={"dagster/op": op},
    )
    return kubernetes.client.ApiClient().sanitize_for_serialization(job)


def secrets_of(job: dict) -> list[str]:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return [e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e]


def assert_least_privilege(job: dict) -> None:
    """A step pod with no service-account token, the RuntimeDefault seccomp profile,
    non-root without privilege escalation or capabilities, a read-only root filesystem
    and every place its programs write under the /tmp emptyDir."""
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["capabilities"] == {"drop": ["ALL"]}
    assert security["readOnlyRootFilesystem"] is True and security["runAsNonRoot"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert any(v["name"] == "tmp" and "emptyDir" in v for v in pod["volumes"])
    env = {e["name"]: e.get("value") for e in container["env"]}
    for name in ("TMPDIR", "HOME", "MPLCONFIGDIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME"):
        assert env[name].startswith("/tmp"), name


@contextmanager
def analysis_cluster(lab, pg_server, tmp_path, monkeypatch, pod_settings: dict | None = None):
    """The stand-in cluster of the analysis tests: imagedb's Secret for the analysis pods,
    and a training Secret they must never get."""
    secrets = {
        "imagedb-credentials": {"CPP_IMAGEDB_URL": lab.db.url},
        "training-credentials": {"CPP_TRAINING_DB_URL": "postgresql://must-not-reach@analysis-pods/x"},
    }
    with standin_cluster(
        pg_server, tmp_path, monkeypatch, lab.settings.nas_root, secrets, pod_settings=pod_settings
    ) as found:
        yield found


def submit_demo(
    lab, instance, barcode: str, wells=("B02", "C03"), sites=(1,), batch_size: int = 1, **sub_analysis
) -> tuple[dg.RunRequest, int]:
    """The demo analysis (by default two batches of one image set; `sub_analysis`
    overrides its options) on a new plate, and the sensor's run request for it."""
    from dagster_helpers import tick

    from cpp_dagster.demo.register import demo_pipeline_meta, register_plate

    acq = register_plate(lab.db, lab.settings, barcode=barcode, wells=list(wells), sites=list(sites), seed=11)
    meta = demo_pipeline_meta(batch_size=batch_size)
    meta["sub_analyses"][0].update(sub_analysis)
    lab.db.put_pipeline("k8s-demo", meta)
    sub_id = lab.db.submit_analysis(acq, "k8s-demo").sub_ids[0]
    (request,) = tick(instance).run_requests
    return request, sub_id


def sensor_run_config(lab, sub_id: int) -> dict:
    """The run config the sensor gives a sub-analysis's run on Kubernetes."""
    from cpp_dagster.k8s.pod_config import PodSettings, analysis_run_config
    from cpp_dagster.settings import load_settings

    sub = lab.db.sub_analysis(sub_id)
    return analysis_run_config(
        PodSettings.load(load_settings().launch.k8s_config),
        SubAnalysisOptions.from_meta(sub.meta),
        AnalysisIds(sub.plate_acquisition_id, sub.analysis_id, sub.sub_id),
    )


def step_jobs(k8s, fragment: str) -> list[dict]:
    """The Jobs of the steps whose op name contains `fragment`."""
    return [j for j in k8s.jobs if fragment in j["metadata"]["labels"].get("dagster/op", "")]
