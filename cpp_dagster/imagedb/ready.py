"""imagedb queries of the launch side: which submitted sub-analyses the sensor may launch
now, and which can never start and must fail at once with the reason (a row whose JSON
has the wrong shape, a dependency that does not exist or has already failed, a
cycle of dependencies).

Part of the one ImageDB API (`ImageDB` inherits `LaunchQueries`); kept in its own module
so that store.py stays readable. Values always travel as query parameters. No query here
may fail on one malformed row: every JSON access is guarded with `jsonb_typeof` inside a
CASE (PostgreSQL does not promise the order in which AND-ed conditions are evaluated).
"""

from __future__ import annotations

from dataclasses import dataclass

from cpp_dagster.imagedb.rows import ReadySubAnalysis
from cpp_dagster.pg import Database

DEFAULT_PRIORITY = 2  # imagedb: 1 = high; NULL is treated as normal

_SUBMITTED = "s.start IS NULL AND s.error IS NULL AND s.finish IS NULL"
# A sub-analysis a run launched from the UI submitted and runs itself (run_claims.py):
# never the sensor's to launch. `->>` is NULL on a status that is not an object.
_NOT_CLAIMED = "s.status->>'claimed_by_run' IS NULL"
# The dependency ids of sub-analysis `s`, as text; none when depends_on_sub_id is not a list.
DEPENDENCY_IDS_SQL = (
    "jsonb_array_elements_text(CASE WHEN jsonb_typeof(s.depends_on_sub_id) = 'array' "
    "THEN s.depends_on_sub_id ELSE '[]'::jsonb END) AS d(dep_id)"
)
# One dependency id as an integer; NULL when it is not a whole number that fits.
DEPENDENCY_ID_SQL = "(CASE WHEN d.dep_id ~ '^[0-9]{1,9}$' THEN d.dep_id::integer END)"
# `s` has the JSON shapes the launch path relies on: meta an object (or NULL), and
# depends_on_sub_id a list (or NULL) of whole numbers.
WELL_FORMED_SQL = f"""(
    jsonb_typeof(COALESCE(s.meta, '{{}}'::jsonb)) = 'object'
    AND CASE WHEN jsonb_typeof(COALESCE(s.depends_on_sub_id, '[]'::jsonb)) = 'array'
             THEN NOT EXISTS (SELECT 1 FROM {DEPENDENCY_IDS_SQL} WHERE {DEPENDENCY_ID_SQL} IS NULL)
             ELSE false END)"""

_KIND = {
    "array": "a list",
    "object": "an object",
    "string": "a string",
    "number": "a number",
    "boolean": "true or false",
    "null": "null",
}

# `not started: it depends on sub-analysis N, which failed` (or `..., which does not exist`)
_DEPENDS_ON = "not started: it depends on sub-analysis "
_FAILED, _MISSING = ", which failed", ", which does not exist"
# `not started: its dependencies form a cycle (sub-analysis 5 -> 7 -> 5): ...`
_CYCLE, _FOREVER = "not started: its dependencies form a cycle (sub-analysis ", "): it would wait forever"


def dependency_failed_message(sub_id: int) -> str:
    return f"{_DEPENDS_ON}{sub_id}{_FAILED}"


@dataclass(frozen=True)
class Unlaunchable:
    """A submitted sub-analysis that can never be launched, and why (for imagedb's status)."""

    sub_id: int
    message: str


def shape_problem(meta_type: str, deps_type: str, deps_text: str) -> str:
    if meta_type != "object":
        return f"not launched: meta must be a JSON object, not {_KIND.get(meta_type, meta_type)}"
    shown = deps_text if len(deps_text) <= 80 else deps_text[:77] + "..."
    if deps_type != "array":
        return (
            f"not launched: depends_on_sub_id must be a list of sub-analysis ids, "
            f"not {_KIND.get(deps_type, deps_type)} ({shown})"
        )
    return f"not launched: depends_on_sub_id must be a list of sub-analysis ids (whole numbers), not {shown}"


