"""Training configurations (schema, clear errors, content-addressed versions) and the pods
a training run gets on Kubernetes, built by dagster-k8s's own Job builder. The commands
(`cpp-dagster train add/list`): tests/integration/test_training_config_command.py."""

from __future__ import annotations

import dataclasses
import json

import kubernetes_validate
import pytest
from k8s_cluster import assert_least_privilege, secrets_of, step_job, step_layer
from k8s_standin import SCHEMA_VERSION

from cpp_dagster.k8s.executor import with_defaults
from cpp_dagster.k8s.pod_config import (
    TRAINING_STEPS,
    PodConfigError,
    PodSettings,
    executor_defaults,
    training_run_config,
)
from cpp_dagster.settings import PROJECT_ROOT
from cpp_dagster.training.configuration import ConfigError, from_dict, parse
from cpp_dagster.training.engines.base import split_params

EXAMPLE = json.loads((PROJECT_ROOT / "cpp_dagster" / "training" / "examples" / "solubility.json").read_text())
PODS = PROJECT_ROOT / "deploy" / "k8s-pods.yaml"


def test_bad_json_says_where():
    with pytest.raises(ConfigError, match=r"cfg.json is not valid JSON: Expecting ',' delimiter at line 1, column 18"):
        parse('{"workflow": "a" "splits": 2}', source="cfg.json")


def test_every_problem_of_a_configuration_is_listed_at_once():
    raw = {**EXAMPLE, "splits": 0, "extra": 1, "model": {**EXAMPLE["model"], "predictor": "TCP", "significance": 2}}
    del raw["query"]
    with pytest.raises(ConfigError) as error:
        from_dict(raw)
    message = str(error.value)
    for fragment in (
        "unknown key 'extra'",
        "missing required key 'query'",
        "splits must be between 1 and 64",
        "model.predictor must be one of ACP_Regression, ACP_Classification; got 'TCP'",
        "model.significance must be between 0.01 and 0.5, got 2",
    ):
        assert fragment in message


def test_options_must_fit_the_predictor_and_splits_the_models():
    with pytest.raises(ConfigError, match="model.ncm must be one of InverseProbability, Margin; got 'AbsDiff'"):
        from_dict({**EXAMPLE, "model": {**EXAMPLE["model"], "predictor": "ACP_Classification"}})
    with pytest.raises(ConfigError, match=r"splits \(5\) cannot exceed model.nr_models \(4\)"):
        from_dict({**EXAMPLE, "splits": 5})
    with pytest.raises(ConfigError, match="workflow must be 1-60 characters"):
        from_dict({**EXAMPLE, "workflow": "my model/v2"})


def test_version_is_the_content_not_the_formatting():
    config = from_dict(EXAMPLE)
    respelled = parse(
        json.dumps(
            {"seed": 42, **{k: EXAMPLE[k] for k in reversed(list(EXAMPLE))}, "validity_tolerance": 0.05}, indent=3
        )
    )
    assert respelled.version == config.version and len(config.version) == 64
    assert from_dict({**EXAMPLE, "query": EXAMPLE["query"] + " WHERE id > 10"}).version != config.version
    assert config.partition_key == f"solubility-{config.version[:12]}"


def test_models_are_spread_over_the_splits():
    config = from_dict({**EXAMPLE, "splits": 3, "model": {**EXAMPLE["model"], "nr_models": 7}})
    assert [p.models for p in split_params(config)] == [(0, 3, 6), (1, 4), (2, 5)]


def test_a_configuration_holding_more_than_one_statement_is_refused_when_added():
    raw = {
        "workflow": "w",
        "database": "compounds",
        "splits": 1,
        "model": {"predictor": "ACP_Regression"},
        "query": "SELECT smiles, solubility AS label FROM compounds; DROP TABLE compounds",
    }
    with pytest.raises(ConfigError, match="exactly one SQL statement"):
        from_dict(raw)


@pytest.fixture
def pods() -> PodSettings:
    return PodSettings.load(PODS)


def _job(layer: dict, op: str) -> dict:
    return step_job(layer, op)  # the run launcher passes no Secret (helm-values.yaml)


def training_layer(pods: PodSettings, op: str, engine: str) -> dict:
    """The pod config of training step `op`: the k8s executor's defaults (a training run
    is launched without pod config)."""
    return step_layer(with_defaults(executor_defaults(pods, engine), pods, {}), op)


