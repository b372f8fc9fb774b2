"""Pod configuration per step (pure): the executor's defaults, a sub-analysis's run config
and how they merge; the deployment files. Dagster's own resolution of the executor and
the chart's values schema: tests/integration/test_k8s_settings_as_dagster_and_helm_read_them.py."""

from __future__ import annotations

import ast
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from k8s_cluster import (
    EXAMPLE,
    IDS,
    assert_least_privilege,
    helm_run_launcher,
    options,
    secrets_of,
    step_job,
    step_layer,
)
from k8s_standin import SCHEMA_VERSION

from cpp_dagster.analysis.planning import DEFAULT_JOB_TIMEOUT_S, SubAnalysisOptions
from cpp_dagster.demo.register import DEMO_CP_VERSION
from cpp_dagster.k8s.executor import with_defaults
from cpp_dagster.k8s.image import image_reference
from cpp_dagster.k8s.pod_config import (
    ANALYSIS_STEPS,
    PodConfigError,
    PodSettings,
    analysis_run_config,
    executor_defaults,
)
from cpp_dagster.settings import PROJECT_ROOT


@pytest.fixture
def settings() -> PodSettings:
    return PodSettings.load(EXAMPLE)


def executor_config(settings: PodSettings, run_config: dict) -> dict:
    """The executor config of a run launched with `run_config` (what the k8s executor's
    config mapping makes of it; tests/integration/test_k8s_settings_as_dagster_and_helm_read_them.py
    checks Dagster applies it)."""
    return with_defaults(
        executor_defaults(settings, "embedded"), settings, run_config.get("execution", {}).get("config", {})
    )


def sensor_layer(settings: PodSettings, op: str, **meta) -> dict:
    """The pod config of step `op` of a run the sensor launched for a sub-analysis with `meta`."""
    return step_layer(executor_config(settings, analysis_run_config(settings, options(**meta), IDS)), op)


@pytest.mark.parametrize("sub_type, memory", [("qc", "4Gi"), ("icf", "8Gi"), ("features", "8Gi"), (None, "8Gi")])
def test_batch_resources_follow_sub_type(settings, sub_type, memory):
    resources = sensor_layer(settings, "run_cellprofiler", sub_type=sub_type)["container_config"]["resources"]
    assert resources == settings.resources[sub_type or "default"]
    assert resources["limits"]["memory"] == memory


def test_job_timeout_is_the_batch_deadline_with_start_up_grace(settings):
    config = sensor_layer(settings, "run_cellprofiler", job_timeout=600)
    assert config["job_spec_config"] == {"active_deadline_seconds": 600 + settings.startup_grace_seconds}
    assert "job_spec_config" not in sensor_layer(settings, "merge_tables", job_timeout=600)


def test_priority_one_gets_the_high_priority_class(settings):
    high = sensor_layer(settings, "run_cellprofiler", priority=1)
    normal = sensor_layer(settings, "run_cellprofiler", priority=2)
    assert high["pod_spec_config"]["priority_class_name"] == "cpp-high"
    assert "priority_class_name" not in normal["pod_spec_config"]


def test_nas_mounts_tmp_security_labels_and_placement(settings):
    config = sensor_layer(settings, "run_cellprofiler")
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
    labels = config["pod_template_spec_metadata"]["labels"]
    assert (
        labels
        == {
            "cpp-dagster/pod-settings": "sub-analysis",
            "cpp-dagster/sub-type": "none",
            "cpp-dagster/plate-acquisition": "3",
            "cpp-dagster/analysis": "5",
            "cpp-dagster/sub-analysis": "8",
        }
        == config["job_metadata"]["labels"]
    )


@pytest.mark.parametrize("op", ANALYSIS_STEPS)
def test_analysis_step_pods_get_least_privilege_and_only_the_imagedb_secret(settings, op):
    job = step_job(sensor_layer(settings, op), op)
    kubernetes_validate.validate(job, SCHEMA_VERSION, strict=True)
    assert_least_privilege(job)
    assert secrets_of(job) == ["imagedb-credentials"]  # never the training credentials
    pod = job["spec"]["template"]["spec"]
    assert {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}} in pod["volumes"]


