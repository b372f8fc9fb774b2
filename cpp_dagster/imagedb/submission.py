"""Submitting an analysis: one analysis row and one sub-analysis row per step of its
pipeline, each depending on the previous one. Shared by every way in (`ImageDB.submit_analysis`
for the CLI, the automation rules, and a run launched from the Dagster UI in run_claims.py),
so all of them write the same rows. The functions take the caller's cursor: each runs
inside the caller's transaction.
"""

from __future__ import annotations

from typing import Any

import psycopg2
from psycopg2.extras import Json

from cpp_dagster.imagedb.notifications import FAILED, record_outcome
from cpp_dagster.imagedb.rows import ImageDBError, SubmittedAnalysis, priority_of

PIPELINE_WIDE = ("quality",)  # `quality: block` (analysis/quality.py) at the top of a pipeline's meta


def one_row(cur, missing: str) -> dict:
    """The row the last statement returned; ImageDBError(`missing`) when there is none."""
    row = cur.fetchone()
    if row is None:
        raise ImageDBError(missing)
    return row


def _check_pipeline_shape(pipeline_name: str, meta: Any) -> None:
    """analysis_pipelines.meta must be `{"analysis_meta": {...}, "sub_analyses": [{...}, ...]}`
    (and may hold the PIPELINE_WIDE keys)."""
    where = f"analysis pipeline {pipeline_name!r}"
    if not isinstance(meta, dict):
        raise ImageDBError(f"{where}: meta must be a JSON object with a list 'sub_analyses'")
    if not isinstance(meta.get("analysis_meta", {}), dict):
        raise ImageDBError(f"{where}: 'analysis_meta' must be a JSON object")
    subs = meta.get("sub_analyses", [])
    if not isinstance(subs, list) or not all(isinstance(sub, dict) for sub in subs):
        raise ImageDBError(f"{where}: 'sub_analyses' must be a list of JSON objects")


def _priority(value: Any, where: str) -> int | None:
    """imagedb's priority columns are integers: a value that is not one in the documented
    range is a readable error at submission, not a database error."""
    try:
        return priority_of(value)
    except ValueError as e:
        raise ImageDBError(f"{where}: {e}") from None


def submit_rows(
    cur, plate_acquisition_id: int, pipeline_name: str, priority: int | None, overrides: dict[str, Any]
) -> SubmittedAnalysis:
    priority = _priority(priority, "the submission's priority")
    cur.execute("SELECT id FROM plate_acquisition WHERE id = %s", (plate_acquisition_id,))
    one_row(cur, f"no plate acquisition {plate_acquisition_id}")
    cur.execute("SELECT meta FROM analysis_pipelines WHERE name = %s", (pipeline_name,))
    meta = one_row(cur, f"no analysis pipeline named {pipeline_name!r}")["meta"]
    _check_pipeline_shape(pipeline_name, meta)
    cur.execute(
        """INSERT INTO image_analyses (plate_acquisition_id, pipeline_name, meta, submitted, priority)
           VALUES (%s, %s, %s, now(), %s) RETURNING id""",
        (plate_acquisition_id, pipeline_name, Json(meta.get("analysis_meta", {})), priority),
    )
    analysis_id = cur.fetchone()["id"]
    sub_ids: list[int] = []
    # keys a pipeline may declare for all its stages, which a stage's own entry overrides
    shared = {k: meta[k] for k in PIPELINE_WIDE if k in meta}
    for sub_meta in meta.get("sub_analyses", []):
        sub_meta = {**shared, **sub_meta, **{k: v for k, v in overrides.items() if v is not None}}
        if priority is not None:
            sub_meta["priority"] = priority
        sub_priority = _priority(sub_meta.get("priority"), f"pipeline {pipeline_name!r}")
        cur.execute(
            """INSERT INTO image_sub_analyses
                   (analysis_id, plate_acquisition_id, meta, depends_on_sub_id, priority)
               VALUES (%s, %s, %s, %s, %s) RETURNING sub_id""",
            (analysis_id, plate_acquisition_id, Json(sub_meta), Json(sub_ids[-1:]), sub_priority),
        )
        sub_ids.append(cur.fetchone()["sub_id"])
    return SubmittedAnalysis(analysis_id, sub_ids)


def submit_isolated(cur, plate_acquisition_id: int, pipeline_name: str | None) -> SubmittedAnalysis:
    """One automatic submission under a savepoint: when it fails, only it is rolled back,
    and a failed analysis row records why."""
    cur.execute("SAVEPOINT automation_rule")
    try:
        submitted = submit_rows(cur, plate_acquisition_id, pipeline_name, None, {})
    except (ImageDBError, psycopg2.DataError) as e:
        cur.execute("ROLLBACK TO SAVEPOINT automation_rule")
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        message = f"not submitted by automation: {reason}"
        cur.execute(
            """INSERT INTO image_analyses (plate_acquisition_id, pipeline_name, submitted, error, status)
               VALUES (%s, %s, now(), now(), jsonb_build_object('state', 'failed', 'message', %s::text))
               RETURNING id, error""",
            (plate_acquisition_id, pipeline_name, message),
        )
        failed = cur.fetchone()
        record_outcome(cur, failed["id"], FAILED, failed["error"], message)
        return SubmittedAnalysis(failed["id"], [], error=message)
    cur.execute("RELEASE SAVEPOINT automation_rule")
    return submitted