@pytest.mark.parametrize("op", ["descriptors", "train_split", "aggregated_model"])
def test_cpsign_steps_run_the_cpsign_image_with_the_license_secret(pods, op):
    job = _job(training_layer(pods, op, "cpsign"), op)
    kubernetes_validate.validate(job, SCHEMA_VERSION, strict=True)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == pods.training["cpsign_image"]
    assert container["resources"] == pods.training["resources"][op]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["cpsign-license"] == {"name": "cpsign-license", "secret": {"secretName": "cpsign-license"}}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["cpsign-license"] == {"name": "cpsign-license", "mountPath": "/etc/cpsign", "readOnly": True}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["CPP_CPSIGN_LICENSE"] == "/etc/cpsign/license.license"
    assert "licensed" not in json.dumps(job)  # the license's content is never in the spec
    assert pod["securityContext"]["runAsNonRoot"] is True and mounts["tmp"]["mountPath"] == "/tmp"
    assert job["spec"]["template"]["metadata"]["labels"]["cpp-dagster/training-step"] == op
    if op == "train_split":
        assert job["spec"]["activeDeadlineSeconds"] == 21600


@pytest.mark.parametrize(
    "op, engine", [("training_data", "cpsign"), ("published_model", "cpsign"), ("train_split", "embedded")]
)
def test_other_training_steps_run_the_project_image_without_the_license(pods, op, engine):
    job = _job(training_layer(pods, op, engine), op)
    kubernetes_validate.validate(job, SCHEMA_VERSION, strict=True)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["image"] == pods.training["image"]
    assert "cpsign-license" not in json.dumps(job)


def test_the_executors_defaults_give_training_steps_their_pods_by_op_name(pods):
    """A training run is launched without pod config: its steps get theirs from the k8s
    executor's defaults, by op name, for the deployment's engine."""
    config = with_defaults(executor_defaults(pods, "cpsign"), pods, {})
    assert step_layer(config, "train_split")["container_config"]["image"] == pods.training["cpsign_image"]
    assert step_layer(config, "training_data")["container_config"]["image"] == pods.training["image"]
    for op in TRAINING_STEPS:
        assert_least_privilege(_job(step_layer(config, op), op))
    embedded = with_defaults(executor_defaults(pods, "embedded"), pods, {})
    assert step_layer(embedded, "train_split")["container_config"]["image"] == pods.training["image"]
    assert "cpsign-license" not in json.dumps(embedded)
    # other ops (e.g. submit_pipeline) get the shared least-privilege layer only
    assert_least_privilege(_job(step_layer(config, "some_other_op"), "some_other_op"))
    assert "image" not in step_layer(config, "some_other_op")["container_config"]
    with pytest.raises(PodConfigError, match="training section names no cpsign_image"):
        executor_defaults(PodSettings.from_mapping({"training": {"image": "x"}}), "cpsign")
    untrained = dataclasses.replace(pods, training={})
    assert not set(TRAINING_STEPS) & set(executor_defaults(untrained, "cpsign")["per_step_k8s_config"])


def test_a_training_run_launched_with_its_workflow_labels_every_step(pods):
    config = with_defaults(executor_defaults(pods, "cpsign"), pods, training_run_config("logd")["execution"]["config"])
    for op in TRAINING_STEPS:
        job = _job(step_layer(config, op), op)
        assert job["spec"]["template"]["metadata"]["labels"]["cpp-dagster/workflow"] == "logd"
        assert job["metadata"]["labels"]["cpp-dagster/training-step"] == op
    assert step_layer(config, "train_split")["container_config"]["image"] == pods.training["cpsign_image"]


@pytest.mark.parametrize(
    "op, secrets",
    [
        ("training_data", ["training-credentials"]),
        ("descriptors", ["training-credentials"]),
        ("train_split", ["training-credentials"]),
        ("aggregated_model", ["training-credentials"]),
        ("published_model", ["training-credentials"]),
        ("plan_splits", []),
        ("collect_split_models", []),
    ],
)
def test_training_steps_get_only_the_training_secret_and_least_privilege(pods, op, secrets):
    job = step_job(training_layer(pods, op, "cpsign"), op)
    kubernetes_validate.validate(job, SCHEMA_VERSION, strict=True)
    assert secrets_of(job) == secrets  # never imagedb-credentials
    assert_least_privilege(job)
