"""Model training end to end: a configuration version in the store (real PostgreSQL) ->
the sensor -> the training job (each split its own process) on the real public data set
in a real compound database -> checks -> a published model that loads back and predicts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from dagster_helpers import events, tick
from pg_databases import compound_database, new_database

from cpp_dagster.local.environment import COMPOUNDS_READER
from cpp_dagster.local.postgres import ensure_reader
from cpp_dagster.settings import PROJECT_ROOT
from cpp_dagster.training.configuration import from_dict
from cpp_dagster.training.engines.embedded import load_model
from cpp_dagster.training.registry import HttpModelRegistry, RegistryError
from cpp_dagster.training.registry_server import serve
from cpp_dagster.training.store import ConfigStore

EXAMPLES = PROJECT_ROOT / "cpp_dagster" / "training" / "examples"
SENSOR = "new_training_configurations"
CPSIGN_STANDIN = Path(__file__).resolve().parents[1] / "support" / "cpsign_standin.py"


@pytest.fixture(scope="session")
def compounds_url(pg_server) -> str:
    """A compound database holding the public data set, as `compounds` in the config,
    read as the local deployment's read-only role."""
    return compound_database(pg_server)[1]


@pytest.fixture
def lab(pg_server, compounds_url, tmp_path, monkeypatch):
    store_url = new_database(pg_server, "training")
    store = ConfigStore(store_url)
    store.apply_schema()
    for key, value in {
        "CPP_TRAINING_DB_URL": store_url,
        "CPP_DATABASE_COMPOUNDS_URL": compounds_url,
        "CPP_NAS_ROOT": str(tmp_path / "nas"),
    }.items():
        monkeypatch.setenv(key, value)
    for key in (
        "CPP_WORK_ROOT",
        "CPP_MODEL_REGISTRY_URL",
        "CPP_MODEL_REGISTRY_DIR",
        "CPP_MODEL_REGISTRY_TOKEN",
        "CPP_TRAINING_ENGINE",
        "CPP_CPSIGN_COMMAND",
        "CPP_CPSIGN_LICENSE",
    ):
        monkeypatch.delenv(key, raising=False)
    return store


def example(name: str = "solubility.json", **changes) -> dict:
    raw = json.loads((EXAMPLES / name).read_text())
    raw.update(changes)
    return raw


def train(instance: dg.DagsterInstance, store: ConfigStore, raw: dict) -> dg.DagsterRun:
    """Add the configuration, let the sensor request its run, run it as the daemon would."""
    from cpp_dagster.definitions import training_job_def

    added = store.add(from_dict(raw))
    assert added.created
    (request,) = tick(instance, SENSOR, cursor=str(added.version.id - 1)).run_requests
    with dg.execute_job(
        dg.reconstructable(training_job_def),
        instance=instance,
        raise_on_error=False,
        tags={**request.tags, "dagster/partition": request.partition_key},
    ) as result:
        return instance.get_run_by_id(result.run_id)


