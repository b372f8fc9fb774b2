"""Acceptance: one good analysis and, beside it, a poison row of each kind, through the
real dagster-daemon (sensors, run queue, run worker, step processes), real CellProfiler
and the embedded PostgreSQL. The good analysis finishes; each bad row gets `error` and a
message naming its cause, all within the first two ticks of its sensor; no tick fails."""

from __future__ import annotations

import json
import shutil

import dagster as dg
import psycopg2
from dagster_helpers import wait_until
from pg_databases import new_database
from poison_rows import MISSING_PIPELINE, add_rule, automation_failures, insert_poison_rows
from psycopg2 import sql

from cpp_dagster.demo.register import DEMO_PIPELINE, demo_pipeline_meta, register_plate
from cpp_dagster.demo.run import dagster_daemon
from cpp_dagster.local.environment import sqlalchemy_url
from cpp_dagster.settings import PROJECT_ROOT

SENSORS = ("pending_sub_analyses", "automation_rules", "new_training_configurations")


def error_times(url: str, table: str, ids: list[int]) -> dict[int, float]:
    """`error` of imagedb rows as epoch seconds (the columns are timestamps without zone)."""
    key = {"image_sub_analyses": "sub_id", "image_analyses": "id"}[table]
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                sql.SQL(
                    "SELECT {key}, extract(epoch FROM error::timestamptz) FROM {table} WHERE {key} = ANY(%s)"
                ).format(key=sql.Identifier(key), table=sql.Identifier(table)),
                (ids,),
            )
            return {k: float(t) for k, t in cur.fetchall() if t is not None}
    finally:
        conn.close()


def test_a_good_analysis_finishes_beside_a_bad_row_of_each_kind(lab, pg_server, tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    interval = 2
    env = {
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_URL": sqlalchemy_url(new_database(pg_server, "dagster")),
        "CPP_SENSOR_INTERVAL_S": str(interval),
        # steps in the run worker: fewer processes to start, the sensors are what is tested here
        "CPP_EXECUTOR": "in_process",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    acq = register_plate(lab.db, lab.settings, barcode="GOOD", wells=["B02"], sites=[1], seed=5)
    good = lab.db.submit_analysis(acq, DEMO_PIPELINE).sub_ids[0]
    poison = insert_poison_rows(lab.db, acq, json.dumps(demo_pipeline_meta()["sub_analyses"][0]))
    add_rule(lab.db, MISSING_PIPELINE)

    with dagster_daemon(env, tmp_path / "daemon.log"), dg.DagsterInstance.get() as instance:

        def ticks(name: str):
            states = [s for s in instance.all_instigator_state() if s.name == name]
            found = instance.get_ticks(states[0].instigator_origin_id, states[0].selector_id) if states else []
            return sorted(found, key=lambda t: t.timestamp)

        sub = wait_until(
            "the good analysis to finish or fail",
            lambda: (lambda s: s if s.finish or s.error else None)(lab.db.sub_analysis(good)),
            600,
        )
        wait_until("three ticks of every sensor", lambda: all(len(ticks(name)) >= 3 for name in SENSORS), 120)
        all_ticks = {name: ticks(name) for name in SENSORS}

    assert sub.error is None and sub.finish is not None, sub.status
    assert [t for name in SENSORS for t in all_ticks[name] if t.status.value == "FAILURE"] == []

    pending = all_ticks["pending_sub_analyses"]
    assert any(t.run_ids for t in pending[:2])  # the good analysis was launched in the first two ticks
    failed_at = error_times(lab.db.url, "image_sub_analyses", [sub_id for sub_id, _ in poison.values()])
    for name, (sub_id, words) in poison.items():
        bad = lab.db.sub_analysis(sub_id)
        assert bad.error is not None and bad.finish is None and words in bad.status["message"], name
        assert failed_at[sub_id] <= pending[2].timestamp + 1, f"{name}: failed after the second tick"

    (rule,) = automation_failures(lab.db)
    assert rule["acq"] == acq and rule["error"] is not None and MISSING_PIPELINE in rule["message"]
    rule_failed_at = error_times(lab.db.url, "image_analyses", [rule["id"]])[rule["id"]]
    assert rule_failed_at <= all_ticks["automation_rules"][2].timestamp + 1
    assert lab.db.analysis(sub.analysis_id)["error"] is None  # the good analysis is untouched
