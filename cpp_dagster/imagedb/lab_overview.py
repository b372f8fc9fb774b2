"""The lab overview query: every plate acquisition with the sub-analyses of its latest
analysis per pipeline (or of every analysis), their state, their dependencies' states,
progress or failure message and result folder, as typed rows.

Part of the one ImageDB API (`ImageDB` inherits `OverviewQueries`). Read-only; values
travel as query parameters, the table aliases are composed with psycopg2.sql. Like
ready.py, it must not fail on one malformed row: every JSON access is guarded with
`jsonb_typeof` (a `->` on a list or a scalar is NULL, never an error) and the
dependency list is read through ready.py's guarded expressions. The reasons and the
tables built from these rows are pure functions in `cpp_dagster/overview.py`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from psycopg2 import sql

from cpp_dagster.imagedb.ready import DEPENDENCY_ID_SQL, DEPENDENCY_IDS_SQL, WELL_FORMED_SQL, shape_problem
from cpp_dagster.pg import Database


@dataclass(frozen=True)
class Dependency:
    """One entry of a sub-analysis's `depends_on_sub_id` and that sub-analysis's state
    (`waiting`, `running`, `finished`, `failed`, or `missing` when there is no such row)."""

    sub_id: int
    state: str


@dataclass(frozen=True)
class OverviewRow:
    """One sub-analysis of an analysis of a plate acquisition. An analysis without
    sub-analyses (an automatic submission that failed) has `sub_id` None; a plate
    acquisition without any analysis has `analysis_id` None (state `not run`)."""

    plate_acquisition_id: int
    plate_barcode: str
    barcode_acquisitions: int  # acquisitions registered under this barcode
    acquisition_finished: bool
    analysis_id: int | None = None
    pipeline_name: str | None = None
    analysis_failed: bool = False
    sub_id: int | None = None
    stage: int | None = None  # position in its analysis, from 1
    stages: int | None = None
    sub_type: str | None = None
    state: str = "not run"  # waiting / running / finished / failed / not run
    message: str | None = None  # status.message (of the analysis when sub_id is None)
    job_folder: str | None = None  # result.job_folder
    dependencies: tuple[Dependency, ...] = ()
    shape_problem: str | None = None  # why the sensor will refuse a waiting row, if it will
    start: dt.datetime | None = None
    finish: dt.datetime | None = None
    error: dt.datetime | None = None


def _state(alias: str) -> sql.Composable:
    """The state of an imagedb analysis or sub-analysis row from its columns (not from
    `status.state`, which a script may have left stale): error wins over finish."""
    t = sql.Identifier(alias)
    return sql.SQL("""(CASE WHEN {t}.error IS NOT NULL THEN 'failed' WHEN {t}.finish IS NOT NULL THEN 'finished'
                           WHEN {t}.start IS NOT NULL THEN 'running' ELSE 'waiting' END)""").format(t=t)


def _text(alias: str, column: str, key: str) -> sql.Composable:
    """`alias.column ->> key` when that is a JSON string; NULL for any other shape."""
    field = sql.SQL("{}.{} -> {}").format(sql.Identifier(alias), sql.Identifier(column), sql.Literal(key))
    return sql.SQL("(CASE WHEN jsonb_typeof({f}) = 'string' THEN {f} #>> '{{}}' END)").format(f=field)


_OVERVIEW = sql.SQL("""
WITH p AS (
    SELECT p.id, p.plate_barcode, p.finished IS NOT NULL AS acquisition_finished,
           count(*) OVER (PARTITION BY p.plate_barcode) AS barcode_acquisitions
    FROM plate_acquisition p
    WHERE %(barcode)s::text IS NULL OR p.plate_barcode = %(barcode)s::text
)
SELECT p.id AS plate_acquisition_id, p.plate_barcode, p.barcode_acquisitions::int AS barcode_acquisitions,
       p.acquisition_finished, a.id AS analysis_id, a.pipeline_name,
       COALESCE(a.error IS NOT NULL, false) AS analysis_failed,
       s.sub_id, s.stage::int AS stage, s.stages::int AS stages, {sub_type} AS sub_type,
       CASE WHEN a.id IS NULL THEN 'not run' WHEN s.sub_id IS NULL THEN {analysis_state} ELSE {sub_state} END
           AS state,
       CASE WHEN s.sub_id IS NULL THEN {analysis_message} ELSE {sub_message} END AS message,
       {job_folder} AS job_folder,
       COALESCE(deps.dependencies, '[]'::jsonb) AS dependencies,
       CASE WHEN s.sub_id IS NOT NULL AND NOT {well_formed} THEN jsonb_build_object(
           'meta_type', jsonb_typeof(COALESCE(s.meta, '{{}}'::jsonb)),
           'deps_type', jsonb_typeof(COALESCE(s.depends_on_sub_id, '[]'::jsonb)),
           'deps_text', left(s.depends_on_sub_id::text, 200)) END AS shape,
       COALESCE(s.start, a.start) AS start, COALESCE(s.finish, a.finish) AS finish,
       COALESCE(s.error, a.error) AS error