def checks(instance, run_id: str) -> dict[str, dg.AssetCheckEvaluation]:
    return {
        e.event_specific_data.check_name: e.event_specific_data
        for e in events(instance, run_id, dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    }


def failure(instance, run_id: str) -> str:
    """The step failures' messages with their causes, as the UI shows them."""
    lines = []
    for event in events(instance, run_id, dg.DagsterEventType.STEP_FAILURE):
        error = event.event_specific_data.error
        while error is not None:
            lines.append(error.message)
            error = error.cause
    return "\n".join(lines)


def materialized(instance, run_id: str) -> set[str]:
    return {
        e.event_specific_data.materialization.asset_key.to_user_string()
        for e in events(instance, run_id, dg.DagsterEventType.ASSET_MATERIALIZATION)
    }


def test_a_new_version_requests_one_run_and_unchanged_content_none(lab, dagster_instance):
    first = tick(dagster_instance, SENSOR)
    assert first.run_requests == [] and first.cursor is None  # an empty store: nothing to do

    added = lab.add(from_dict(example()))
    assert added.created
    data = tick(dagster_instance, SENSOR)
    (request,) = data.run_requests
    assert request.partition_key == added.version.partition_key == request.run_key
    assert (
        request.partition_key.startswith("solubility-")
        and request.tags["cpp-dagster/config-version"] == added.version.version
    )
    assert dagster_instance.has_dynamic_partition("training_config_version", request.partition_key)
    assert tick(dagster_instance, SENSOR, cursor=data.cursor).run_requests == []  # a repeated tick: nothing

    # The same content, formatted differently, keys reordered, a default spelled out: no new version.
    same = example()
    same = {"max_skipped_fraction": 0.05, **dict(reversed(list(same.items())))}
    again = lab.add(from_dict(json.loads(json.dumps(same, indent=4))))
    assert not again.created and again.version.id == added.version.id
    assert tick(dagster_instance, SENSOR, cursor=data.cursor).run_requests == []

    changed = lab.add(from_dict(example(model={**example()["model"], "significance": 0.1})))
    assert changed.created
    (second,) = tick(dagster_instance, SENSOR, cursor=data.cursor).run_requests
    assert second.partition_key == changed.version.partition_key != request.partition_key


def test_default_engine_trains_on_the_public_set_and_the_published_model_predicts(
    lab, dagster_instance, tmp_path, monkeypatch
):
    token = "registry-test-token"
    server = serve(tmp_path / "registry", port=0, token=token, background=True)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("CPP_MODEL_REGISTRY_URL", url)
    monkeypatch.setenv("CPP_MODEL_REGISTRY_TOKEN", token)
    try:
        run = train(dagster_instance, lab, example())
        assert run.status == dg.DagsterRunStatus.SUCCESS, failure(dagster_instance, run.run_id)
        key = run.tags["dagster/partition"]

        # one step per split, each its own process
        split_steps = {
            e.step_key
            for e in events(dagster_instance, run.run_id, dg.DagsterEventType.STEP_SUCCESS)
            if "train_split" in e.step_key
        }
        assert split_steps == {"split_models.train_split[split_0]", "split_models.train_split[split_1]"}

        found = checks(dagster_instance, run.run_id)
        counts = found["compound_counts"]
        assert counts.passed and counts.metadata["rows"].value == 1282 and counts.metadata["skipped"].value == 0
        assert counts.metadata["held_out"].value == 257  # test_fraction 0.2
        validity = found["validity"]
        assert validity.passed, validity.description
        assert validity.metadata["coverage"].value >= 0.8 - 0.05
        assert found["efficiency"].passed
        assert 0 < found["efficiency"].metadata["median interval width"].value < 4  # log S units

        # published over HTTP to the project's registry; loads back and predicts
        registry = HttpModelRegistry(url, token=token)
        meta = registry.metadata("solubility", key)
        assert meta["config_version"] == lab.get(key).version and meta["engine"] == "embedded"
        assert meta["evaluation"]["coverage"] == validity.metadata["coverage"].value
        model = load_model(registry.fetch("solubility", key, tmp_path))
        predictions = model.predict(["CCO", "CCCCCCCCCCCCCCCC", "c1ccc2ccccc2c1"])
        assert (predictions["lower"] < predictions["prediction"]).all() and (
            predictions["prediction"] < predictions["upper"]
        ).all()
        # ethanol is far more soluble than hexadecane (measured log S about 1.1 and -7.8)
        assert predictions["prediction"][0] > predictions["prediction"][1] + 2
        with pytest.raises(RegistryError, match="401"):
            HttpModelRegistry(url, token="wrong").metadata("solubility", key)
    finally:
        server.shutdown()


def test_classification_is_reproducible_and_published_to_the_folder_registry(lab, dagster_instance, tmp_path):
    raw = example("solubility-class.json")
    first = train(dagster_instance, lab, raw)
    assert first.status == dg.DagsterRunStatus.SUCCESS, failure(dagster_instance, first.run_id)
    key = first.tags["dagster/partition"]
    found = checks(dagster_instance, first.run_id)
    assert found["validity"].passed and found["efficiency"].passed
    set_size = found["efficiency"].metadata["mean prediction-set size"].value
    assert 0.8 <= set_size <= 2.0  # three classes: informative sets, not all three

    published = tmp_path / "nas" / "models" / "solubility-class" / key
    model = load_model(next(published.glob("model.*")))
    before = model.predict(["CCO", "c1ccccc1Cl"])
    assert set(before.columns) >= {"p_low", "p_medium", "p_high", "prediction_set"}
    # the same from the command line, through the deployment's registry
    cli = subprocess.run(
        [
            str(PROJECT_ROOT / ".venv" / "bin" / "cpp-dagster"),
            "train",
            "predict",
            "--model",
            "solubility-class",
            "--version",
            key,
            "CCO",
            "c1ccccc1Cl",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rows = [json.loads(line) for line in cli.stdout.splitlines()]
    assert [r["smiles"] for r in rows] == ["CCO", "c1ccccc1Cl"]
    assert [r["p_high"] for r in rows] == pytest.approx(list(before["p_high"]))

    # Re-running the version (a re-execution, as from the UI) gives the same model.
    from cpp_dagster.definitions import training_job_def

    with dg.execute_job(
        dg.reconstructable(training_job_def), instance=dagster_instance, tags={"dagster/partition": key}
    ) as again:
        assert again.success
    assert (
        checks(dagster_instance, again.run_id)["validity"].metadata["coverage"].value
        == found["validity"].metadata["coverage"].value
    )
    after = load_model(next(published.glob("model.*"))).predict(["CCO", "c1ccccc1Cl"])
    assert after.drop(columns="prediction_set").equals(before.drop(columns="prediction_set"))


@pytest.fixture
def bad_compounds(pg_server, monkeypatch) -> str:
    """A compound database with mostly unparsable structures and a missing label."""
    import psycopg2

    url = new_database(pg_server, "badchem")
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE compounds (id int, smiles text, logd double precision)")
        rows = [(i, "C" * (i % 7 + 1) + "O", 0.1 * i) for i in range(1, 31)]
        rows += [(100 + i, f"C1CC(N{i}", 1.0) for i in range(10)]  # unclosed ring and branch
        rows += [(200, "CCN", None)]
        cur.executemany("INSERT INTO compounds VALUES (%s, %s, %s)", rows)
    conn.close()
    reader = ensure_reader(url, COMPOUNDS_READER, ["compounds"])
    monkeypatch.setenv("CPP_DATABASE_BADCHEM_URL", reader)
    return url


@pytest.mark.parametrize(
    "changes, fragments",
    [
        (
            {"query": "SELECT id, smiles, solubility AS label FROM compounds WHERE solubility > 100"},
            ["the query returned no rows from 'compounds'"],
        ),
        ({"query": "SELECT id, smiles FROM compounds"}, ["the query must return columns 'smiles' and 'label'"]),
        ({"query": "SELECT smiles, label FROM no_such_table"}, ["the query failed on 'compounds'", "no_such_table"]),
        (
            {"database": "chembl"},
            ["cannot reach compound database 'chembl'", "postgresql://reader:***@127.0.0.1:9/chembl"],
        ),
        (
            {"database": "unknown_db"},
            ["compound database 'unknown_db' is not configured: set CPP_DATABASE_UNKNOWN_DB_URL"],
        ),
        (
            {"database": "badchem", "query": "SELECT id, smiles, logd AS label FROM compounds"},
            ["compound_counts", "11 of 41 rows skipped"],
        ),
    ],
    ids=["no-rows", "no-label-column", "bad-sql", "unreachable", "not-configured", "unparsable-smiles"],
)
def test_bad_input_fails_the_run_clearly_and_publishes_nothing(
    lab, dagster_instance, tmp_path, monkeypatch, bad_compounds, changes, fragments
):
    monkeypatch.setenv("CPP_DATABASE_CHEMBL_URL", "postgresql://reader:s3cret@127.0.0.1:9/chembl")
    run = train(dagster_instance, lab, example(**changes))
    assert run.status == dg.DagsterRunStatus.FAILURE
    message = failure(dagster_instance, run.run_id)
    for fragment in fragments:
        assert fragment in message, message
    assert "s3cret" not in message
    assert "published_model" not in materialized(dagster_instance, run.run_id)
    assert not (tmp_path / "nas" / "models").exists()
    if "badchem" in json.dumps(changes):
        counts = checks(dagster_instance, run.run_id)["compound_counts"]
        assert not counts.passed
        assert counts.metadata["skipped_reasons"].value == {"unparsable SMILES": 10, "missing label": 1}


def use_cpsign_standin(tmp_path: Path, monkeypatch, **env: str) -> Path:
    """The CPSign engine, with the stand-in of its CLI (tests/support/cpsign_standin.py) as the
    command and a license file it checks; `env` tunes the stand-in. Returns the file
    where the stand-in records its command lines."""
    log, license_file = tmp_path / "cpsign-calls.jsonl", tmp_path / "cpsign.license"
    license_file.write_text("licensed to the lab")
    for key, value in {
        "CPP_TRAINING_ENGINE": "cpsign",
        "CPP_CPSIGN_LICENSE": str(license_file),
        "CPP_CPSIGN_COMMAND": f"{sys.executable} {CPSIGN_STANDIN}",
        "CPSIGN_STANDIN_LOG": str(log),
        "CPSIGN_STANDIN_LICENSE": str(license_file),
        **env,
    }.items():
        monkeypatch.setenv(key, value)
    return log


def test_cpsign_engine_runs_its_cli_and_a_failed_split_publishes_nothing(lab, dagster_instance, tmp_path, monkeypatch):
    log = use_cpsign_standin(tmp_path, monkeypatch, CPSIGN_STANDIN_FAIL_SPLITS="4", CPP_SPLIT_RETRIES="0")
    raw = example(model={**example()["model"], "scorer": "LinearSVR"})
    run = train(dagster_instance, lab, raw)
    assert run.status == dg.DagsterRunStatus.FAILURE
    message = failure(dagster_instance, run.run_id)
    assert "split 2 of 2 failed: CPSign exited with code 3" in message and "LIBLINEAR did not converge" in message
    assert "published_model" not in materialized(dagster_instance, run.run_id)
    assert not (tmp_path / "nas" / "models").exists()

    calls = [json.loads(line) for line in log.read_text().splitlines()]
    programs = sorted(c[0] for c in calls)
    assert programs == ["precompute", "train", "train"]  # the aggregate never ran
    precompute = next(c for c in calls if c[0] == "precompute")
    assert precompute[precompute.index("--model-type") + 1] == "regression"
    assert precompute[precompute.index("--train-data") + 1 : precompute.index("--train-data") + 3][0] == "CSV"
    trains = sorted((c for c in calls if c[0] == "train"), key=lambda c: c[c.index("--splits") + 1])
    # models 0..3 spread over two splits; CPSign numbers them from 1
    assert [c[c.index("--splits") + 1] for c in trains] == ["1,3", "2,4"]
    for c in trains:
        assert c[c.index("--predictor-type") + 1] == "acp-regression"
        assert c[c.index("--scorer") + 1] == "LinearSVR" and c[c.index("--ncm") + 1] == "AbsDiff"
        assert c[c.index("--data-set") + 1].endswith("precomputed.jar")
        assert "numSamples=4" in c[c.index("--sampling-strategy") + 1]
    # a scorer CPSign does not have is a clear error before any command runs
    log.unlink()
    run = train(dagster_instance, lab, example(seed=7))
    assert run.status == dg.DagsterRunStatus.FAILURE
    assert "model.scorer 'RandomForest' is not available with the CPSign engine" in failure(
        dagster_instance, run.run_id
    )
    assert not log.exists()


def test_cpsign_model_is_published_only_when_its_coverage_passes_the_validity_check(
    lab, dagster_instance, tmp_path, monkeypatch
):
    log = use_cpsign_standin(tmp_path, monkeypatch, CPSIGN_STANDIN_COVERAGE="0.9")
    models = tmp_path / "nas" / "models" / "solubility"
    raw = example(model={**example()["model"], "scorer": "LinearSVR"})

    valid = train(dagster_instance, lab, raw)
    assert valid.status == dg.DagsterRunStatus.SUCCESS, failure(dagster_instance, valid.run_id)
    validity = checks(dagster_instance, valid.run_id)["validity"]
    assert validity.passed and validity.metadata["coverage"].value == pytest.approx(0.9, abs=0.01)
    assert "published_model" in materialized(dagster_instance, valid.run_id)
    assert [p.name for p in models.iterdir()] == [valid.tags["dagster/partition"]]
    assert "predict" in {json.loads(line)[0] for line in log.read_text().splitlines()}

    # intervals that miss the held-out labels half the time: the check fails, the run says
    # why, and nothing is published for this version
    monkeypatch.setenv("CPSIGN_STANDIN_COVERAGE", "0.5")
    invalid = train(dagster_instance, lab, {**raw, "seed": 7})
    assert invalid.status == dg.DagsterRunStatus.FAILURE
    validity = checks(dagster_instance, invalid.run_id)["validity"]
    assert not validity.passed and validity.metadata["minimum"].value == pytest.approx(0.75)
    message = failure(dagster_instance, invalid.run_id)
    assert (
        "check validity failed: coverage 0.498 on 257 held-out compounds" in message
        and "the model is not published" in message
    )
    assert "published_model" not in materialized(dagster_instance, invalid.run_id)
    assert [p.name for p in models.iterdir()] == [valid.tags["dagster/partition"]]
