"""The outbox of the lab's notifications: one row of `image_analyses_notifications` per
analysis outcome, written in the same transaction as the outcome itself (outcome.py,
submission.py), so an outcome is never recorded without its notification, nor twice:
the row's key is (analysis, state, the analysis's `finish` or `error` timestamp), and a
second report of the same failure (the failure hook and a run-status sensor, a second
sub-analysis of the analysis failing) keeps the first timestamp, so it adds no row. A
re-run that finishes (or fails again) is a new outcome with a row of its own.

The notify_lab sensor drains it (`analysis/notify.py`): it claims one due row at a time
with a lease (`claimed_until`), under FOR UPDATE SKIP LOCKED, so two ticks at once never
hold the same row; records each destination that answered 2xx at once (`sent_to`), so a
retry goes only to the destinations that have not got it; and ends the attempt (`done`,
or the next attempt after a backoff and the error). Part of the one ImageDB API.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from cpp_dagster.pg import Database

FINISHED, FAILED, CANCELLED = "finished", "failed", "cancelled"
CANCELLED_PREFIX = "cancelled:"  # the message of a sub-analysis whose run was cancelled (sensors.py)
MAX_MESSAGE = 4000  # characters of a message kept in the outbox (a failure can carry a long log tail)


def state_of_failure(message: str) -> str:
    return CANCELLED if message.startswith(CANCELLED_PREFIX) else FAILED


def record_outcome(cur, analysis_id: int, state: str, outcome_at: dt.datetime, message: str) -> None:
    """The notification of one analysis outcome, inside the caller's transaction; nothing
    when that outcome already has one."""
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 1] + "…"
    cur.execute(
        """INSERT INTO image_analyses_notifications (analysis_id, state, outcome_at, message)
           VALUES (%s, %s, %s, %s) ON CONFLICT (analysis_id, state, outcome_at) DO NOTHING""",
        (analysis_id, state, outcome_at, message),
    )


def finished_message(cur, analysis_id: int) -> str:
    """`finished (2 sub-analyses)`, and the quality checks that did not pass (status.checks)."""
    cur.execute("SELECT status FROM image_sub_analyses WHERE analysis_id = %s ORDER BY sub_id", (analysis_id,))
    statuses = [r["status"] for r in cur.fetchall()]
    failing = [
        f"{c.get('name')}: {c.get('message')}"
        for s in statuses
        if isinstance(s, dict) and isinstance(s.get("checks"), list)
        for c in s["checks"]
        if isinstance(c, dict) and c.get("passed") is False
    ]
    text = f"finished ({len(statuses)} sub-analys{'is' if len(statuses) == 1 else 'es'})"
    return text + (f"; quality warnings: {'; '.join(failing)}" if failing else "")


@dataclass(frozen=True)
class PendingNotification:
    """A claimed outcome, with what its message says: the analysis's plate and pipeline,
    and its result folder (`result.job_folder`, relative to the NAS) when it has one."""

    id: int
    analysis_id: int
    state: str
    outcome_at: dt.datetime
    message: str
    attempts: int  # this one included
    sent_to: tuple[str, ...]
    plate_acquisition_id: int | None
    plate_barcode: str | None
    pipeline_name: str | None
    job_folder: str | None


@dataclass(frozen=True)
class NotificationRecord:
    """A row of the outbox as it stands (what an operator or a test reads back)."""

    id: int
    analysis_id: int
    state: str
    message: str
    sent_to: tuple[str, ...]
    attempts: int
    done: dt.datetime | None
    last_error: str | None


class NotificationQueries(Database):
    def claim_notification(
        self, destinations: Sequence[str], *, lease_s: float, give_up_after_s: float
    ) -> PendingNotification | None:
        """The oldest due outcome that one of `destinations` has not got, claimed for
        `lease_s` seconds (its attempt counted); None when there is none. Outcomes older
        than `give_up_after_s` are no longer claimed."""
        if not destinations:
            return None
        with self._cursor() as cur:
            cur.execute(
                """WITH claimed AS (
                       UPDATE image_analyses_notifications n
                       SET claimed_until = now() + make_interval(secs => %(lease)s), attempts = n.attempts + 1
                       WHERE n.id = (
                           SELECT id FROM image_analyses_notifications
                           WHERE done IS NULL AND next_attempt <= now()
                             AND (claimed_until IS NULL OR claimed_until < now())
                             AND NOT (sent_to @> %(destinations)s::text[])
                             AND created > now() - make_interval(secs => %(give_up)s)
                           ORDER BY next_attempt, id LIMIT 1 FOR UPDATE SKIP LOCKED)
                       RETURNING n.*)
                   SELECT c.id, c.analysis_id, c.state, c.outcome_at, COALESCE(c.message, '') AS message,
                          c.attempts, c.sent_to, a.plate_acquisition_id, p.plate_barcode, a.pipeline_name,
                          CASE WHEN jsonb_typeof(a.result) = 'object' AND jsonb_typeof(a.result->'job_folder') = 'string'
                               THEN a.result->>'job_folder' END AS job_folder
                   FROM claimed c
                   LEFT JOIN image_analyses a ON a.id = c.analysis_id
                   LEFT JOIN plate_acquisition p ON p.id = a.plate_acquisition_id""",
                {"lease": float(lease_s), "destinations": list(destinations), "give_up": float(give_up_after_s)},
            )
            row = cur.fetchone()
        if row is None:
            return None
        return PendingNotification(**{**row, "sent_to": tuple(row["sent_to"])})

    def record_delivery(self, notification_id: int, destination: str) -> None:
        """`destination` answered 2xx: it never gets this outcome again."""
        with self._cursor() as cur:
            cur.execute(
                """UPDATE image_analyses_notifications SET sent_to = array_append(sent_to, %s)
                   WHERE id = %s AND NOT (%s = ANY(sent_to))""",
                (destination, notification_id, destination),
            )

    def end_attempt(
        self, notification_id: int, destinations: Sequence[str], *, error: str | None, retry_in_s: float
    ) -> bool:
        """Release the claim: done when every one of `destinations` has the outcome, else
        due again in `retry_in_s` seconds with `error` kept. Returns whether it is done."""
        with self._cursor() as cur:
            cur.execute(
                """UPDATE image_analyses_notifications
                   SET claimed_until = NULL,
                       done = CASE WHEN sent_to @> %(destinations)s::text[] THEN now() END,
                       last_error = CASE WHEN sent_to @> %(destinations)s::text[] THEN NULL ELSE %(error)s END,
                       next_attempt = now() + make_interval(secs => %(retry)s)
                   WHERE id = %(id)s RETURNING done IS NOT NULL AS done""",
                {
                    "destinations": list(destinations),
                    "error": error,
                    "retry": float(retry_in_s),
                    "id": notification_id,
                },
            )
            row = cur.fetchone()
        return bool(row and row["done"])

    def close_notifications_unsent(self, reason: str) -> int:
        """With no destination configured, the waiting outcomes are closed unsent (`reason`
        kept): a destination configured later starts with the outcomes from then on."""
        with self._cursor() as cur:
            cur.execute(
                "UPDATE image_analyses_notifications SET done = now(), last_error = %s WHERE done IS NULL",
                (reason,),
            )
            return cur.rowcount

    def notifications_of(self, analysis_id: int) -> list[NotificationRecord]:
        with self._cursor() as cur:
            cur.execute(
                """SELECT id, analysis_id, state, COALESCE(message, '') AS message, sent_to, attempts, done,
                          last_error
                   FROM image_analyses_notifications WHERE analysis_id = %s ORDER BY id""",
                (analysis_id,),
            )
            return [NotificationRecord(**{**r, "sent_to": tuple(r["sent_to"])}) for r in cur.fetchall()]