FROM p
-- per acquisition through its index: a join to all analyses ranked at once was planned as a
-- nested loop over every (acquisition, analysis) pair (3 s at 5,000 acquisitions)
LEFT JOIN LATERAL (
    SELECT a.* FROM (
        SELECT a.*, row_number() OVER (PARTITION BY a.pipeline_name ORDER BY a.id DESC) AS recency
        FROM image_analyses a WHERE a.plate_acquisition_id = p.id
    ) a
    WHERE a.recency = 1 OR NOT %(latest)s
) a ON true
LEFT JOIN LATERAL (
    SELECT s.*, row_number() OVER (ORDER BY s.sub_id) AS stage, count(*) OVER () AS stages
    FROM image_sub_analyses s WHERE s.analysis_id = a.id
) s ON true
LEFT JOIN LATERAL (
    SELECT jsonb_agg(jsonb_build_object('sub_id', {dep_id}, 'state',
                                        CASE WHEN dep.sub_id IS NULL THEN 'missing' ELSE {dep_state} END))
               AS dependencies
    FROM {dependencies}
    LEFT JOIN image_sub_analyses dep ON dep.sub_id = {dep_id}
    WHERE {dep_id} IS NOT NULL
) deps ON s.sub_id IS NOT NULL
ORDER BY p.plate_barcode, p.id, a.pipeline_name, a.id, s.sub_id
""").format(
    sub_type=_text("s", "meta", "sub_type"),
    analysis_state=_state("a"),
    sub_state=_state("s"),
    dep_state=_state("dep"),
    analysis_message=_text("a", "status", "message"),
    sub_message=_text("s", "status", "message"),
    job_folder=_text("s", "result", "job_folder"),
    well_formed=sql.SQL(WELL_FORMED_SQL),
    dependencies=sql.SQL(DEPENDENCY_IDS_SQL),
    dep_id=sql.SQL(DEPENDENCY_ID_SQL),
)


class OverviewQueries(Database):
    def lab_overview(self, *, plate_barcode: str | None = None, all_analyses: bool = False) -> list[OverviewRow]:
        """One row per sub-analysis of the latest analysis per (plate acquisition,
        pipeline), or of every analysis with `all_analyses`; one `not run` row per plate
        acquisition without analyses. Only plate `plate_barcode` when given (no rows:
        no such barcode). Ordered by barcode, acquisition, pipeline, analysis, sub-analysis."""
        with self._cursor() as cur:
            cur.execute(_OVERVIEW, {"barcode": plate_barcode, "latest": not all_analyses})
            rows = cur.fetchall()
        return [_row(r) for r in rows]


def _row(r: dict) -> OverviewRow:
    shape = r.pop("shape")
    deps = tuple(Dependency(d["sub_id"], d["state"]) for d in r.pop("dependencies"))
    problem = shape_problem(shape["meta_type"], shape["deps_type"], shape["deps_text"] or "") if shape else None
    return OverviewRow(**r, dependencies=deps, shape_problem=problem)