def test_the_service_account_token_stays_off_over_the_run_workers_setting(settings):
    """The Helm values turn the token on for the run worker (it creates the step Jobs);
    dagster-k8s merges that into every step pod, and the executor's layer turns it off."""
    from cpp_dagster.k8s.executor import merge_layers

    run_worker = {"pod_spec_config": {"automount_service_account_token": True}}
    merged = merge_layers(run_worker, sensor_layer(settings, "run_cellprofiler"))
    assert merged["pod_spec_config"]["automount_service_account_token"] is False


def test_pod_settings_can_use_the_nodes_disk_for_tmp_and_other_secret_names(settings):
    changed = PodSettings.from_mapping(
        {**yaml.safe_load(EXAMPLE.read_text()), "tmp_medium": "", "imagedb_secret": "lab-imagedb"}
    )
    job = step_job(sensor_layer(changed, "run_cellprofiler"), "run_cellprofiler")
    kubernetes_validate.validate(job, SCHEMA_VERSION, strict=True)
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}} in job["spec"]["template"]["spec"]["volumes"]
    assert secrets_of(job) == ["lab-imagedb"]


def test_image_follows_cp_version_and_unknown_versions_are_refused(settings):
    config = sensor_layer(settings, "plan_batches")
    assert config["container_config"]["image"] == image_reference(DEMO_CP_VERSION)
    assert config["container_config"]["resources"] == settings.step_resources["plan_batches"]
    with pytest.raises(
        PodConfigError, match=r"cp_version '4.2.8' has no container image configured \(known: 5.0.0.dev784\)"
    ):
        analysis_run_config(settings, options(cp_version="4.2.8"), IDS)
    unnamed = analysis_run_config(settings, SubAnalysisOptions.from_meta({"pipeline_file": "x"}), IDS)
    layer = step_layer(executor_config(settings, unnamed), "run_cellprofiler")
    assert layer["container_config"]["image"].endswith("cp5.0.0.dev784")


def other_defaults(settings: PodSettings) -> PodSettings:
    """The example settings with a default CellProfiler and default batch resources that
    differ from a sub-analysis's."""
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["images"]["9.9"] = "registry.example.org/cpp-dagster:cp9.9"
    raw["resources"]["default"] = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}
    return PodSettings.from_mapping({**raw, "default_cp_version": "9.9", "priority_class": "cpp-normal"})


def test_a_run_launched_without_the_sensors_run_config_gets_the_deployments_defaults(settings):
    defaults = other_defaults(settings)
    for op in ANALYSIS_STEPS:
        job = step_job(step_layer(executor_config(defaults, {}), op), op)
        kubernetes_validate.validate(job, SCHEMA_VERSION, strict=True)
        assert_least_privilege(job)
        assert secrets_of(job) == ["imagedb-credentials"]
        pod = job["spec"]["template"]["spec"]
        assert pod["containers"][0]["image"] == "registry.example.org/cpp-dagster:cp9.9"
        assert pod["priorityClassName"] == "cpp-normal"
        assert job["spec"]["template"]["metadata"]["labels"]["cpp-dagster/pod-settings"] == "defaults"
        assert "cpp-dagster/sub-analysis" not in job["spec"]["template"]["metadata"]["labels"]
    batch = step_layer(executor_config(defaults, {}), "run_cellprofiler")
    assert batch["container_config"]["resources"] == defaults.resources["default"]
    assert batch["job_spec_config"] == {"active_deadline_seconds": DEFAULT_JOB_TIMEOUT_S + 300}

    # the sensor's run config replaces what it names; the labels say which settings a pod got
    launched = step_layer(
        executor_config(defaults, analysis_run_config(defaults, options(sub_type="qc"), IDS)), "run_cellprofiler"
    )
    assert launched["container_config"]["image"].endswith("cp5.0.0.dev784")
    assert launched["container_config"]["resources"] == defaults.resources["qc"]
    assert launched["pod_template_spec_metadata"]["labels"]["cpp-dagster/pod-settings"] == "sub-analysis"


def test_a_request_given_at_launch_is_merged_onto_the_defaults(settings):
    """A run launched from the UI's Launchpad with its own request: what it names wins,
    key by key, within the grant, and the defaults stay for everything else."""
    own = {"execution": {"config": {"per_step": {"run_cellprofiler": {"resources": {"limits": {"memory": "16Gi"}}}}}}}
    batch = step_layer(executor_config(settings, own), "run_cellprofiler")
    assert batch["container_config"]["resources"] == {
        "requests": {"cpu": "1", "memory": "4Gi"},
        "limits": {"cpu": "2", "memory": "16Gi"},
    }
    assert batch["container_config"]["image"].endswith("cp5.0.0.dev784")
    assert batch["pod_spec_config"]["node_selector"] == {"cpp-dagster/node": "true"}
    assert_least_privilege(step_job(batch, "run_cellprofiler"))


