"""A training run that fails because its compound database cannot be reached says so,
naming the database and its URL, and no password of the deployment appears anywhere in
the run's event log (every event, its error and causes, the run's config and tags) or
its captured logs."""

from __future__ import annotations

import psycopg2
import psycopg2.extras
from pg_databases import new_database

from cpp_dagster.training.store import ConfigStore

DB_SECRET = "chembl-S3cret"
SECRETS = [DB_SECRET, "registry-S3cret", "token-S3cret"]


def test_a_failing_training_run_logs_no_password(pg_server, dagster_instance, tmp_path, monkeypatch):
    """A key/value DSN with a quoted password (each URL form alone:
    tests/unit/test_every_password_form_is_redacted.py)."""
    url = f"host=127.0.0.1 port=9 user=reader password='{DB_SECRET} x' dbname=chembl"
    import dagster as dg

    from cpp_dagster.definitions import training_job_def

    store_url = new_database(pg_server, "training")
    ConfigStore(store_url).apply_schema()
    for key, value in {
        "CPP_TRAINING_DB_URL": store_url,
        "CPP_NAS_ROOT": str(tmp_path / "nas"),
        "CPP_DATABASE_CHEMBL_URL": url,
        "CPP_MODEL_REGISTRY_URL": "http://publisher:registry-S3cret@127.0.0.1:9/api",
        "CPP_MODEL_REGISTRY_TOKEN": "token-S3cret",
    }.items():
        monkeypatch.setenv(key, value)
    for key in ("CPP_WORK_ROOT", "CPP_MODEL_REGISTRY_DIR", "CPP_TRAINING_ENGINE"):
        monkeypatch.delenv(key, raising=False)
    config = {
        "workflow": "leak",
        "database": "chembl",
        "splits": 1,
        "model": {"predictor": "ACP_Regression"},
        "query": "SELECT smiles, activity AS label FROM compounds",
    }
    key = "leak-0123456789ab"
    conn = psycopg2.connect(store_url)
    with conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO training_config_versions (version, partition_key, workflow, config) VALUES (%s, %s, %s, %s)",
            ("0123456789ab" + "0" * 52, key, "leak", psycopg2.extras.Json(config)),
        )
    conn.close()
    dagster_instance.add_dynamic_partitions("training_config_version", [key])
    with dg.execute_job(
        dg.reconstructable(training_job_def),
        instance=dagster_instance,
        raise_on_error=False,
        tags={"dagster/partition": key},
    ) as result:
        run = dagster_instance.get_run_by_id(result.run_id)
    assert run.status == dg.DagsterRunStatus.FAILURE
    records = dagster_instance.all_logs(run.run_id)
    everything = "\n".join(
        [repr(r) for r in records]
        + [repr(run.run_config), repr(run.tags)]
        + [p.read_text(errors="replace") for p in (tmp_path / "dagster_home").rglob("*") if p.is_file()]
    )
    assert "cannot reach compound database 'chembl'" in everything
    for secret in SECRETS:
        assert secret not in everything, f"{secret!r} is in the run's event log"
