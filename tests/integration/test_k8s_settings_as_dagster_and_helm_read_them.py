"""The pod settings as the tools that consume them read them, each in a process of its own:
Dagster resolves the real Definitions' executor (the executor switch, and the sensor's
run config on Kubernetes), and the official chart's values schema validates
helm-values.yaml. The pure pod configuration is in tests/unit/test_k8s_pod_config.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from k8s_cluster import EXAMPLE, IDS, assert_least_privilege, helm_run_launcher, options, step_job, step_layer

from cpp_dagster.k8s.pod_config import PodSettings, analysis_run_config
from cpp_dagster.settings import PROJECT_ROOT


@pytest.fixture
def settings() -> PodSettings:
    return PodSettings.load(EXAMPLE)


@pytest.mark.parametrize("kind, name", [("k8s", "k8s"), ("multiprocess", "multiprocess"), (None, "multiprocess")])
def test_executor_is_chosen_by_deployment_for_every_way_a_run_starts(kind, name):
    """The executor is on the Definitions, so the sensor's job and the implicit asset job
    (UI Materialize, backfills) both use it."""
    env = {k: v for k, v in os.environ.items() if k != "CPP_EXECUTOR"}
    if kind:
        env.update(CPP_EXECUTOR=kind, CPP_K8S_CONFIG=str(EXAMPLE))
    code = (
        "from cpp_dagster.definitions import build_defs\n"
        "defs = build_defs()\n"
        "print(defs.resolve_job_def('feature_tables_job').executor_def.name,"
        " defs.resolve_implicit_global_asset_job_def().executor_def.name)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [name, name]


RESOLVE = """
import json, sys
import dagster as dg
from cpp_dagster.definitions import build_defs
defs = build_defs()

run_config = json.loads(sys.argv[1])
jobs = [defs.resolve_job_def("feature_tables_job"), defs.resolve_implicit_global_asset_job_def()]
print(json.dumps([dg.validate_run_config(job, config)["execution"]["k8s"] for job in jobs for config in ({}, run_config)]))
"""


def test_the_definitions_k8s_executor_takes_the_sensors_run_config_and_keeps_its_defaults(settings):
    """Dagster itself resolves the executor config of the real Definitions on Kubernetes,
    for the sensor's job and for the implicit asset job: a run with the sensor's run
    config gets the sub-analysis's pod settings, a run without it the defaults."""
    run_config = analysis_run_config(settings, options(sub_type="qc", priority=1), IDS)
    env = {**os.environ, "CPP_EXECUTOR": "k8s", "CPP_K8S_CONFIG": str(EXAMPLE)}
    out = subprocess.run(
        [sys.executable, "-c", RESOLVE, json.dumps(run_config)], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    resolved = json.loads(out.stdout)
    assert len(resolved) == 4
    for without, given in (resolved[0:2], resolved[2:4]):
        assert without["per_step_k8s_config"]["run_cellprofiler"]["pod_template_spec_metadata"]["labels"] == {
            "cpp-dagster/pod-settings": "defaults"
        }
        batch = step_layer(given, "run_cellprofiler")
        assert batch["container_config"]["resources"] == settings.resources["qc"]
        assert batch["pod_spec_config"]["priority_class_name"] == "cpp-high"
        assert batch["pod_template_spec_metadata"]["labels"]["cpp-dagster/sub-analysis"] == "8"
        assert step_layer(given, "train_split")["container_config"]["image"] == settings.training["image"]
        assert_least_privilege(step_job(batch, "run_cellprofiler"))


def test_helm_values_pass_the_official_chart_schema():
    # the chart's schema and the offline validator are vendored (tests/fixtures/dagster-helm/SOURCE.md)
    tool = Path(__file__).resolve().parents[1] / "fixtures" / "dagster-helm" / "validate_helm_values.py"
    out = subprocess.run(
        [sys.executable, str(tool), str(PROJECT_ROOT / "helm-values.yaml")], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in out.stdout


KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: u, user: {token: not-a-token}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


def test_the_helm_run_launcher_is_a_k8s_run_launcher_dagster_accepts_with_its_allow_lists(tmp_path):
    """The chart writes the CustomRunLauncher's config verbatim into the instance's
    dagster.yaml: Dagster itself checks every key against dagster-k8s's schema and builds
    the launcher (outside a cluster only the kubeconfig differs)."""
    import dagster as dg

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    config = {**helm_run_launcher(), "load_incluster_config": False, "kubeconfig_file": str(kubeconfig)}
    overrides = {"run_launcher": {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": config}}
    with dg.instance_for_test(overrides=overrides) as instance:
        launcher = instance.run_launcher
        assert type(launcher).__name__ == "K8sRunLauncher"
        assert launcher.only_allow_user_defined_k8s_config_fields == {}
        assert launcher.only_allow_user_defined_env_vars == []
        assert launcher.env_secrets == [] and launcher.fail_pod_on_run_failure is True
        assert launcher.instance_config_map == "cpp-dagster-instance" and launcher.job_namespace == "cpp"
