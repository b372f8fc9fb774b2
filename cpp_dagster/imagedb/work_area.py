"""The imagedb side of the work-area clean-up (`cpp_dagster/work_area.py`): which
sub-analyses' work folders may go, decided from their rows, and the row held locked while
their folders are removed, so a re-run cannot begin in between.

Part of the one ImageDB API (`ImageDB` inherits `WorkAreaQueries`). Values travel as
query parameters; a `status.reruns` that is not a whole number counts as 0, as in
`ImageDB.rerun_generations`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from psycopg2 import sql

from cpp_dagster.imagedb.rows import RERUNS
from cpp_dagster.pg import Database

_STATE_SQL = sql.SQL("""
    SELECT sub_id, start, finish, error, result,
           {reruns} AS generation,
           COALESCE(finish, error) < now()::timestamp - make_interval(secs => %(retention_s)s) AS expired,
           now()::timestamp - COALESCE(finish, error) AS age
    FROM image_sub_analyses
""").format(reruns=RERUNS)


@dataclass(frozen=True)
class WorkAreaState:
    """What the clean-up needs to know of one sub-analysis."""

    sub_id: int
    state: str  # submitted (waiting, or a re-run requested), running, finished, failed
    generation: int  # its current re-run generation: folders g0..g<generation> are its
    expired: bool  # finished or failed longer ago than the retention
    age: dt.timedelta | None  # since it finished or failed
    result: Any  # `result` of a finished one ({"job_folder", "file_list"})


def _state(row: dict) -> WorkAreaState:
    if row["error"] is not None:
        state = "failed"
    elif row["finish"] is not None:
        state = "finished"
    elif row["start"] is not None:
        state = "running"
    else:
        state = "submitted"
    return WorkAreaState(row["sub_id"], state, row["generation"], bool(row["expired"]), row["age"], row["result"])


class WorkAreaQueries(Database):
    def work_area_states(self, sub_ids: list[int], retention_days: float) -> dict[int, WorkAreaState]:
        """The state of each of `sub_ids` that has a row (the others are left out)."""
        if not sub_ids:
            return {}
        with self._cursor() as cur:
            cur.execute(
                _STATE_SQL + sql.SQL(" WHERE sub_id = ANY(%(ids)s)"),
                {"ids": list(sub_ids), "retention_s": retention_days * 86400.0},
            )
            return {r["sub_id"]: _state(r) for r in cur.fetchall()}

    @contextmanager
    def while_work_area_expired(
        self,
        sub_id: int,
        retention_days: float,
        states: tuple[str, ...],
    ) -> Iterator[WorkAreaState | None]:
        """Hold the sub-analysis's row locked and yield its state if it is still in one of
        `states` and expired (else None): `cpp-dagster rerun` waits until the body (the
        removal of its folders) is done, and a row that changed since it was listed is
        left alone."""
        with self._cursor() as cur:
            cur.execute(
                _STATE_SQL + sql.SQL(" WHERE sub_id = %(id)s FOR UPDATE"),
                {"id": sub_id, "retention_s": retention_days * 86400.0},
            )
            row = cur.fetchone()
            state = _state(row) if row is not None else None
            yield state if state is not None and state.expired and state.state in states else None