class LaunchQueries(Database):
    def ready_sub_analyses(self, *, limit: int = 500, after: tuple[int, int] | None = None) -> list[ReadySubAnalysis]:
        """Submitted sub-analyses (no start, no error, no finish) whose acquisition is
        finished and whose dependencies are all finished, by priority (1 first) then id.
        Rows of the wrong JSON shape are left out (see `malformed_sub_analyses`).
        Keyset-paged: pass the (priority, sub_id) of the last row as `after`."""
        after_priority, after_id = after if after else (-(2**31), -1)
        with self._cursor() as cur:
            cur.execute(
                # The candidates (joins, cheap filters, keyset) are sorted first; OFFSET 0 keeps
                # the dependency check out of that query, so it runs on them in order only until
                # `limit` pass, and cannot skew the planning of the joins. A scalar subquery keeps
                # it one primary-key probe per dependency (a join may scan the table per candidate).
                f"""SELECT s.sub_id, s.analysis_id, s.plate_acquisition_id, s.plate_barcode, s.priority, s.meta,
                          s.pipeline_name
                   FROM (
                       SELECT s.sub_id, s.analysis_id, s.plate_acquisition_id, p.plate_barcode, a.pipeline_name,
                              COALESCE(s.priority, a.priority, %(default)s) AS priority,
                              COALESCE(s.meta, '{{}}'::jsonb) AS meta, s.depends_on_sub_id
                       FROM image_sub_analyses s
                       JOIN plate_acquisition p ON p.id = s.plate_acquisition_id
                       JOIN image_analyses a ON a.id = s.analysis_id
                       WHERE {_SUBMITTED} AND {_NOT_CLAIMED} AND a.error IS NULL AND p.finished IS NOT NULL
                         AND (COALESCE(s.priority, a.priority, %(default)s), s.sub_id) > (%(ap)s, %(aid)s)
                         AND {WELL_FORMED_SQL}
                       ORDER BY 6, 1
                       OFFSET 0
                   ) s
                   -- every dependency finished; a missing one counts as unfinished
                   WHERE NOT EXISTS (
                       SELECT 1 FROM {DEPENDENCY_IDS_SQL}
                       WHERE (SELECT dep.finish FROM image_sub_analyses dep WHERE dep.sub_id = {DEPENDENCY_ID_SQL}) IS NULL)
                   ORDER BY s.priority, s.sub_id
                   LIMIT %(limit)s""",
                {"default": DEFAULT_PRIORITY, "ap": after_priority, "aid": after_id, "limit": limit},
            )
            return [ReadySubAnalysis(**r) for r in cur.fetchall()]

    def malformed_sub_analyses(self, *, limit: int = 500) -> list[Unlaunchable]:
        """Submitted sub-analyses whose `meta` is not a JSON object or whose
        `depends_on_sub_id` is not a list of sub-analysis ids, with a message that names
        the field. The sensor fails them (`mark_sub_failed`); the ready query skips them."""
        with self._cursor() as cur:
            cur.execute(
                f"""SELECT s.sub_id, jsonb_typeof(COALESCE(s.meta, '{{}}'::jsonb)) AS meta_type,
                           jsonb_typeof(COALESCE(s.depends_on_sub_id, '[]'::jsonb)) AS deps_type,
                           left(s.depends_on_sub_id::text, 200) AS deps_text
                    FROM image_sub_analyses s
                    WHERE {_SUBMITTED} AND NOT {WELL_FORMED_SQL}
                    ORDER BY s.sub_id LIMIT %s""",
                (limit,),
            )
            return [
                Unlaunchable(r["sub_id"], shape_problem(r["meta_type"], r["deps_type"], r["deps_text"] or ""))
                for r in cur.fetchall()
            ]

    def fail_unresolvable_dependencies(self, *, max_depth: int = 20) -> list[Unlaunchable]:
        """Fail now, with the reason, every submitted sub-analysis that depends on one that
        does not exist or has already failed, or whose dependencies lead back to itself
        (its analysis fails too, as with `mark_sub_failed`); such a dependent would
        otherwise wait forever, silently. The cycles fail first; then the statement for
        missing and failed dependencies is repeated (same transaction) so that a chain of
        dependents fails at once, each naming its own dependency. Returns what it failed."""
        failed: list[Unlaunchable] = []
        with self._cursor() as cur:
            cur.execute(_FAIL_CYCLES, {"cycle": _CYCLE, "forever": _FOREVER, "depth": max_depth})
            failed += [Unlaunchable(r["sub_id"], r["message"]) for r in cur.fetchall()]
            for _ in range(max_depth):
                cur.execute(_FAIL_UNRESOLVABLE, {"depends_on": _DEPENDS_ON, "failed": _FAILED, "missing": _MISSING})
                rows = [Unlaunchable(r["sub_id"], r["message"]) for r in cur.fetchall()]
                failed += rows
                if not rows:
                    break
        return failed


