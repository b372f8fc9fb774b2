"""A training query reaches nothing beyond reading its compound tables, against the real
embedded PostgreSQL: the bypasses of issue 19 (a `\\'` that sqlparse misread, dblink into
imagedb, queries that skipped the server-side cursor, rows too large to hold) each
fail with a message and leave every row in place; the training sensor reports a bad
stored query and launches the others. The role the query runs as:
tests/integration/test_training_queries_run_as_a_read_only_role.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psycopg2
import psycopg2.extras
import pytest
from dagster_helpers import tick
from pg_databases import compound_database, new_database

from cpp_dagster.imagedb.rows import Image
from cpp_dagster.service_settings import TrainingQueryLimits
from cpp_dagster.settings import PROJECT_ROOT, load_settings
from cpp_dagster.training.compounds import CompoundDatabaseError, run_query

ROWS = 1282
EXAMPLE = json.loads((PROJECT_ROOT / "cpp_dagster" / "training" / "examples" / "solubility.json").read_text())
BYPASS = r"SELECT 'a\'; COMMIT; DELETE FROM compounds; --' AS smiles, 1 AS label"


def count(url: str, table: str = "compounds") -> int:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {table}")  # noqa: S608  (the tests' own table names)
            return cur.fetchone()[0]
    finally:
        conn.close()


@pytest.fixture
def compounds(pg_server, monkeypatch) -> str:
    admin, reader = compound_database(pg_server)
    monkeypatch.setenv("CPP_DATABASE_COMPOUNDS_URL", reader)
    return admin


@pytest.mark.parametrize("as_superuser", [False, True], ids=["as-the-reader-role", "as-the-superuser"])
def test_the_backslash_quote_bypass_is_refused_and_deletes_nothing(compounds, monkeypatch, as_superuser):
    """sqlparse read `\\'` as an escaped quote and saw one statement; PostgreSQL ran three
    and the DELETE committed. The grammar alone refuses it, before any connection."""
    if as_superuser:
        monkeypatch.setenv("CPP_DATABASE_COMPOUNDS_URL", compounds)
    with pytest.raises(CompoundDatabaseError, match="exactly one SQL statement .* it holds 3 statements"):
        run_query("compounds", BYPASS, load_settings().training)
    assert count(compounds) == ROWS


def test_dblink_into_imagedb_neither_by_the_bypass_nor_as_one_select_deletes_a_sub_analysis(compounds, db):
    """The same cluster holds imagedb: with dblink installed in the compound database, the
    bypass deleted every row of image_sub_analyses. Now the bypass is refused by the
    grammar, and one honest SELECT calling dblink is refused by PostgreSQL for the role."""
    db.put_channel_map(1, {1: "HOECHST"})
    acq = db.add_plate_acquisition("P1", channel_map_id=1, folder="/nas/P1")
    db.add_images(acq, "P1", [Image("B02", 1, 1, "/nas/P1/B02_s1_w1.tif")])
    conn = psycopg2.connect(db.url)
    with conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO image_analyses (plate_acquisition_id, pipeline_name, meta) VALUES (%s, 'x', '{}')", (acq,)
        )
        cur.execute(
            "INSERT INTO image_sub_analyses (analysis_id, plate_acquisition_id, meta) "
            "SELECT id, %s, '{}' FROM image_analyses",
            (acq,),
        )
    conn.close()
    admin = psycopg2.connect(compounds)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("CREATE EXTENSION IF NOT EXISTS dblink")
    admin.close()
    imagedb = psycopg2.extensions.parse_dsn(db.url)
    target = f"dbname={imagedb['dbname']} host={imagedb['host']} user=postgres password=x"
    bypass = f"SELECT 'a\\'; COMMIT; SELECT dblink_exec('{target}', 'DELETE FROM image_sub_analyses'); --' AS smiles"
    with pytest.raises(CompoundDatabaseError, match="it holds 3 statements"):
        run_query("compounds", bypass, load_settings().training)
    one_select = f"SELECT dblink_exec('{target}', 'DELETE FROM image_sub_analyses') AS smiles, 1 AS label"
    with pytest.raises(
        CompoundDatabaseError,
        match="(?s)the query failed on 'compounds': .*Non-superusers may only connect using credentials",
    ):
        run_query("compounds", one_select, load_settings().training)
    assert count(db.url, "image_sub_analyses") == 1


def _peak_rss_growth_mb(query: str, limits: TrainingQueryLimits) -> tuple[float, str]:
    """Run `query` in a process of its own; (its peak RSS growth over a one-row query, in
    MB; the refusal it printed)."""
    script = f"""
import resource, sys
from cpp_dagster.service_settings import TrainingQueryLimits
from cpp_dagster.settings import load_settings
from cpp_dagster.training.compounds import CompoundDatabaseError, run_query
training = load_settings().training
run_query("compounds", "SELECT 'C' AS smiles, 1 AS label", training)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    run_query("compounds", {query!r}, training, limits=TrainingQueryLimits({limits.timeout_s}, {limits.max_rows},
              {limits.max_bytes}))
    print("no refusal")
