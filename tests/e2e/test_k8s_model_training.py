"""A model-training run on "Kubernetes": the real K8sRunLauncher and k8s_job_executor
against the local stand-in of the Kubernetes API. Every step, each split included, is
its own Job with the training pod settings (the k8s executor's defaults, by op name);
the credentials come from Secrets; the model is trained and published."""

from __future__ import annotations

import json

import dagster as dg
import kubernetes_validate
import pytest
from dagster_helpers import tick
from k8s_cluster import IMAGE, assert_least_privilege, launch, secrets_of, standin_cluster, wait_for_run
from k8s_standin import SCHEMA_VERSION
from pg_databases import compound_database, new_database

from cpp_dagster.k8s.pod_config import training_run_config
from cpp_dagster.settings import PROJECT_ROOT
from cpp_dagster.training.configuration import from_dict
from cpp_dagster.training.store import ConfigStore

EXAMPLE = PROJECT_ROOT / "cpp_dagster" / "training" / "examples" / "solubility.json"


@pytest.fixture
def training_cluster(pg_server, tmp_path, monkeypatch):
    store_url, compounds_url = new_database(pg_server, "training"), compound_database(pg_server)[1]
    store = ConfigStore(store_url)
    store.apply_schema()
    credentials = {"CPP_TRAINING_DB_URL": store_url, "CPP_DATABASE_COMPOUNDS_URL": compounds_url}
    for key in ("CPP_MODEL_REGISTRY_URL", "CPP_MODEL_REGISTRY_DIR", "CPP_TRAINING_ENGINE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in credentials.items():  # the sensor runs here, in the test's process
        monkeypatch.setenv(key, value)
    with standin_cluster(
        pg_server,
        tmp_path,
        monkeypatch,
        tmp_path / "nas",
        {
            "training-credentials": credentials,
            "imagedb-credentials": {"CPP_IMAGEDB_URL": "postgresql://unused@imagedb/x"},
        },
    ) as (k8s, instance):
        yield k8s, instance, store


def op_of(job: dict) -> str:
    """The op of a step Job: its `dagster/op` label is the step key, made label-safe
    (`split_models.train_split[split_0]` -> `split_models.train_split-split_0`)."""
    return job["metadata"]["labels"]["dagster/op"].rsplit(".", 1)[-1].split("-")[0]


def test_every_training_step_and_split_is_its_own_job_and_the_model_is_published(training_cluster, tmp_path):
    k8s, instance, store = training_cluster
    added = store.add(from_dict(json.loads(EXAMPLE.read_text())))
    (request,) = tick(instance, "new_training_configurations", cursor=str(added.version.id - 1)).run_requests
    key = request.partition_key
    # the pods' settings are the executor's defaults; the run config only adds the workflow label
    launch(
        instance, key, job="model_training", run_config=training_run_config(added.version.workflow), tags=request.tags
    )
    run = wait_for_run(instance, key)
    assert run.status == dg.DagsterRunStatus.SUCCESS, k8s.pod_log(k8s.jobs[0]["metadata"]["name"])[-3000:]
    assert k8s.unhandled == []

    steps = [j for j in k8s.jobs if j["metadata"]["labels"]["app.kubernetes.io/component"] == "step_worker"]
    ops = sorted(op_of(j) for j in steps)
    assert ops.count("train_split") == 2  # one Job per split
    assert {"training_data", "descriptors", "aggregated_model", "published_model"} <= set(ops)
    for job in k8s.jobs:
        kubernetes_validate.validate(job, SCHEMA_VERSION, strict=True)
    for job in steps:
        pod = job["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        op = op_of(job)
        labels = job["spec"]["template"]["metadata"]["labels"]
        assert_least_privilege(job)
        assert "imagedb-credentials" not in secrets_of(job)  # a training pod never gets imagedb
        if op in ("plan_splits", "collect_split_models"):
            assert "training-credentials" not in secrets_of(job)  # they only pass file paths on
            continue  # the graph asset's bookkeeping steps: no training settings
        assert container["image"] == IMAGE
        assert labels["cpp-dagster/training-step"] == op and labels["cpp-dagster/workflow"] == "solubility"
        assert {"secretRef": {"name": "training-credentials"}} in container["envFrom"]
        assert not {"CPP_TRAINING_DB_URL", "CPP_DATABASE_COMPOUNDS_URL"} & {e["name"] for e in container["env"]}
        if op == "train_split":
            assert container["resources"] == {
                "requests": {"cpu": "2", "memory": "4Gi"},
                "limits": {"cpu": "2", "memory": "8Gi"},
            }
            assert job["spec"]["activeDeadlineSeconds"] == 21600

    published = tmp_path / "nas" / "models" / "solubility" / key
    assert (published / "model.joblib").is_file()
    meta = json.loads((published / "metadata.json").read_text())
    assert meta["config_version"] == added.version.version and meta["engine"] == "embedded"
    assert meta["evaluation"]["coverage"] >= 0.75
