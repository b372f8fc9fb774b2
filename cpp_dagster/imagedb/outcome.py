"""The write-back of a sub-analysis's outcome (start, progress, outputs, finish,
failure), and the generation guard that keeps a stale run from overwriting a new one.

`cpp-dagster rerun` bumps `status.reruns` (the re-run generation); the run that then
starts the sub-analysis records itself in `status.run_id`. Every write may carry the
run's `RunStamp`; one stamped with an older generation, or with another run than
`status.run_id`, is refused: no row changes, a warning names the stale run, and the
method returns False/None (or raises StaleRunError where the caller must stop). The
guard is in each UPDATE's WHERE, or checked under SELECT ... FOR UPDATE, so a
concurrent `rerun_sub_analysis` lands either before or after a write, never inside it.
`ImageDB` (store.py) inherits these methods; they are one transaction each.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from psycopg2 import sql
from psycopg2.extras import Json

from cpp_dagster.ids import parse_id
from cpp_dagster.imagedb.notifications import FINISHED, finished_message, record_outcome, state_of_failure
from cpp_dagster.imagedb.ready import dependency_failed_message
from cpp_dagster.imagedb.rows import RERUNS, ImageDBError, RunStamp
from cpp_dagster.pg import Database

log = logging.getLogger("cpp_dagster.imagedb")


def progress_message(finished: int, total: int, elapsed_s: float) -> str:
    """`"N / M batches finished, ~H h left"`, the remaining time from the rate so far."""
    if finished <= 0 or finished >= total:
        left_h = 0.0 if finished >= total else float("nan")
    else:
        left_h = elapsed_s / finished * (total - finished) / 3600
    left = "?" if left_h != left_h else f"{left_h:.1f}"
    return f"{finished} / {total} batches finished, ~{left} h left"


def revive_after_success(cur, sub_id: int, analysis_id: int) -> None:
    """A sub-analysis that failed is running again or has finished after all (re-run,
    re-execution from failure): the dependents it failed wait again, and its analysis is
    no longer failed unless another sub-analysis still is."""
    cur.execute(
        """UPDATE image_sub_analyses SET error = NULL, status = NULL
           WHERE start IS NULL AND status->>'message' = %s""",
        (dependency_failed_message(sub_id),),
    )
    cur.execute(
        # the failure's state and message go; a UI run's submission marker stays (run_claims.py)
        """UPDATE image_analyses a SET error = NULL,
                  status = CASE WHEN jsonb_typeof(a.status) = 'object'
                                THEN NULLIF(a.status - 'state' - 'message', '{}'::jsonb) END
           WHERE a.id = %s AND NOT EXISTS (
               SELECT 1 FROM image_sub_analyses s WHERE s.analysis_id = a.id AND s.error IS NOT NULL
                 AND s.sub_id <> %s)""",
        (analysis_id, sub_id),
    )


class StaleRunError(RuntimeError):
    """A run tried to change a sub-analysis that a newer run (re-run) now owns."""


# The WHERE clause of a guarded UPDATE of image_sub_analyses (parameters: _guard_params).
_GUARD = sql.SQL("""(%(gen)s::int IS NULL OR {reruns} <= %(gen)s::int)
                   AND (%(run_id)s::text IS NULL OR status->>'run_id' IS NULL
                        OR status->>'run_id' = %(run_id)s::text)""").format(reruns=RERUNS)


def _guard_params(stamp: RunStamp | None) -> dict:
    stamp = stamp or RunStamp()
    return {"gen": stamp.generation, "run_id": stamp.run_id}


def is_current(status: dict, stamp: RunStamp | None) -> bool:
    """The same rule as _GUARD, for a status read under FOR UPDATE."""
    stamp = stamp or RunStamp()
    if stamp.generation is not None and (parse_id(status.get("reruns")) or 0) > stamp.generation:
        return False
    owner = status.get("run_id")
    return stamp.run_id is None or owner is None or owner == stamp.run_id


def stale_message(sub_id: int, stamp: RunStamp | None, status: dict | None = None) -> str:
    stamp = stamp or RunStamp()
    now = ""
    if status is not None:
        now = f" (now generation {parse_id(status.get('reruns')) or 0}, run {status.get('run_id') or 'not started'})"
    return (
        f"sub-analysis {sub_id} belongs to a newer run{now}: this run (generation "
        f"{stamp.generation}, run {stamp.run_id}) is stale and its outcome was not recorded"
    )


def _locked_status(cur, sub_id: int, stamp: RunStamp | None, what: str) -> dict | None:
    """The row's status, locked FOR UPDATE until the transaction ends; None (and a
    warning) when `stamp` is not its current run; ImageDBError for an unknown sub-analysis."""
    cur.execute("SELECT status FROM image_sub_analyses WHERE sub_id = %s FOR UPDATE", (sub_id,))
    row = cur.fetchone()
    if row is None:
        raise ImageDBError(f"no sub-analysis {sub_id}")
    status = dict(row["status"] or {})
    if not is_current(status, stamp):
        log.warning("refused %s: %s", what, stale_message(sub_id, stamp, status))
        return None
    return status


def _checks(checks: list[dict] | None) -> Json:
    """The quality checks' outcomes as a status fragment (`{"checks": [...]}`), or nothing."""
    return Json({} if checks is None else {"checks": checks})