except CompoundDatabaseError as error:
    print(error)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""
    out = subprocess.run(
        [sys.executable, "-c", script], env=dict(os.environ), capture_output=True, text=True, timeout=300, check=True
    ).stdout.splitlines()
    return float(out[-1]), out[-2]


@pytest.mark.parametrize(
    "query",
    [
        "(SELECT 'CCO' AS smiles, g AS label FROM generate_series(1, 2000000) g)",
        "SELECT * FROM (VALUES ('CCO', 1)) AS v(smiles, label), generate_series(1, 2000000)",
        "TABLE big_compounds",
        "VALUES ('C', 1), ('CC', 2), ('CCC', 3)",
    ],
    ids=["parenthesised", "values-join", "table", "values"],
)
def test_every_accepted_form_is_read_through_a_cursor_so_the_row_cap_bounds_memory(compounds, pg_server, query):
    """A parenthesised query, TABLE or VALUES skipped the server-side cursor: 2M rows were
    held (+270 MB) although the cap was 1,000. Each now stops at the cap within a few MB."""
    if query.startswith("TABLE"):
        admin = psycopg2.connect(compounds)
        with admin, admin.cursor() as cur:
            cur.execute(
                "CREATE TABLE big_compounds AS SELECT 'CCO' AS smiles, g AS label FROM generate_series(1, 2000000) g"
            )
            cur.execute("GRANT SELECT ON big_compounds TO compounds_reader")
        admin.close()
    cap = 2 if query.startswith("VALUES") else 1000
    growth, said = _peak_rss_growth_mb(query, TrainingQueryLimits(timeout_s=120, max_rows=cap))
    assert f"more than {cap:,} rows" in said
    assert growth < 40, f"peak memory grew by {growth:.0f} MB reading at most {cap + 1} rows"


def test_rows_too_large_to_hold_fail_at_the_byte_cap_and_hold_little_beyond_it(compounds):
    """100 rows of 1 MB each, with a cap of 8 MB: refused after about 8 MB, not after 100."""
    query = "SELECT repeat('C', 1000000) AS smiles, g AS label FROM generate_series(1, 100) g"
    growth, said = _peak_rss_growth_mb(query, TrainingQueryLimits(timeout_s=120, max_rows=1000, max_bytes=8 * 2**20))
    assert "take more than 8 MB" in said and "CPP_TRAINING_QUERY_MAX_MB" in said
    assert growth < 40, f"peak memory grew by {growth:.0f} MB for an 8 MB cap"


def test_a_query_that_turns_off_its_own_statement_timeout_is_still_cancelled_on_time(compounds):
    """statement_timeout applies to each FETCH of the cursor; a query that sets it to 0 in
    its first row would run on unbounded. The whole read has a deadline of its own."""
    query = (
        "SELECT CASE WHEN g = 1 THEN set_config('statement_timeout', '0', true) ELSE pg_sleep(2)::text END "
        "AS smiles, g AS label FROM generate_series(1, 10) g"
    )
    started = time.monotonic()
    with pytest.raises(CompoundDatabaseError, match="ran longer than 1 s"):
        run_query("compounds", query, load_settings().training, limits=TrainingQueryLimits(timeout_s=1, max_rows=100))
    assert time.monotonic() - started < 6


def test_the_training_sensor_reports_bad_stored_queries_and_launches_the_others(
    pg_server, compounds, dagster_instance, monkeypatch
):
    """Stored by hand (or before this check): the bypass, a query too long to parse, an
    expression that overflowed the parser's stack, and an IN list of 6,000 ids, which
    raised SQLParseError out of every tick. The tick reports the bad ones and launches the
    good ones."""
    url = new_database(pg_server, "training")
    monkeypatch.setenv("CPP_TRAINING_DB_URL", url)
    in_list = "SELECT smiles, solubility AS label FROM compounds WHERE id IN (" + ",".join(map(str, range(6000))) + ")"
    queries = {
        "bypass": BYPASS,
        "long": "SELECT 1 AS label, '" + "C" * 200_000 + "' AS smiles",
        "deep": "SELECT " + "+".join(["1"] * 49_990) + " AS label",
        "inlist": in_list,
        "good": EXAMPLE["query"],
    }
    from cpp_dagster.training.store import ConfigStore

    ConfigStore(url).apply_schema()
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cur:
        for i, (workflow, query) in enumerate(queries.items()):
            cur.execute(
                "INSERT INTO training_config_versions (version, partition_key, workflow, config) VALUES (%s, %s, %s, %s)",
                (f"{i:064x}", f"{workflow}-{i:012x}", workflow, psycopg2.extras.Json({**EXAMPLE, "query": query})),
            )
    conn.close()
    data = tick(dagster_instance, "new_training_configurations")
    assert sorted(r.tags["cpp-dagster/workflow"] for r in data.run_requests) == ["deep", "good", "inlist"]
    problems = {e.metadata["workflow"].value: e.metadata["problem"].value for e in data.asset_events}
    assert "it holds 3 statements" in problems["bypass"]
    assert "200,0" in problems["long"] and "at most 100,000 are allowed" in problems["long"]
    assert set(problems) == {"bypass", "long"}
    assert count(compounds) == ROWS