def _fail_blocked(blocked: str) -> str:
    """One statement: the sub-analyses the CTE `blocked` (sub_id, message) names fail with
    its message, and their analyses fail too."""
    return f"""
WITH RECURSIVE {blocked}, failed AS (
    UPDATE image_sub_analyses s
    SET error = now(),
        status = COALESCE(s.status, '{{}}'::jsonb) || jsonb_build_object('state', 'failed', 'message', b.message)
    FROM blocked b
    WHERE s.sub_id = b.sub_id AND {_SUBMITTED}
    RETURNING s.sub_id, s.analysis_id, b.message
), failed_analyses AS (
    UPDATE image_analyses a
    SET error = COALESCE(a.error, now()),
        status = COALESCE(a.status, '{{}}'::jsonb) || jsonb_build_object(
            'state', 'failed', 'message', 'sub-analysis ' || f.sub_id || ' failed: ' || f.message)
    FROM failed f
    WHERE a.id = f.analysis_id
    RETURNING a.id
)
SELECT sub_id, message FROM failed ORDER BY sub_id"""


# The blocked sub-analyses: their first missing, else first failed dependency.
_FAIL_UNRESOLVABLE = _fail_blocked(f"""blocked AS (
    SELECT DISTINCT ON (s.sub_id) s.sub_id,
           %(depends_on)s || d.dep_id || CASE WHEN dep.sub_id IS NULL THEN %(missing)s ELSE %(failed)s END
               AS message
    FROM image_sub_analyses s
    CROSS JOIN LATERAL {DEPENDENCY_IDS_SQL}
    LEFT JOIN image_sub_analyses dep ON dep.sub_id = {DEPENDENCY_ID_SQL}
    WHERE {_SUBMITTED} AND {WELL_FORMED_SQL}
      AND (dep.sub_id IS NULL OR dep.error IS NOT NULL)
    ORDER BY s.sub_id, (dep.sub_id IS NULL) DESC, {DEPENDENCY_ID_SQL}
)""")

# The sub-analyses on a cycle of dependencies (one that depends on itself included),
# each with its shortest cycle: `walk` follows every submitted sub-analysis's
# dependencies that have not started, never visiting one twice, up to %(depth)s deep.
_FAIL_CYCLES = _fail_blocked(f"""walk(start_id, sub_id, path) AS (
    SELECT s.sub_id, s.sub_id, ARRAY[s.sub_id]
    FROM image_sub_analyses s
    WHERE {_SUBMITTED} AND {WELL_FORMED_SQL}
  UNION ALL
    SELECT w.start_id, dep.sub_id, w.path || dep.sub_id
    FROM walk w
    JOIN image_sub_analyses s ON s.sub_id = w.sub_id
    CROSS JOIN LATERAL {DEPENDENCY_IDS_SQL}
    JOIN image_sub_analyses dep ON dep.sub_id = {DEPENDENCY_ID_SQL}
    WHERE dep.start IS NULL AND dep.error IS NULL AND dep.finish IS NULL
      AND NOT dep.sub_id = ANY(w.path) AND cardinality(w.path) < %(depth)s
), blocked AS (
    SELECT DISTINCT ON (w.start_id) w.start_id AS sub_id,
           %(cycle)s || array_to_string(w.path || w.start_id, ' -> ') || %(forever)s AS message
    FROM walk w
    JOIN image_sub_analyses s ON s.sub_id = w.sub_id
    CROSS JOIN LATERAL {DEPENDENCY_IDS_SQL}
    WHERE {DEPENDENCY_ID_SQL} = w.start_id
    ORDER BY w.start_id, cardinality(w.path), w.path
)""")