def _finish(cur, sub_id: int, result: dict[str, Any], stamp: RunStamp | None, checks: list[dict] | None) -> bool:
    """`finish` and `result` on the sub-analysis (and on its analysis, with its last
    one, which then gets its notification); `checks` into its status. False (nothing
    written) for a stale run."""
    cur.execute(
        sql.SQL("""UPDATE image_sub_analyses
           SET finish = now(), error = NULL, result = %(result)s,
               status = COALESCE(status, '{{}}'::jsonb) || %(checks)s::jsonb
                        || jsonb_build_object('state', 'finished')
           WHERE sub_id = %(sub_id)s AND {} RETURNING analysis_id""").format(_GUARD),
        {"result": Json(result), "sub_id": sub_id, "checks": _checks(checks), **_guard_params(stamp)},
    )
    row = cur.fetchone()
    if row is None:
        return _refused(cur, sub_id, stamp, "finish")
    revive_after_success(cur, sub_id, row["analysis_id"])
    cur.execute(
        # a second completion (a re-execution of a finished run) keeps the first `finish`:
        # the same outcome, so no second notification
        """UPDATE image_analyses a SET finish = COALESCE(a.finish, now()), result = %s
           WHERE a.id = %s AND a.error IS NULL AND NOT EXISTS (
               SELECT 1 FROM image_sub_analyses s WHERE s.analysis_id = a.id AND s.finish IS NULL)
           RETURNING a.id, a.finish""",
        (Json(result), row["analysis_id"]),
    )
    finished = cur.fetchone()
    if finished is not None:
        record_outcome(cur, finished["id"], FINISHED, finished["finish"], finished_message(cur, finished["id"]))
    return True


def _refused(cur, sub_id: int, stamp: RunStamp | None, what: str, *, quiet_if_current: bool = False) -> bool:
    """After a guarded UPDATE changed no row: log why (unknown row -> ImageDBError, a
    stale stamp -> warning). `quiet_if_current`: the guard passed, another condition
    (e.g. already failed) held the row back: nothing to log. Returns False."""
    cur.execute("SELECT status FROM image_sub_analyses WHERE sub_id = %s", (sub_id,))
    row = cur.fetchone()
    if row is None:
        raise ImageDBError(f"no sub-analysis {sub_id}")
    status = dict(row["status"] or {})
    if not (quiet_if_current and is_current(status, stamp)):
        log.warning("refused %s: %s", what, stale_message(sub_id, stamp, status))
    return False