def test_pod_settings_reject_unknown_keys(tmp_path):
    bad = tmp_path / "pods.yaml"
    bad.write_text(yaml.safe_dump({"images": {}, "resource": {}}))
    with pytest.raises(PodConfigError, match="unknown keys.*resource"):
        PodSettings.load(bad)


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_the_kubernetes_layer_uses_public_dagster_names_and_not_the_wiring():
    package = PROJECT_ROOT / "cpp_dagster"
    for path in package.rglob("*.py"):
        private = {name for name in _imports(path) if name.startswith("dagster._")}
        assert not private, f"{path.relative_to(PROJECT_ROOT)} imports {private}"
    for path in (package / "k8s").rglob("*.py"):
        wiring = {name for name in _imports(path) if name.startswith(("cpp_dagster.defs", "cpp_dagster.definitions"))}
        assert not wiring, f"{path.relative_to(PROJECT_ROOT)} imports {wiring}"


def test_helm_values_wire_the_project_in():
    values = yaml.safe_load((PROJECT_ROOT / "helm-values.yaml").read_text())
    deployment = values["dagster-user-deployments"]["deployments"][0]
    env = {e["name"]: e["value"] for e in deployment["env"]}
    assert env["CPP_EXECUTOR"] == "k8s" and env["CPP_K8S_CONFIG"].startswith("/etc/cpp-dagster/")
    assert helm_run_launcher()["job_namespace"] == "cpp"


def test_helm_values_keep_each_secret_where_it_is_needed_and_set_security_contexts():
    values = yaml.safe_load((PROJECT_ROOT / "helm-values.yaml").read_text())
    deployment = values["dagster-user-deployments"]["deployments"][0]
    launcher = helm_run_launcher()
    # the code server's sensors read imagedb and the training store, and notify_lab the lab's
    # notification URLs (where that Secret exists); none of it is copied into runs
    assert deployment["envSecrets"] == [
        {"name": "imagedb-credentials"},
        {"name": "training-credentials"},
        {"name": "notify-credentials", "optional": True},
    ]
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": False}
    # the run worker gets no Secret (dagster-k8s would copy it into every step pod,
    # training ones included): each step pod gets its own from the pod settings
    assert launcher["env_secrets"] == []
    assert "credentials" not in yaml.safe_dump(launcher)
    # runs get the code server's settings, not its Secrets
    assert launcher["run_k8s_config"]["container_config"]["env"] == deployment["env"]
    assert launcher["volumes"] == deployment["volumes"] and launcher["volume_mounts"] == deployment["volumeMounts"]
    # nothing of a run's tags (or the code location) shapes the run-worker pod
    assert launcher["only_allow_user_defined_k8s_config_fields"] == {}
    assert launcher["only_allow_user_defined_env_vars"] == []
    for pod_security in (
        deployment["podSecurityContext"],
        launcher["run_k8s_config"]["pod_spec_config"]["securityContext"],
    ):
        assert pod_security["runAsNonRoot"] is True and pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
    for container_security in (deployment["securityContext"], launcher["security_context"]):
        assert container_security["allowPrivilegeEscalation"] is False
        assert container_security["capabilities"] == {"drop": ["ALL"]}
    assert values["postgresql"]["enabled"] is False
    assert values["concurrency"]["pools"]["defaultLimit"] > 0
    assert values["dagsterDaemon"]["runMonitoring"]["enabled"] is True
    dagster_yaml = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())
    assert dagster_yaml["concurrency"]["pools"]["default_limit"] > 0
    assert dagster_yaml["storage"]["postgres"]["postgres_url"] == {"env": "DAGSTER_PG_URL"}


def test_the_pod_settings_name_every_op_of_an_analysis_step():
    """per_step_k8s_config is keyed by op name: the k8s layer's list is the steps' ops."""
    from cpp_dagster.defs.analysis.steps import OP_NAMES
    from cpp_dagster.k8s.pod_config import ANALYSIS_STEPS

    assert set(ANALYSIS_STEPS) == set(OP_NAMES)
