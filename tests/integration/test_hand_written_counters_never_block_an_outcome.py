"""A `status.reruns` written by hand that is not a whole number ("1.0", "²", "-1", a
number too big for an integer) once made every guarded update of the row fail on a
cast: its failure could never be recorded and it stayed `submitted` forever. imagedb
now reads it as 0, in SQL as in Python, and the row's outcome is recorded."""

from __future__ import annotations

import json

import psycopg2
import pytest
from dagster_helpers import tick
from poison_rows import insert_sub_analysis
from psycopg2.extras import Json

from cpp_dagster.demo.register import demo_pipeline_meta, register_plate
from cpp_dagster.imagedb.rows import RunStamp

HAND_WRITTEN = ["1.0", "²", "-1", "99999999999", "x"]


def scribble_reruns(db, sub_id: int, value: str) -> None:
    conn = psycopg2.connect(db.url)
    with conn, conn.cursor() as cur:
        cur.execute("UPDATE image_sub_analyses SET status = %s WHERE sub_id = %s", (Json({"reruns": value}), sub_id))
    conn.close()


@pytest.mark.parametrize("reruns", HAND_WRITTEN)
def test_a_run_of_a_row_with_a_scribbled_rerun_count_records_its_start_and_failure(lab, reruns):
    acq = register_plate(lab.db, lab.settings, barcode="SCRIBBLE", wells=["B02"], sites=[1], seed=3)
    sub_id = insert_sub_analysis(lab.db, acq, meta=json.dumps(demo_pipeline_meta()["sub_analyses"][0]))
    scribble_reruns(lab.db, sub_id, reruns)
    stamp = RunStamp(0, "run-1")  # the generation the sensor gives such a row

    assert lab.db.mark_sub_started(sub_id, batches=1, image_sets=1, stamp=stamp)
    assert lab.db.mark_sub_failed(sub_id, "CellProfiler exited with code 1", stamp)
    sub = lab.db.sub_analysis(sub_id)
    assert sub.error is not None and sub.status["message"].startswith("CellProfiler exited with code 1")
    assert lab.db.rerun_sub_analysis(sub_id) == 1  # a re-run counts on from 0


def test_the_sensor_fails_a_bad_row_with_a_scribbled_rerun_count_instead_of_leaving_it_submitted(lab, dagster_instance):
    acq = register_plate(lab.db, lab.settings, barcode="SCRIBBLED", wells=["B02"], sites=[1], seed=3)
    bad = {**demo_pipeline_meta()["sub_analyses"][0], "site_filter": "12"}
    sub_ids = [insert_sub_analysis(lab.db, acq, meta=json.dumps(bad)) for _ in HAND_WRITTEN]
    for sub_id, reruns in zip(sub_ids, HAND_WRITTEN):
        scribble_reruns(lab.db, sub_id, reruns)
    tick(dagster_instance)
    for sub_id in sub_ids:
        sub = lab.db.sub_analysis(sub_id)
        assert sub.error is not None, sub.status
        assert "not launched:" in sub.status["message"]
