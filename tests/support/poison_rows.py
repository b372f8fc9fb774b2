"""Rows a careless or hostile script could put into imagedb beside good analyses, and
the message each must get. Inserted with plain SQL, as such a script would."""

from __future__ import annotations

import psycopg2

from cpp_dagster.imagedb.store import ImageDB

MISSING_SUB_ID = 987654
MISSING_PIPELINE = "no-such-pipeline"


def insert_sub_analysis(db: ImageDB, acq: int, *, meta: str, depends_on: str | None = None) -> int:
    """One analysis with one sub-analysis; `meta` and `depends_on` are JSON texts as stored."""
    conn = psycopg2.connect(db.url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                """INSERT INTO image_analyses (plate_acquisition_id, pipeline_name, meta, submitted)
                           VALUES (%s, 'by-hand', '{}', now()) RETURNING id""",
                (acq,),
            )
            analysis_id = cur.fetchone()[0]
            cur.execute(
                """INSERT INTO image_sub_analyses (analysis_id, plate_acquisition_id, meta, depends_on_sub_id)
                           VALUES (%s, %s, %s::jsonb, %s::jsonb) RETURNING sub_id""",
                (analysis_id, acq, meta, depends_on),
            )
            return cur.fetchone()[0]
    finally:
        conn.close()


def insert_poison_rows(db: ImageDB, acq: int, good_meta: str) -> dict[str, tuple[int, str]]:
    """Each kind of bad sub-analysis beside the good ones: name -> (sub_id, the words its
    imagedb message must contain). A sub-analysis failed before the others is one of them."""
    failed = insert_sub_analysis(db, acq, meta=good_meta)
    assert db.mark_sub_failed(failed, "boom: stopped by the lab")
    return {
        "meta a JSON list": (
            insert_sub_analysis(db, acq, meta='["features"]'),
            "meta must be a JSON object, not a list",
        ),
        "meta a JSON string": (
            insert_sub_analysis(db, acq, meta='"features"'),
            "meta must be a JSON object, not a string",
        ),
        "depends_on_sub_id a scalar": (
            insert_sub_analysis(db, acq, meta=good_meta, depends_on='"12"'),
            "depends_on_sub_id must be a list of sub-analysis ids",
        ),
        "depends_on_sub_id a missing id": (
            insert_sub_analysis(db, acq, meta=good_meta, depends_on=f"[{MISSING_SUB_ID}]"),
            f"not started: it depends on sub-analysis {MISSING_SUB_ID}, which does not exist",
        ),
        "depends_on an already failed one": (
            insert_sub_analysis(db, acq, meta=good_meta, depends_on=f"[{failed}]"),
            f"not started: it depends on sub-analysis {failed}, which failed",
        ),
    }


def add_rule(db: ImageDB, pipeline_name: str, project: str | None = None) -> None:
    conn = psycopg2.connect(db.url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                """INSERT INTO image_analyses_automation (project, cell_line, pipeline_name, channel_map)
                           VALUES (%s, NULL, %s, NULL)""",
                (project, pipeline_name),
            )
    finally:
        conn.close()


def automation_failures(db: ImageDB) -> list[dict]:
    """The analyses automation could not submit: id, plate acquisition, pipeline, error, message."""
    conn = psycopg2.connect(db.url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("""SELECT id, plate_acquisition_id, pipeline_name, error, status->>'message'
                           FROM image_analyses WHERE status->>'message' LIKE 'not submitted by automation:%%'
                           ORDER BY id""")
            return [dict(zip(("id", "acq", "pipeline", "error", "message"), r)) for r in cur.fetchall()]
    finally:
        conn.close()
