"""Per-analysis pod configuration (pure), the executor switch, and the deployment files."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from k8s_cluster import assert_least_privilege, secrets_of, step_job
from k8s_standin import SCHEMA_VERSION

from cpp_dagster.config import PROJECT_ROOT
from cpp_dagster.k8s.pod_config import AnalysisIds, PodConfigError, PodSettings, step_config
from cpp_dagster.planning import SubAnalysisOptions

EXAMPLE = PROJECT_ROOT / "deploy" / "k8s-pods.yaml"
IDS = AnalysisIds(plate_acquisition_id=3, analysis_id=5, sub_id=8)


def options(**meta) -> SubAnalysisOptions:
    return SubAnalysisOptions.from_meta({"pipeline_file": "x.cppipe", "cp_version": "5.0.0.dev784", **meta})


@pytest.fixture
def settings() -> PodSettings:
    return PodSettings.load(EXAMPLE)


@pytest.mark.parametrize("sub_type, memory", [("qc", "4Gi"), ("icf", "8Gi"), ("features", "8Gi"), (None, "8Gi")])
def test_batch_resources_follow_sub_type(settings, sub_type, memory):
    config = step_config(settings, options(sub_type=sub_type), IDS, "run_cellprofiler")
    resources = config["container_config"]["resources"]
    assert resources == settings.resources[sub_type or "default"]
    assert resources["limits"]["memory"] == memory


def test_job_timeout_is_the_batch_deadline_with_start_up_grace(settings):
    config = step_config(settings, options(job_timeout=600), IDS, "run_cellprofiler")
    assert config["job_spec_config"] == {"active_deadline_seconds": 600 + settings.startup_grace_seconds}
    assert "job_spec_config" not in step_config(settings, options(), IDS, "merge_feature_tables")


def test_priority_one_gets_the_high_priority_class(settings):
    high = step_config(settings, options(priority=1), IDS, "run_cellprofiler")
    normal = step_config(settings, options(priority=2), IDS, "run_cellprofiler")
    assert high["pod_spec_config"]["priority_class_name"] == "cpp-high"
    assert "priority_class_name" not in normal["pod_spec_config"]


def test_nas_mounts_tmp_security_and_placement(settings):
    config = step_config(settings, options(), IDS, "run_cellprofiler")
    container, pod = config["container_config"], config["pod_spec_config"]
    mounts = {m["name"]: m for m in container["volume_mounts"]}
    assert mounts["nas-images"]["read_only"] is True
    assert mounts["nas-results"]["read_only"] is False and mounts["cpp-work"]["read_only"] is False
    assert mounts["tmp"]["mount_path"] == "/tmp"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["nas-images"]["persistent_volume_claim"] == {"claim_name": "nas-images", "read_only": True}
    assert volumes["tmp"]["empty_dir"]["medium"] == "Memory"
    assert pod["security_context"]["run_as_non_root"] is True and pod["security_context"]["run_as_user"] == 1000
    assert pod["node_selector"] == {"cpp-dagster/node": "true"}
    assert {"name": "OMP_NUM_THREADS", "value": "1"} in container["env"]
    assert config["pod_template_spec_metadata"]["labels"]["cpp-dagster/sub-analysis"] == "8"


@pytest.mark.parametrize("op", ["plan_batches", "run_cellprofiler", "merge_feature_tables", "well_profiles"])
def test_analysis_step_pods_get_least_privilege_and_only_the_imagedb_secret(settings, op):
    job = step_job(step_config(settings, options(), IDS, op), op)
    kubernetes_validate.validate(job, SCHEMA_VERSION, strict=True)
    assert_least_privilege(job)
    assert secrets_of(job) == ["imagedb-credentials"]  # never the training credentials
    pod = job["spec"]["template"]["spec"]
    assert {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}} in pod["volumes"]


def test_the_service_account_token_stays_off_over_the_run_workers_setting(settings):
    """The Helm values turn the token on for the run worker (it creates the step Jobs);
    dagster-k8s merges that into every step pod, and the step layer turns it off again."""
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import UserDefinedDagsterK8sConfig

    run_worker = K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(
        {"pod_spec_config": {"automount_service_account_token": True}}))
    layer = step_config(settings, options(), IDS, "run_cellprofiler")
    merged = run_worker.merge(K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(layer)))
    assert merged.run_k8s_config.pod_spec_config["automount_service_account_token"] is False


def test_pod_settings_can_use_the_nodes_disk_for_tmp_and_other_secret_names(settings):
    changed = PodSettings.from_mapping({**yaml.safe_load(EXAMPLE.read_text()), "tmp_medium": "",
                                        "imagedb_secret": "lab-imagedb"})
    job = step_job(step_config(changed, options(), IDS, "run_cellprofiler"), "run_cellprofiler")
    kubernetes_validate.validate(job, SCHEMA_VERSION, strict=True)
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}} in job["spec"]["template"]["spec"]["volumes"]
    assert secrets_of(job) == ["lab-imagedb"]


def test_image_follows_cp_version_and_unknown_versions_are_refused(settings):
    config = step_config(settings, options(), IDS, "plan_batches")
    assert config["container_config"]["image"] == "registry.example.org/cpp-dagster:0.1.0-cp5.0.0.dev784"
    assert config["container_config"]["resources"] == settings.step_resources["plan_batches"]
    with pytest.raises(PodConfigError, match=r"cp_version '4.2.8' has no container image configured \(known: 5.0.0.dev784\)"):
        step_config(settings, options(cp_version="4.2.8"), IDS, "run_cellprofiler")
    defaulted = step_config(settings, SubAnalysisOptions.from_meta({"pipeline_file": "x"}), IDS, "run_cellprofiler")
    assert defaulted["container_config"]["image"].endswith("cp5.0.0.dev784")


def test_pod_settings_reject_unknown_keys(tmp_path):
    bad = tmp_path / "pods.yaml"
    bad.write_text(yaml.safe_dump({"images": {}, "resource": {}}))
    with pytest.raises(PodConfigError, match="unknown keys.*resource"):
        PodSettings.load(bad)


@pytest.mark.parametrize("kind, name", [("k8s", "k8s"), ("multiprocess", "multiprocess"), (None, "multiprocess")])
def test_executor_is_chosen_by_deployment_for_every_way_a_run_starts(kind, name):
    """The executor is on the Definitions, so the sensor's job and the implicit asset job
    (UI Materialize, backfills) both use it."""
    env = {k: v for k, v in os.environ.items() if k != "CPP_EXECUTOR"}
    if kind:
        env["CPP_EXECUTOR"] = kind
    code = ("from cpp_dagster.definitions import defs\n"
            "print(defs.resolve_job_def('analysis_job').executor_def.name,"
            " defs.resolve_implicit_global_asset_job_def().executor_def.name)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [name, name]


def test_helm_values_pass_the_official_chart_schema():
    # the chart's schema and the offline validator are vendored (tests/fixtures/dagster-helm/SOURCE.md)
    tool = Path(__file__).parent / "fixtures" / "dagster-helm" / "validate_helm_values.py"
    out = subprocess.run([sys.executable, str(tool), str(PROJECT_ROOT / "helm-values.yaml")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in out.stdout


def test_helm_values_wire_the_project_in():
    values = yaml.safe_load((PROJECT_ROOT / "helm-values.yaml").read_text())
    deployment = values["dagster-user-deployments"]["deployments"][0]
    env = {e["name"]: e["value"] for e in deployment["env"]}
    assert env["CPP_EXECUTOR"] == "k8s" and env["CPP_K8S_CONFIG"].startswith("/etc/cpp-dagster/")
    assert values["runLauncher"]["type"] == "K8sRunLauncher"


def test_helm_values_keep_each_secret_where_it_is_needed_and_set_security_contexts():
    values = yaml.safe_load((PROJECT_ROOT / "helm-values.yaml").read_text())
    deployment = values["dagster-user-deployments"]["deployments"][0]
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    # the code server's sensors read imagedb and the training store; none of it is copied into runs
    assert deployment["envSecrets"] == [{"name": "imagedb-credentials"}, {"name": "training-credentials"}]
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": False}
    # the run worker (and, through dagster-k8s, every step pod) gets imagedb only
    assert launcher["envSecrets"] == [{"name": "imagedb-credentials"}]
    assert "training-credentials" not in yaml.safe_dump(launcher)
    # runs get the code server's settings, not its Secrets
    assert launcher["runK8sConfig"]["containerConfig"]["env"] == deployment["env"]
    assert launcher["volumes"] == deployment["volumes"] and launcher["volumeMounts"] == deployment["volumeMounts"]
    for pod_security in (deployment["podSecurityContext"], launcher["runK8sConfig"]["podSpecConfig"]["securityContext"]):
        assert pod_security["runAsNonRoot"] is True and pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
    for container_security in (deployment["securityContext"], launcher["securityContext"]):
        assert container_security["allowPrivilegeEscalation"] is False
        assert container_security["capabilities"] == {"drop": ["ALL"]}
    assert values["postgresql"]["enabled"] is False
    assert values["concurrency"]["pools"]["defaultLimit"] > 0
    assert values["dagsterDaemon"]["runMonitoring"]["enabled"] is True
    dagster_yaml = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())
    assert dagster_yaml["concurrency"]["pools"]["default_limit"] > 0
    assert dagster_yaml["storage"]["postgres"]["postgres_url"] == {"env": "DAGSTER_PG_URL"}
