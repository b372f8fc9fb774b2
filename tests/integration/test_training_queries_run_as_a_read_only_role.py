"""Training queries run as a role that may only SELECT the compound tables, against the
real embedded PostgreSQL: locally the role `compounds_reader` (`local.postgres.ensure_reader`);
in production the admin's (docs/training.md). Each thing the superuser could do from one
statement inside `BEGIN READ ONLY` (issue 19) is refused to the role, whether it comes
through `run_query` or straight from the role's own connection; and `run_query` refuses
to run a query as a superuser at all."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg2
import pytest
from pg_databases import compound_database

from cpp_dagster.settings import load_settings
from cpp_dagster.training.compounds import CompoundDatabaseError, run_query


@pytest.fixture
def urls(pg_server, monkeypatch) -> tuple[str, str]:
    admin, reader = compound_database(pg_server)
    monkeypatch.setenv("CPP_DATABASE_COMPOUNDS_URL", reader)
    return admin, reader


def as_role(url: str, statement: str) -> str:
    """Run `statement` on the role's own connection, in a read-WRITE transaction (the
    role's privileges alone, not `run_query`'s read-only transaction, must refuse it);
    PostgreSQL's refusal (the test fails if there is none)."""
    conn = psycopg2.connect(url)
    conn.set_session(readonly=False)
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
    except psycopg2.Error as error:
        return error.pgerror or str(error)
    finally:
        conn.rollback()
        conn.close()
    raise AssertionError(f"PostgreSQL ran {statement!r} for the role")


def refused_by_run_query(statement: str) -> str:
    with pytest.raises(CompoundDatabaseError) as refused:
        run_query("compounds", statement, load_settings().training)
    return str(refused.value)


def test_copy_to_program_is_refused_and_runs_nothing(urls):
    marker = Path("/tmp") / f"cpp-copy-program-{uuid.uuid4().hex}"
    statement = f"COPY (SELECT 1) TO PROGRAM 'id > {marker}'"
    assert "it is a COPY" in refused_by_run_query(statement)
    assert "permission denied to COPY to or from an external program" in as_role(urls[1], statement)
    assert not marker.exists()


def test_copy_to_a_file_is_refused_and_writes_nothing(urls):
    target = Path("/tmp") / f"cpp-copy-file-{uuid.uuid4().hex}.csv"
    statement = f"COPY (SELECT smiles FROM compounds) TO '{target}'"
    assert "it is a COPY" in refused_by_run_query(statement)
    assert "permission denied to COPY to a file" in as_role(urls[1], statement)
    assert not target.exists()


def test_pg_read_file_is_refused(urls):
    statement = "SELECT pg_read_file('/etc/hostname') AS smiles, 1 AS label"
    assert "permission denied for function pg_read_file" in refused_by_run_query(statement)
    assert "permission denied for function pg_read_file" in as_role(urls[1], statement)


def test_pg_terminate_backend_cannot_end_another_session(urls):
    other = psycopg2.connect(urls[0])  # the superuser's session: imagedb's writer, Dagster's storage
    try:
        with other.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            pid = cur.fetchone()[0]
        statement = f"SELECT pg_terminate_backend({pid})::text AS smiles, 1 AS label"
        assert "permission denied to terminate process" in refused_by_run_query(statement)
        assert "permission denied to terminate process" in as_role(urls[1], statement)
        with other.cursor() as cur:
            cur.execute("SELECT 1")  # still alive
    finally:
        other.close()


def test_dblink_is_refused_even_where_the_extension_is_installed(urls):
    admin = psycopg2.connect(urls[0])
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("CREATE EXTENSION IF NOT EXISTS dblink")
        cur.execute("SELECT current_database()")
        database = cur.fetchone()[0]
    admin.close()
    host = psycopg2.extensions.parse_dsn(urls[0])["host"]
    target = f"dbname={database} host={host} user=postgres password=x"
    statement = f"SELECT dblink_exec('{target}', 'DROP TABLE compounds') AS smiles"
    assert "Non-superusers may only connect using credentials" in refused_by_run_query(statement)
    assert "Non-superusers may only connect using credentials" in as_role(urls[1], statement)
    assert "permission denied to create extension" in as_role(urls[1], "CREATE EXTENSION IF NOT EXISTS postgres_fdw")


def test_the_role_reads_the_compound_tables_and_nothing_else(urls):
    admin = psycopg2.connect(urls[0])
    with admin, admin.cursor() as cur:
        cur.execute("CREATE TABLE assay_secrets (id int, note text)")
    admin.close()
    assert (
        len(run_query("compounds", "SELECT smiles, solubility AS label FROM compounds", load_settings().training).frame)
        == 1282
    )
    assert "permission denied for table assay_secrets" in refused_by_run_query(
        "SELECT note AS smiles, id AS label FROM assay_secrets"
    )
    conn = psycopg2.connect(urls[1])
    conn.autocommit = True  # even outside run_query's read-only transaction
    with conn.cursor() as cur:
        for statement in ("DELETE FROM compounds", "CREATE TABLE mine (a int)", "CREATE TEMP TABLE mine (a int)"):
            with pytest.raises(psycopg2.Error, match="read-only transaction"):
                cur.execute(statement)
        cur.execute("SET default_transaction_read_only = off")
        for statement, refusal in (
            ("DELETE FROM compounds", "permission denied for table compounds"),
            ("CREATE TABLE mine (a int)", "permission denied for schema public"),
        ):
            with pytest.raises(psycopg2.Error, match=refusal):
                cur.execute(statement)
    conn.close()


def test_a_superuser_url_is_refused_before_the_query_runs(urls, monkeypatch):
    monkeypatch.setenv("CPP_DATABASE_COMPOUNDS_URL", urls[0])
    said = refused_by_run_query("SELECT smiles, solubility AS label FROM compounds")
    assert "is reached as role 'postgres', a superuser" in said and "CPP_DATABASE_COMPOUNDS_URL" in said


def test_the_local_deployment_gives_training_the_reader_role_not_the_superuser(pg_server, tmp_path, monkeypatch):
    """`make dev` / `make demo` hand every Dagster process CPP_DATABASE_COMPOUNDS_URL from
    `local.environment`: it names `compounds_reader`, which is no superuser and may SELECT
    the demo table."""
    from pg_databases import new_database

    from cpp_dagster.local import environment

    monkeypatch.delenv("CPP_DATABASE_COMPOUNDS_URL", raising=False)
    monkeypatch.setattr(environment, "_embedded", lambda settings, name: new_database(pg_server, name))
    url = environment.compounds_url(load_settings())
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user")
            assert cur.fetchone() == ("compounds_reader", False)
            cur.execute("SELECT count(*) FROM compounds")
            assert cur.fetchone()[0] == 1282
    finally:
        conn.close()
