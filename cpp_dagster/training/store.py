"""The configuration store: every query on training configurations lives here.

A table in the project's PostgreSQL (CPP_TRAINING_DB_URL; locally the embedded server's
`training` database). Values travel as query parameters only.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

from psycopg2.extras import Json

from cpp_dagster.pg import Database
from cpp_dagster.training.configuration import TrainingConfig, from_dict


@dataclass(frozen=True)
class ConfigVersion:
    id: int
    version: str
    partition_key: str
    workflow: str
    config: TrainingConfig
    added: dt.datetime
    added_by: str | None


@dataclass(frozen=True)
class Added:
    version: ConfigVersion
    created: bool  # False: this content was already a version


def _row(row: dict) -> ConfigVersion:
    return ConfigVersion(
        id=row["id"],
        version=row["version"],
        partition_key=row["partition_key"],
        workflow=row["workflow"],
        config=from_dict(row["config"]),
        added=row["added"],
        added_by=row["added_by"],
    )


VERSION_FILE = "configuration.json"  # the version a training run works on, in its version folder


def save_version(version: ConfigVersion, folder: Path) -> Path:
    """Write `version` into its version folder (atomically), so the later steps of the
    run read it there instead of asking the store again: a version never changes."""
    raw = {
        "id": version.id,
        "version": version.version,
        "partition_key": version.partition_key,
        "workflow": version.workflow,
        "config": version.config.to_dict(),
        "added": version.added.isoformat(),
        "added_by": version.added_by,
    }
    path = folder / VERSION_FILE
    partial = path.with_name(f".{VERSION_FILE}.partial")
    partial.write_text(json.dumps(raw, indent=1))
    partial.replace(path)
    return path


def load_version(folder: Path) -> ConfigVersion | None:
    """The version `save_version` wrote into `folder`; None when it is not there."""
    path = folder / VERSION_FILE
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    return _row({**raw, "added": dt.datetime.fromisoformat(raw["added"])})


class UnknownVersion(LookupError):
    """No configuration version with that partition key in the store."""


@dataclass(frozen=True)
class InvalidVersion:
    """A stored version whose configuration no longer validates (e.g. a rule tightened
    since it was added): reported, never launched."""

    id: int
    version: str
    partition_key: str
    workflow: str
    problem: str


def _row_or_invalid(row: dict) -> ConfigVersion | InvalidVersion:
    try:
        return _row(row)
    except (ValueError, TypeError) as e:  # ConfigError is a ValueError; TypeError: a shape nobody foresaw
        return InvalidVersion(
            id=row["id"],
            version=row["version"],
            partition_key=row["partition_key"],
            workflow=row["workflow"],
            problem=str(e),
        )


class ConfigStore(Database):
    SCHEMA_PACKAGE = "cpp_dagster.training"
    SCHEMA_ON_FIRST_USE = True  # the project's own table: a fresh instance needs no init step

    def add(self, config: TrainingConfig, added_by: str | None = None) -> Added:
        """Store `config` as a new version unless its content is already one."""
        with self._cursor() as cur:
            cur.execute(
                """INSERT INTO training_config_versions (version, partition_key, workflow, config, added_by)
                   VALUES (%s, %s, %s, %s, %s) ON CONFLICT (version) DO NOTHING RETURNING *""",
                (config.version, config.partition_key, config.workflow, Json(config.to_dict()), added_by),
            )
            row = cur.fetchone()
            created = row is not None
            if not created:
                cur.execute("SELECT * FROM training_config_versions WHERE version = %s", (config.version,))
                row = cur.fetchone()
        return Added(_row(row), created)

    def get(self, partition_key: str) -> ConfigVersion:
        with self._cursor() as cur:
            cur.execute("SELECT * FROM training_config_versions WHERE partition_key = %s", (partition_key,))
            row = cur.fetchone()
        if row is None:
            raise UnknownVersion(f"no training configuration version {partition_key!r} in the store")
        return _row(row)

    def added_after(self, after_id: int, limit: int = 100) -> list[ConfigVersion | InvalidVersion]:
        """Versions in order of arrival after `after_id` (the sensor's cursor), one page;
        one whose stored configuration no longer validates comes as an InvalidVersion,
        so it cannot stop the others."""
        with self._cursor() as cur:
            cur.execute("SELECT * FROM training_config_versions WHERE id > %s ORDER BY id LIMIT %s", (after_id, limit))
            return [_row_or_invalid(r) for r in cur.fetchall()]

    def versions(self, workflow: str | None = None) -> list[ConfigVersion]:
        with self._cursor() as cur:
            cur.execute(
                """SELECT * FROM training_config_versions
                           WHERE %(w)s::text IS NULL OR workflow = %(w)s ORDER BY id""",
                {"w": workflow},
            )
            return [_row(r) for r in cur.fetchall()]
