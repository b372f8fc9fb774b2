"""The versions of the analysis pipelines (`cpp-dagster pipeline add`, `list`, `show`).

`analysis_pipelines` keeps its one row per name, whose `meta` is what a submission copies
(the lab's tools read it as before); `analysis_pipeline_versions` keeps every version of
it: its meta, what each step needs, when and by whom it was added. A version's meta
carries its number in `analysis_meta.pipeline_version`, so the analyses submitted with it
say which version they ran (`image_analyses.meta`).

Adding is one transaction, serialised per pipeline name (an advisory lock): two adds
of one name at once get versions n and n+1, never the same number. A meta written into
`analysis_pipelines` by other means (SQL, `put_pipeline`) since the last version is
recorded as a version of its own first (`steps` NULL), so no earlier meta is lost.

Part of the one ImageDB API (`ImageDB` inherits `PipelineVersions`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg2.errors
from psycopg2.extras import Json

from cpp_dagster.ids import parse_id
from cpp_dagster.imagedb.rows import ImageDBError
from cpp_dagster.pg import Database

VERSION_KEY = "pipeline_version"  # in analysis_meta
ADDED_BY_OTHER_MEANS = "imagedb (written without `cpp-dagster pipeline add`)"
NO_TABLE = (
    "imagedb has no table analysis_pipeline_versions yet: run `cpp-dagster db init` (it creates only what is missing)"
)


@dataclass(frozen=True)
class PipelineVersion:
    name: str
    version: int
    meta: dict[str, Any]
    steps: list[dict[str, Any]] | None  # per sub-analysis: sha256, source, needs; None: not added by the CLI
    added: dt.datetime
    added_by: str | None


@dataclass(frozen=True)
class RegisteredPipeline:
    """One row of analysis_pipelines and its versions, oldest first."""

    name: str
    meta: Any
    versions: tuple[PipelineVersion, ...]
    analyses: dict[int, int] = field(default_factory=dict)  # version -> analyses submitted with it

    @property
    def current(self) -> PipelineVersion | None:
        """The version whose meta is the one submissions copy now; None when the pipeline
        has no version, or its meta was changed by other means after the latest."""
        if self.versions and self.versions[-1].meta == self.meta:
            return self.versions[-1]
        return None


@dataclass(frozen=True)
class AddedVersion:
    version: int
    created: bool  # False: the latest version already had this content


def without_version(meta: Any) -> Any:
    """The meta without its version number: two versions with the same content compare equal."""
    if not isinstance(meta, dict) or not isinstance(meta.get("analysis_meta"), dict):
        return meta
    analysis_meta = {k: v for k, v in meta["analysis_meta"].items() if k != VERSION_KEY}
    return {**meta, "analysis_meta": analysis_meta}


def with_version(meta: dict[str, Any], version: int) -> dict[str, Any]:
    return {**meta, "analysis_meta": {**meta.get("analysis_meta", {}), VERSION_KEY: version}}


class PipelineVersions(Database):
    @contextmanager
    def _versions_cursor(self) -> Iterator:
        """A transaction on the versions table; its absence (imagedb not initialised since
        the table came) is one readable ImageDBError."""
        try:
            with self._cursor() as cur:
                yield cur
        except psycopg2.errors.UndefinedTable:
            raise ImageDBError(NO_TABLE) from None

    def add_pipeline_version(
        self, name: str, meta: dict[str, Any], steps: list[dict[str, Any]], added_by: str | None
    ) -> AddedVersion:
        """Make `meta` the pipeline's current meta as a new version (its number put into
        `analysis_meta.pipeline_version`), unless its content is the current meta's."""
        with self._versions_cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 7301))", (f"analysis_pipelines:{name}",))
            cur.execute("SELECT meta FROM analysis_pipelines WHERE name = %s", (name,))
            row = cur.fetchone()
            current = None if row is None else row["meta"]
            cur.execute(
                "SELECT version, meta FROM analysis_pipeline_versions WHERE name = %s ORDER BY version DESC LIMIT 1",
                (name,),
            )
            latest = cur.fetchone()
            number = 0 if latest is None else latest["version"]
            if current is not None and (latest is None or latest["meta"] != current):
                number += 1
                self._insert_version(cur, name, number, current, None, ADDED_BY_OTHER_MEANS)
            if current is not None and without_version(current) == without_version(meta):
                return AddedVersion(number, created=False)
            number += 1
            versioned = with_version(meta, number)
            self._insert_version(cur, name, number, versioned, steps, added_by)
            cur.execute(
                """INSERT INTO analysis_pipelines (name, meta) VALUES (%s, %s)
                   ON CONFLICT (name) DO UPDATE SET meta = EXCLUDED.meta""",
                (name, Json(versioned)),
            )
            return AddedVersion(number, created=True)

    @staticmethod
    def _insert_version(cur, name: str, number: int, meta: Any, steps: Any, added_by: str | None) -> None:
        cur.execute(
            """INSERT INTO analysis_pipeline_versions (name, version, meta, steps, added_by)
               VALUES (%s, %s, %s, %s, %s)""",
            (name, number, Json(meta), None if steps is None else Json(steps), added_by),
        )

    def registered_pipelines(self, name: str | None = None) -> list[RegisteredPipeline]:
        """Every pipeline of analysis_pipelines (or the one named `name`) with its versions."""
        with self._versions_cursor() as cur:
            cur.execute(
                "SELECT name, meta FROM analysis_pipelines WHERE %(name)s::text IS NULL OR name = %(name)s "
                "ORDER BY name",
                {"name": name},
            )
            pipelines = cur.fetchall()
            cur.execute(
                """SELECT name, version, meta, steps, added, added_by FROM analysis_pipeline_versions
                   WHERE %(name)s::text IS NULL OR name = %(name)s ORDER BY name, version""",
                {"name": name},
            )
            versions: dict[str, list[PipelineVersion]] = {}
            for r in cur.fetchall():
                versions.setdefault(r["name"], []).append(PipelineVersion(**r))
            # a meta written by hand may be anything: only an object's whole-number version counts
            cur.execute(
                """SELECT pipeline_name AS name, meta->>'pipeline_version' AS version, count(*) AS analyses
                   FROM image_analyses
                   WHERE (%(name)s::text IS NULL OR pipeline_name = %(name)s) AND jsonb_typeof(meta) = 'object'
                   GROUP BY 1, 2""",
                {"name": name},
            )
            analyses: dict[str, dict[int, int]] = {}
            for r in cur.fetchall():
                if (number := parse_id(r["version"])) is not None:
                    analyses.setdefault(r["name"], {})[number] = r["analyses"]
        return [
            RegisteredPipeline(p["name"], p["meta"], tuple(versions.get(p["name"], ())), analyses.get(p["name"], {}))
            for p in pipelines
        ]
