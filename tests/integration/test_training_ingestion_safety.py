"""The training ingestion query is one read-only statement with a time and a row limit,
against the real embedded PostgreSQL and the real `compounds` table (the public set).
A configuration holding more than one statement is refused before it is stored:
tests/unit/test_training_configuration_and_pods.py."""

from __future__ import annotations

import psycopg2
import psycopg2.extras
import pytest
from pg_databases import compound_database, new_database

from cpp_dagster.service_settings import TrainingQueryLimits
from cpp_dagster.settings import load_settings
from cpp_dagster.training.compounds import CompoundDatabaseError, run_query

ROWS = 1282


@pytest.fixture
def compounds(pg_server, monkeypatch) -> str:
    """A compound database of this test's own (it is the one a bad query would damage),
    read as the local deployment's read-only role; the superuser's URL is returned."""
    admin, reader = compound_database(pg_server)
    assert count(admin) == ROWS
    monkeypatch.setenv("CPP_DATABASE_COMPOUNDS_URL", reader)
    return admin


def count(url: str) -> int:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM compounds")
        n = cur.fetchone()[0]
    conn.close()
    return n


def test_commit_inside_the_query_text_is_refused_and_deletes_nothing(compounds):
    with pytest.raises(CompoundDatabaseError, match="exactly one SQL statement.*3 statements"):
        run_query("compounds", "SELECT 1; COMMIT; DELETE FROM compounds", load_settings().training)
    assert count(compounds) == ROWS


@pytest.mark.parametrize(
    ("query", "refusal"),
    [
        ("DELETE FROM compounds", "it is a DELETE, which training may not run"),
        (
            "WITH d AS (DELETE FROM compounds RETURNING smiles, solubility AS label) SELECT * FROM d",
            "it holds a DELETE (in a WITH clause)",
        ),
    ],
)
def test_a_query_that_would_write_is_refused_and_deletes_nothing(compounds, query, refusal):
    with pytest.raises(CompoundDatabaseError, match="the query must") as refused:
        run_query("compounds", query, load_settings().training)
    assert refusal in str(refused.value)
    assert count(compounds) == ROWS


def test_semicolons_in_strings_comments_and_dollar_quotes_are_one_statement(compounds):
    query = (
        "SELECT smiles, solubility AS label, ';' AS a, $q$; DELETE FROM compounds $q$ AS b "
        "FROM compounds /* ; */ WHERE id <= 3; -- a trailing comment; still one statement"
    )
    result = run_query("compounds", query, load_settings().training)
    assert len(result.frame) == 3 and result.frame["a"].tolist() == [";"] * 3
    assert count(compounds) == ROWS


def test_more_rows_than_the_cap_fail_with_a_readable_message(compounds):
    query = "SELECT smiles, solubility AS label FROM compounds"
    with pytest.raises(CompoundDatabaseError, match="more than 1,000 rows .* CPP_TRAINING_QUERY_MAX_ROWS"):
        run_query("compounds", query, load_settings().training, limits=TrainingQueryLimits(timeout_s=60, max_rows=1000))
    assert (
        len(
            run_query(
                "compounds", query, load_settings().training, limits=TrainingQueryLimits(timeout_s=60, max_rows=ROWS)
            ).frame
        )
        == ROWS
    )


def test_a_query_over_the_statement_timeout_is_cancelled(compounds, monkeypatch):
    monkeypatch.setenv("CPP_TRAINING_QUERY_TIMEOUT_S", "0.5")
    with pytest.raises(CompoundDatabaseError, match=r"longer than 0.5 s .*CPP_TRAINING_QUERY_TIMEOUT_S"):
        run_query(
            "compounds",
            "SELECT smiles, solubility AS label FROM compounds, pg_sleep(5) LIMIT 1",
            load_settings().training,
        )


def test_a_stored_version_whose_query_escapes_its_transaction_fails_its_run_and_deletes_nothing(
    pg_server, compounds, dagster_instance, tmp_path, monkeypatch
):
    """A version already in the store (written before this check, or by hand) whose query
    holds `COMMIT; DELETE`: its training run fails with the reason, the compounds table
    is whole, and no model is published."""
    import dagster as dg
    from dagster_helpers import events

    from cpp_dagster.definitions import training_job_def
    from cpp_dagster.training.store import ConfigStore

    store_url = new_database(pg_server, "training")
    ConfigStore(store_url).apply_schema()
    for key, value in {"CPP_TRAINING_DB_URL": store_url, "CPP_NAS_ROOT": str(tmp_path / "nas")}.items():
        monkeypatch.setenv(key, value)
    for key in ("CPP_WORK_ROOT", "CPP_MODEL_REGISTRY_URL", "CPP_MODEL_REGISTRY_DIR", "CPP_TRAINING_ENGINE"):
        monkeypatch.delenv(key, raising=False)
    config = {
        "workflow": "poison",
        "database": "compounds",
        "splits": 1,
        "model": {"predictor": "ACP_Regression"},
        "query": "SELECT 1; COMMIT; DELETE FROM compounds",
    }
    key = "poison-0123456789ab"
    with psycopg2.connect(store_url) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO training_config_versions (version, partition_key, workflow, config) VALUES (%s, %s, %s, %s)",
            ("0123456789ab" + "0" * 52, key, "poison", psycopg2.extras.Json(config)),
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
    messages = []
    for event in events(dagster_instance, run.run_id, dg.DagsterEventType.STEP_FAILURE):
        error = event.event_specific_data.error
        while error is not None:
            messages.append(error.message)
            error = error.cause
    assert "the query must be exactly one SQL statement (a SELECT); it holds 3 statements" in "\n".join(messages)
    assert count(compounds) == ROWS
    assert not (tmp_path / "nas" / "models").exists()
