"""The one API that talks to imagedb (`ImageDB`): every query of the project lives here
or in the modules ImageDB inherits: `ready.py` (the launch side: ready, malformed,
unresolvable dependencies), `outcome.py` (the write-back of a run's outcome),
`overview.py` (the lab overview of `cpp-dagster status`), `work_area.py` (what
`cpp-dagster gc` may clean), `pipelines.py` (the versions of `cpp-dagster pipeline`) and `notifications.py` (the outbox of the lab's notifications); `submission.py` holds the rows a submission writes, shared
with run_claims.py (a run launched from the UI).

Values always travel as query parameters; the few identifiers are composed with
psycopg2.sql. Each public method is one transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import psycopg2
import psycopg2.extras
from psycopg2 import sql
from psycopg2.extras import Json

from cpp_dagster.imagedb.lab_overview import OverviewQueries
from cpp_dagster.imagedb.notifications import NotificationQueries
from cpp_dagster.imagedb.outcome import (
    SubAnalysisOutcomes,
    revive_after_success,
)
from cpp_dagster.imagedb.pipelines import PipelineVersions
from cpp_dagster.imagedb.ready import (
    LaunchQueries,
)
from cpp_dagster.imagedb.rows import (
    RERUNS,
    Image,
    ImageDBError,
    PlateAcquisition,
    SubAnalysis,
    SubAnalysisToRun,
    SubmittedAnalysis,
)
from cpp_dagster.imagedb.run_claims import RunClaims
from cpp_dagster.imagedb.submission import one_row, submit_isolated, submit_rows
from cpp_dagster.imagedb.work_area import WorkAreaQueries

SUB_ANALYSIS_FIELDS = (
    "sub_id",
    "analysis_id",
    "plate_acquisition_id",
    "depends_on_sub_id",
    "priority",
    "start",
    "finish",
    "error",
    "status",
    "result",
)
ACQUISITION_FIELDS = ("plate_barcode", "name", "project", "channel_map_id", "timepoint", "folder", "finished")


class ImageDB(
    LaunchQueries,
    SubAnalysisOutcomes,
    OverviewQueries,
    RunClaims,
    WorkAreaQueries,
    PipelineVersions,
    NotificationQueries,
):
    """Every imagedb query: the launch side from ready.py, the write-back from outcome.py,
    the lab overview from overview.py, the UI's submissions from run_claims.py, the work
    area's cleaning from work_area.py, the pipelines' versions from pipelines.py, the lab's
    notifications from notifications.py."""

    SCHEMA_PACKAGE = "cpp_dagster.imagedb"

    # --- registration (the ingest service's side, used by the demo and tests)

    def put_channel_map(self, map_id: int, dyes: dict[int, str]) -> None:
        with self._cursor() as cur:
            cur.execute("DELETE FROM channel_map WHERE map_id = %s", (map_id,))
            psycopg2.extras.execute_values(
                cur,
                "INSERT INTO channel_map (map_id, channel, dye, name) VALUES %s",
                [(map_id, ch, dye, dye) for ch, dye in sorted(dyes.items())],
            )

    def add_plate_acquisition(
        self,
        plate_barcode: str,
        *,
        channel_map_id: int,
        folder: str,
        name: str | None = None,
        project: str | None = None,
        microscope: str | None = None,
        timepoint: int = 1,
    ) -> int:
        with self._cursor() as cur:
            cur.execute(
                """INSERT INTO plate_acquisition
                       (plate_barcode, name, project, imaged, microscope, channel_map_id, timepoint, folder)
                   VALUES (%s, %s, %s, now(), %s, %s, %s, %s) RETURNING id""",
                (plate_barcode, name or plate_barcode, project, microscope, channel_map_id, timepoint, folder),
            )
            return cur.fetchone()["id"]

    def add_images(self, plate_acquisition_id: int, plate_barcode: str, images: Iterable[Image]) -> int:
        rows = [
            (plate_acquisition_id, plate_barcode, im.timepoint, im.well, im.site, im.z, im.channel, im.path)
            for im in images
        ]
        with self._cursor() as cur:
            psycopg2.extras.execute_values(
                cur,
                """INSERT INTO images (plate_acquisition_id, plate_barcode, timepoint, well, site, z, channel, path)
                   VALUES %s""",
                rows,
                page_size=5000,
            )
        return len(rows)

    def finish_plate_acquisition(self, plate_acquisition_id: int) -> None:
        with self._cursor() as cur:
            cur.execute("UPDATE plate_acquisition SET finished = now() WHERE id = %s", (plate_acquisition_id,))

    def put_pipeline(self, name: str, meta: dict[str, Any]) -> None:
        with self._cursor() as cur:
            cur.execute(
                """INSERT INTO analysis_pipelines (name, meta) VALUES (%s, %s)
                   ON CONFLICT (name) DO UPDATE SET meta = EXCLUDED.meta""",
                (name, Json(meta)),
            )

    def submit_analysis(
        self,
        plate_acquisition_id: int,
        pipeline_name: str,
        *,
        priority: int | None = None,
        overrides: dict[str, Any] | None = None,
    ) -> SubmittedAnalysis:
        """What a pipeline submission creates: one analysis row and one sub-analysis per
        entry of the pipeline's `sub_analyses`, each depending on the previous one.
        `overrides` (e.g. well_filter, site_filter, cp_version) replace those keys in
        every sub-analysis's meta; `priority` wins over the pipeline's."""
        with self._cursor() as cur:
            return submit_rows(cur, plate_acquisition_id, pipeline_name, priority, overrides or {})

    # --- reads for the sensor and for planning

    def plate_acquisition(self, plate_acquisition_id: int) -> PlateAcquisition:
        with self._cursor() as cur:
            cur.execute(
                """SELECT id, plate_barcode, name, project, channel_map_id, timepoint, folder, finished
                   FROM plate_acquisition WHERE id = %s""",
                (plate_acquisition_id,),
            )
            row = cur.fetchone()
        if row is None:
            raise ImageDBError(f"no plate acquisition {plate_acquisition_id}")
        return PlateAcquisition(**row)

    def sub_analysis(self, sub_id: int) -> SubAnalysis:
        found = self._sub_analyses(sql.SQL("sub_id = %s"), sub_id)
        if not found:
            raise ImageDBError(f"no sub-analysis {sub_id}")
        return found[0]

    def sub_analysis_to_run(self, sub_id: int) -> SubAnalysisToRun:
        """The sub-analysis, its plate acquisition, its analysis's pipeline and whether
        another sub-analysis of its analysis depends on it: one query, the one read a run
        makes of them (ImageDBError naming what is missing)."""
        with self._cursor() as cur:
            cur.execute(
                """SELECT s.sub_id, s.analysis_id, s.plate_acquisition_id, s.meta,
                          COALESCE(s.depends_on_sub_id, '[]'::jsonb) AS depends_on_sub_id,
                          s.priority, s.start, s.finish, s.error, s.status, s.result,
                          p.id AS acq_id, p.plate_barcode, p.name, p.project, p.channel_map_id, p.timepoint,
                          p.folder, p.finished, a.pipeline_name,
                          EXISTS (SELECT 1 FROM image_sub_analyses o
                                  WHERE o.analysis_id = s.analysis_id AND jsonb_typeof(o.depends_on_sub_id) = 'array'
                                    AND o.depends_on_sub_id @> to_jsonb(s.sub_id)) AS feeds_others
                   FROM image_sub_analyses s
                   LEFT JOIN plate_acquisition p ON p.id = s.plate_acquisition_id
                   LEFT JOIN image_analyses a ON a.id = s.analysis_id
                   WHERE s.sub_id = %s""",
                (sub_id,),
            )
            row = cur.fetchone()
        if row is None:
            raise ImageDBError(f"no sub-analysis {sub_id}")
        if row["acq_id"] is None:
            raise ImageDBError(f"no plate acquisition {row['plate_acquisition_id']}")
        sub = SubAnalysis(**{k: row[k] for k in SUB_ANALYSIS_FIELDS}, meta=row["meta"] or {})
        acquisition = PlateAcquisition(id=row["acq_id"], **{k: row[k] for k in ACQUISITION_FIELDS})
        return SubAnalysisToRun(sub, acquisition, row["pipeline_name"], row["feeds_others"])

    def _sub_analyses(self, where: sql.Composable, value: int) -> list[SubAnalysis]:
        with self._cursor() as cur:
            cur.execute(
                sql.SQL("""SELECT sub_id, analysis_id, plate_acquisition_id, meta,
                                  COALESCE(depends_on_sub_id, '[]'::jsonb) AS depends_on_sub_id,
                                  priority, start, finish, error, status, result
                           FROM image_sub_analyses WHERE {} ORDER BY sub_id""").format(where),
                (value,),
            )
            return [SubAnalysis(**{**row, "meta": row["meta"] or {}}) for row in cur.fetchall()]

    def images(self, plate_acquisition_id: int) -> list[Image]:
        return list(self.stream_images(plate_acquisition_id))

    def stream_images(self, plate_acquisition_id: int, page_rows: int = 10_000) -> Iterator[Image]:
        """The acquisition's images, read in pages of `page_rows` through a server-side
        cursor, so a plate of a million images is never one result in memory here."""
        # tuples, not RealDictCursor rows: a dict per image is most of the time for a 384-well plate
        with self._cursor() as dict_cur, dict_cur.connection.cursor(name=f"images_{uuid.uuid4().hex}") as cur:
            cur.itersize = page_rows
            cur.execute(
                """SELECT well, site, channel, path, z, timepoint FROM images
                   WHERE plate_acquisition_id = %s""",
                (plate_acquisition_id,),
            )
            for row in cur:
                yield Image(*row)

    def channel_map(self, map_id: int | None) -> dict[int, str]:
        with self._cursor() as cur:
            cur.execute("SELECT channel, dye FROM channel_map WHERE map_id = %s ORDER BY channel", (map_id,))
            return {r["channel"]: r["dye"] for r in cur.fetchall()}

    def sub_analyses_of(self, analysis_id: int) -> list[SubAnalysis]:
        return self._sub_analyses(sql.SQL("analysis_id = %s"), analysis_id)

    def analysis(self, analysis_id: int) -> dict[str, Any]:
        with self._cursor() as cur:
            cur.execute("SELECT * FROM image_analyses WHERE id = %s", (analysis_id,))
            row = cur.fetchone()
        if row is None:
            raise ImageDBError(f"no analysis {analysis_id}")
        return dict(row)

    # --- submission by automation rules, and re-runs

    def submit_by_automation(self, *, limit: int = 100) -> list[tuple[int, str, SubmittedAnalysis]]:
        """Submit the pipelines of the automation rules that match finished acquisitions
        not handled yet (rule: project and channel map equal, or NULL for any). Each
        acquisition is recorded in image_analyses_automation_submitted in the same
        transaction as its submissions, so it is handled exactly once, whatever restarts.
        Rules naming a cell line are not applied: plate_acquisition has no cell line.

        A rule whose pipeline cannot be submitted (missing, malformed) does not stop the
        others: its submission is rolled back alone (a savepoint) and recorded as a failed
        analysis row (`error`, `status.message` `not submitted by automation: ...`), the
        way the lab's tools see any failed analysis; its SubmittedAnalysis has `error`."""
        submitted = []
        with self._cursor() as cur:
            cur.execute(
                """SELECT p.id, array_agg(DISTINCT r.pipeline_name ORDER BY r.pipeline_name) AS pipelines
                   FROM plate_acquisition p
                   JOIN image_analyses_automation r
                     ON (r.project IS NULL OR r.project = p.project)
                    AND (r.channel_map IS NULL OR r.channel_map = p.channel_map_id)
                    AND r.cell_line IS NULL
                   WHERE p.finished IS NOT NULL
                     AND NOT EXISTS (SELECT 1 FROM image_analyses_automation_submitted s WHERE s.plate_acq_id = p.id)
                   GROUP BY p.id ORDER BY p.id LIMIT %s""",
                (limit,),
            )
            for row in cur.fetchall():
                cur.execute(
                    """INSERT INTO image_analyses_automation_submitted (plate_acq_id, time) VALUES (%s, now())
                       ON CONFLICT (plate_acq_id) DO NOTHING RETURNING plate_acq_id""",
                    (row["id"],),
                )
                if cur.fetchone() is None:
                    continue  # handled concurrently
                for pipeline in row["pipelines"]:
                    submitted.append((row["id"], pipeline, submit_isolated(cur, row["id"], pipeline)))
        return submitted

    def rerun_sub_analysis(self, sub_id: int) -> int:
        """Put a failed (or finished) sub-analysis back to submitted, for the sensor to
        launch again under a new run key; dependents that were failed because of it are
        submitted again too. Returns the new re-run generation."""
        with self._cursor() as cur:
            cur.execute(
                sql.SQL("""UPDATE image_sub_analyses
                   SET start = NULL, finish = NULL, error = NULL, result = NULL,
                       status = jsonb_build_object('state', 'submitted', 'message', 're-run requested',
                                                   'reruns', {reruns} + 1)
                   WHERE sub_id = %s AND start IS NOT NULL AND (error IS NOT NULL OR finish IS NOT NULL)
                   RETURNING analysis_id, (status->>'reruns')::int AS reruns""").format(reruns=RERUNS),
                (sub_id,),
            )
            row = cur.fetchone()
            if row is None:
                cur.execute("SELECT start, error, finish FROM image_sub_analyses WHERE sub_id = %s", (sub_id,))
                current = one_row(cur, f"no sub-analysis {sub_id}")
                state = "not started yet" if current["start"] is None else "still running"
                raise ImageDBError(f"sub-analysis {sub_id} is {state}: only a failed or finished one can be re-run")
            revive_after_success(cur, sub_id, row["analysis_id"])
            cur.execute("UPDATE image_analyses SET finish = NULL WHERE id = %s", (row["analysis_id"],))
            return row["reruns"]

    def rerun_generations(self, sub_ids: list[int]) -> dict[int, int]:
        """How many times each sub-analysis was re-run (0 for never): part of its run key.
        A `status.reruns` that is not a whole number (written by hand) counts as 0 rather
        than failing the sensor's tick for every row."""
        if not sub_ids:
            return {}
        with self._cursor() as cur:
            cur.execute(
                sql.SQL("SELECT sub_id, {reruns} AS reruns FROM image_sub_analyses WHERE sub_id = ANY(%s)").format(
                    reruns=RERUNS
                ),
                (list(sub_ids),),
            )
            return {r["sub_id"]: r["reruns"] for r in cur.fetchall()}
