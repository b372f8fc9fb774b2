"""imagedb queries for the Dagster UI's front door: the plates and pipelines the partitions
are made of, and a submission made by a run launched from the UI (Materialize or a
backfill over plate x pipeline partitions).

Such a run *is* the submission: its first step creates the analysis and its
sub-analyses (the same rows as `cpp-dagster submit` and the automation rules) and, when
the plate acquisition is finished, claims them (`status.claimed_by_run`), so that the
sensor never launches them too and the run runs them itself, in dependency order. A
plate whose acquisition is not finished is submitted without a claim: the sensor
launches it once the acquisition finishes. Idempotent per run: every step of the run
(and a re-execution of it, which has the same root run) finds the same analysis.

Part of the one ImageDB API (`ImageDB` inherits `RunClaims`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from psycopg2.extras import Json

from cpp_dagster.imagedb.rows import ImageDBError, SubmittedAnalysis
from cpp_dagster.imagedb.submission import submit_rows
from cpp_dagster.pg import Database


@dataclass(frozen=True)
class RunSubmission:
    """What a UI run's submission found or made: the analysis, its sub-analyses, and
    whether this run runs them (False: the acquisition is not finished, or the run
    only submits: `claim` chose none)."""

    analysis: SubmittedAnalysis
    claimed: bool
    acquisition_finished: bool


class RunClaims(Database):
    def plate_acquisitions_by_id(self) -> dict[int, str]:
        """Every plate acquisition's barcode, by id (what the plate partitions are made of)."""
        with self._cursor() as cur:
            cur.execute("SELECT id, plate_barcode FROM plate_acquisition ORDER BY id")
            return {r["id"]: r["plate_barcode"] for r in cur.fetchall()}

    def plate_acquisitions_like(self, barcode: str, acq_id: int | None = None) -> dict[int, str]:
        """The barcode of every acquisition of `barcode`, and of acquisition `acq_id`, by
        id: what a plate key can name (`partitions.plate_keys` on them gives their keys)."""
        with self._cursor() as cur:
            cur.execute(
                "SELECT id, plate_barcode FROM plate_acquisition WHERE plate_barcode = %s OR id = %s", (barcode, acq_id)
            )
            return {r["id"]: r["plate_barcode"] for r in cur.fetchall()}

    def pipeline_names(self) -> list[str]:
        with self._cursor() as cur:
            cur.execute("SELECT name FROM analysis_pipelines ORDER BY name")
            return [r["name"] for r in cur.fetchall()]

    def pipeline_sub_types(self, pipeline_name: str) -> list[str | None]:
        """The sub_type of each sub-analysis the pipeline submits, in order (None: not set)."""
        with self._cursor() as cur:
            cur.execute("SELECT meta FROM analysis_pipelines WHERE name = %s", (pipeline_name,))
            row = cur.fetchone()
        if row is None:
            raise ImageDBError(f"no analysis pipeline named {pipeline_name!r}")
        subs = row["meta"].get("sub_analyses") if isinstance(row["meta"], dict) else None
        if not isinstance(subs, list) or not all(isinstance(s, dict) for s in subs):
            raise ImageDBError(f"pipeline {pipeline_name!r}: 'sub_analyses' must be a list of JSON objects")
        return [s.get("sub_type") for s in subs]

    def submit_for_run(
        self,
        plate_acquisition_id: int,
        pipeline_name: str,
        run_id: str,
        claim: Callable[[Sequence[str | None]], set[int]],
    ) -> RunSubmission:
        """The analysis run `run_id` submitted for this plate acquisition and pipeline:
        found when it exists, else submitted now. When the acquisition is finished, the
        sub-analyses at the positions `claim(sub_types)` returns are claimed by the run
        (the others are the sensor's, e.g. a second step of the same kind). One
        transaction under a lock on the run, so the run's steps, even in parallel
        processes, agree on one analysis."""
        with self._cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"cpp-dagster run {run_id}",))
            cur.execute(
                "SELECT finished IS NOT NULL AS finished FROM plate_acquisition WHERE id = %s", (plate_acquisition_id,)
            )
            row = cur.fetchone()
            if row is None:
                raise ImageDBError(f"no plate acquisition {plate_acquisition_id}")
            finished = row["finished"]
            cur.execute(
                """SELECT a.id, (a.status->>'claimed')::boolean AS claimed,
                          COALESCE(array_agg(s.sub_id ORDER BY s.sub_id) FILTER (WHERE s.sub_id IS NOT NULL),
                                   '{}') AS sub_ids
                   FROM image_analyses a LEFT JOIN image_sub_analyses s ON s.analysis_id = a.id
                   WHERE a.status->>'submitted_by_run' = %s AND a.plate_acquisition_id = %s
                     AND a.pipeline_name = %s
                   GROUP BY a.id""",
                (run_id, plate_acquisition_id, pipeline_name),
            )
            found = cur.fetchone()
            if found is not None:
                return RunSubmission(
                    SubmittedAnalysis(found["id"], list(found["sub_ids"])), bool(found["claimed"]), finished
                )
            submitted = submit_rows(cur, plate_acquisition_id, pipeline_name, None, {})
            chosen: list[int] = []
            if finished:
                cur.execute(
                    "SELECT sub_id, meta->>'sub_type' AS sub_type FROM image_sub_analyses "
                    "WHERE analysis_id = %s ORDER BY sub_id",
                    (submitted.analysis_id,),
                )
                rows = cur.fetchall()
                chosen = [rows[i]["sub_id"] for i in sorted(claim([r["sub_type"] for r in rows]))]
            cur.execute(
                "UPDATE image_analyses SET status = COALESCE(status, '{}'::jsonb) || %s WHERE id = %s",
                (Json({"submitted_by_run": run_id, "claimed": bool(chosen)}), submitted.analysis_id),
            )
            if chosen:
                cur.execute(
                    """UPDATE image_sub_analyses
                       SET status = jsonb_build_object('state', 'submitted', 'claimed_by_run', %s::text,
                                                       'message', 'submitted from the Dagster UI; run ' || %s::text)
                       WHERE sub_id = ANY(%s)""",
                    (run_id, run_id, chosen),
                )
            return RunSubmission(submitted, bool(chosen), finished)

    def analysis_of_run(self, run_id: str) -> int | None:
        """The analysis a UI run submitted (None for a run that submitted none)."""
        with self._cursor() as cur:
            cur.execute(
                "SELECT id FROM image_analyses WHERE status->>'submitted_by_run' = %s ORDER BY id LIMIT 1", (run_id,)
            )
            row = cur.fetchone()
        return row["id"] if row else None