class SubAnalysisOutcomes(Database):
    """The write-back methods of ImageDB."""

    def mark_sub_started(self, sub_id: int, *, batches: int, image_sets: int, stamp: RunStamp | None = None) -> bool:
        """The run has started: `start` set, an earlier outcome of the same or an older
        generation cleared (a re-run), the run recorded in `status.run_id`. Refused for
        a run of an older generation than the row's."""
        stamp = stamp or RunStamp()
        status = {
            "state": "running",
            "message": progress_message(0, batches, 0),
            "batches": batches,
            "image_sets": image_sets,
            "finished_batches": [],
        }
        if stamp.run_id is not None:
            status["run_id"] = stamp.run_id
        with self._cursor() as cur:
            cur.execute(
                sql.SQL("""UPDATE image_sub_analyses
                   SET start = now(), finish = NULL, error = NULL, result = NULL,
                       status = %(status)s::jsonb || jsonb_build_object('reruns', {reruns})
                   WHERE sub_id = %(sub_id)s AND (%(gen)s::int IS NULL OR {reruns} <= %(gen)s::int)
                   RETURNING analysis_id""").format(reruns=RERUNS),
                {"status": Json(status), "sub_id": sub_id, "gen": stamp.generation},
            )
            row = cur.fetchone()
            if row is None:
                return _refused(cur, sub_id, stamp, "start")
            cur.execute(
                """UPDATE image_analyses SET start = COALESCE(start, now()), error = NULL, finish = NULL
                   WHERE id = %s""",
                (row["analysis_id"],),
            )
            return True

    def record_batch_finished(self, sub_id: int, batch_key: str, stamp: RunStamp | None = None) -> str | None:
        """Count one more finished batch (idempotent per batch) and return the progress
        text; None when refused (a stale run)."""
        with self._cursor() as cur:
            status = _locked_status(cur, sub_id, stamp, f"finished batch {batch_key}")
            if status is None:
                return None
            done = sorted(set(status.get("finished_batches", [])) | {batch_key})
            total = int(status.get("batches") or len(done))
            cur.execute(
                "SELECT now()::timestamp - COALESCE(start, now()::timestamp) AS elapsed "
                "FROM image_sub_analyses WHERE sub_id = %s",
                (sub_id,),
            )
            elapsed = cur.fetchone()["elapsed"].total_seconds()
            status["finished_batches"] = done
            # A sibling batch that already failed the sub-analysis keeps its message: a
            # batch finishing after it must not replace the error with a progress line.
            if status.get("state") != "failed":
                status["message"] = progress_message(len(done), total, elapsed)
            cur.execute("UPDATE image_sub_analyses SET status = %s WHERE sub_id = %s", (Json(status), sub_id))
            return status["message"]

    def add_outputs(self, sub_id: int, files: list[str], stamp: RunStamp | None = None) -> list[str]:
        """Record files a step of the running sub-analysis wrote (`status.outputs`, kept in
        order, without repeats); returns all recorded so far. They become `result.file_list`
        when the sub-analysis finishes. A stale run gets StaleRunError."""
        with self._cursor() as cur:
            status = _locked_status(cur, sub_id, stamp, "outputs")
            if status is None:
                raise StaleRunError(stale_message(sub_id, stamp))
            outputs = list(dict.fromkeys([*status.get("outputs", []), *files]))
            status["outputs"] = outputs
            cur.execute("UPDATE image_sub_analyses SET status = %s WHERE sub_id = %s", (Json(status), sub_id))
            return outputs

    @contextmanager
    def while_current(self, sub_id: int, stamp: RunStamp | None) -> Iterator[None]:
        """Hold the sub-analysis's row (and its analysis's) locked while the body runs,
        after checking that `stamp` is its current run; StaleRunError otherwise. A merge
        switches the results folder inside it: a re-run (which updates the row) cannot
        begin in between, and merges into one analysis's folder take turns."""
        with self._cursor() as cur:
            if _locked_status(cur, sub_id, stamp, "results") is None:
                raise StaleRunError(stale_message(sub_id, stamp))
            cur.execute(
                """SELECT 1 FROM image_analyses WHERE id = (
                               SELECT analysis_id FROM image_sub_analyses WHERE sub_id = %s) FOR UPDATE""",
                (sub_id,),
            )
            yield

    def mark_sub_finished(self, sub_id: int, result: dict[str, Any], stamp: RunStamp | None = None) -> bool:
        """Success: `finish` and `result`; the analysis finishes with its last sub-analysis.
        Refused (False) for a stale run."""
        with self._cursor() as cur:
            return _finish(cur, sub_id, result, stamp, None)

    def finish_with_outputs(
        self, sub_id: int, job_folder: str, stamp: RunStamp | None = None, checks: list[dict] | None = None
    ) -> dict | None:
        """Success, with `result = {"job_folder", "file_list"}`: the file list is every
        output the steps recorded (`add_outputs`), read and written in one transaction,
        with the quality checks' outcomes (`status.checks`) when given. None for a stale
        run (nothing recorded)."""
        with self._cursor() as cur:
            status = _locked_status(cur, sub_id, stamp, "finish")
            if status is None:
                return None
            result = {"job_folder": job_folder, "file_list": sorted(status.get("outputs", []))}
            return result if _finish(cur, sub_id, result, stamp, checks) else None

    def mark_sub_failed(
        self, sub_id: int, message: str, stamp: RunStamp | None = None, checks: list[dict] | None = None
    ) -> bool:
        """Failure: `error` and a readable message in `status` (with the quality checks'
        outcomes, `status.checks`, when given); the parent analysis fails too, and gets
        its notification. Only the first report of a failure is recorded (a hook and the
        run-status sensor may both see it), and none from a stale run; returns whether
        this call recorded it."""
        with self._cursor() as cur:
            cur.execute(
                sql.SQL("""UPDATE image_sub_analyses
                   SET error = now(), start = COALESCE(start, now()),
                       status = COALESCE(status, '{{}}'::jsonb) || %(checks)s::jsonb
                                || jsonb_build_object('state', 'failed', 'message', %(message)s::text)
                   WHERE sub_id = %(sub_id)s AND error IS NULL AND finish IS NULL AND {}
                   RETURNING analysis_id""").format(_GUARD),
                {"message": message, "sub_id": sub_id, "checks": _checks(checks), **_guard_params(stamp)},
            )
            row = cur.fetchone()
            if row is None:
                if stamp is not None:
                    _refused(cur, sub_id, stamp, "failure", quiet_if_current=True)
                return False
            analysis_message = f"sub-analysis {sub_id} failed: {message}"
            cur.execute(
                """UPDATE image_analyses
                   SET error = COALESCE(error, now()),
                       status = COALESCE(status, '{}'::jsonb)
                                || jsonb_build_object('state', 'failed', 'message', %s::text)
                   WHERE id = %s RETURNING id, error""",
                (analysis_message, row["analysis_id"]),
            )
            failed = cur.fetchone()
            if failed is not None:  # a second failure of the same analysis keeps its first `error`: no second row
                record_outcome(cur, failed["id"], state_of_failure(message), failed["error"], analysis_message)
            # Dependents never start; they say why.
            cur.execute(
                """WITH RECURSIVE dependents(sub_id) AS (
                       SELECT s.sub_id FROM image_sub_analyses s WHERE s.depends_on_sub_id @> %s::jsonb
                       UNION
                       SELECT s.sub_id FROM image_sub_analyses s, dependents d
                       WHERE s.depends_on_sub_id @> jsonb_build_array(d.sub_id))
                   UPDATE image_sub_analyses s
                   SET error = now(),
                       status = COALESCE(s.status, '{}'::jsonb) || jsonb_build_object(
                           'state', 'failed', 'message', %s::text)
                   FROM dependents d
                   WHERE s.sub_id = d.sub_id AND s.start IS NULL AND s.error IS NULL AND s.finish IS NULL""",
                (Json([sub_id]), dependency_failed_message(sub_id)),
            )
            return True
