"""The settings of model training and of the services the project talks to: the training
store and compound databases, the model registry, the lab's notifications. Groups of the
one `Settings` (settings.py), declared with the same rules; read with it, never alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cpp_dagster.setting_rules import (
    Group,
    command,
    count,
    duration,
    group,
    http_url,
    one_of,
    path,
    positive_int,
    positive_number,
    seconds_up_to,
    setting,
)

COMPOUND_DATABASE = re.compile(r"CPP_DATABASE_([A-Z0-9_]+)_URL")
COMPOUND_DATABASES = "CPP_DATABASE_<NAME>_URL"  # the family of variables above, one row in the table


def compound_databases(environ: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v.strip()) for k, v in environ.items() if COMPOUND_DATABASE.fullmatch(k) and v.strip()))


def compound_database_variable(name: str) -> str:
    """The variable naming compound database `name`: `chembl` -> CPP_DATABASE_CHEMBL_URL."""
    return f"CPP_DATABASE_{name.upper().replace('-', '_').replace('.', '_')}_URL"


@dataclass(frozen=True)
class TrainingQueryLimits:
    """What one training ingestion query may take: seconds (statement_timeout and the whole
    read), rows, and bytes of the rows held in memory."""

    timeout_s: float = 600
    max_rows: int = 1_000_000
    max_bytes: int = 1024 * 1024 * 1024


@group
class Training(Group):
    """Model training: its store, the compound databases, the engine."""

    db_url: str | None = setting(
        "CPP_TRAINING_DB_URL",
        "the training configuration store, a PostgreSQL URL",
        None,
        shown="the local deployment's embedded server, database `training`; required elsewhere",
        secret="url",
    )
    compound_databases: tuple[tuple[str, str], ...] = setting(
        COMPOUND_DATABASES,
        "a compound database a training configuration names (`chembl` -> "
        "`CPP_DATABASE_CHEMBL_URL`), a PostgreSQL URL whose role may only SELECT (a superuser's is refused)",
        (),
        shown="only `compounds`: embedded, with a public data set",
        secret="url",
    )
    query_timeout_s: float = setting(
        "CPP_TRAINING_QUERY_TIMEOUT_S",
        "seconds a training configuration's query may take (its statement timeout, and the whole read)",
        600.0,
        positive_number,
        shown="600",
    )
    query_max_rows: int = setting(
        "CPP_TRAINING_QUERY_MAX_ROWS",
        "rows that query may return; more fails the run with a message",
        1_000_000,
        positive_int,
    )
    query_max_mb: float = setting(
        "CPP_TRAINING_QUERY_MAX_MB",
        "megabytes the rows of that query may take in memory; more fails the run with a message",
        1024.0,
        positive_number,
        shown="1024",
    )
    engine: str = setting(
        "CPP_TRAINING_ENGINE",
        "`embedded` (RDKit + crepes) or `cpsign` (the CPSign CLI)",
        "embedded",
        one_of("embedded", "cpsign"),
    )
    split_retries: int = setting("CPP_SPLIT_RETRIES", "retries of a failed training split", 1, count)
    cpsign_command: tuple[str, ...] = setting(
        "CPP_CPSIGN_COMMAND",
        "how to start CPSign (split like a shell)",
        ("java", "-jar", "/opt/cpsign/cpsign.jar"),
        command,
        shown="`java -jar /opt/cpsign/cpsign.jar`",
    )
    cpsign_license: str | None = setting(
        "CPP_CPSIGN_LICENSE",
        "CPSign's license file (on Kubernetes a mounted Secret)",
        None,
        shown="none: CPSign 2 needs none",
    )
    cpsign_descriptors: str = setting("CPP_CPSIGN_DESCRIPTORS", "CPSign's precompute descriptors", "signatures:1:3")

    @property
    def query_limits(self) -> TrainingQueryLimits:
        return TrainingQueryLimits(
            timeout_s=self.query_timeout_s,
            max_rows=self.query_max_rows,
            max_bytes=int(self.query_max_mb * 1024 * 1024),
        )

    def compound_database_url(self, name: str) -> str | None:
        return dict(self.compound_databases).get(compound_database_variable(name))


@group
class Registry(Group):
    """Where trained models are published and served."""

    url: str | None = setting(
        "CPP_MODEL_REGISTRY_URL",
        "a model service over HTTP to publish to",
        None,
        shown="unset: the folder registry",
        secret="url",
    )
    token: str | None = setting(
        "CPP_MODEL_REGISTRY_TOKEN",
        "its bearer token; `cpp-dagster train registry` requires it of clients",
        None,
        secret="token",
    )
    dir: Path | None = setting(
        "CPP_MODEL_REGISTRY_DIR",
        "the folder registry (without a URL) and the folder `cpp-dagster train registry` serves",
        None,
        path,
        shown="`$CPP_NAS_ROOT/models`",
    )
    max_upload_mb: float = setting(
        "CPP_MODEL_REGISTRY_MAX_UPLOAD_MB",
        "largest model `cpp-dagster train registry` accepts (413 above)",
        512.0,
        positive_number,
        shown="512",
    )

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def folder(self, nas_root: Path) -> Path:
        """The folder registry: CPP_MODEL_REGISTRY_DIR, else `models/` on the NAS."""
        return self.dir or nas_root / "models"


@group
class Notify(Group):
    """Telling the lab of each analysis outcome (the `notify_lab` sensor, docs/operations.md)."""

    webhook_url: str | None = setting(
        "CPP_NOTIFY_WEBHOOK_URL",
        "where each analysis outcome (finished, failed, cancelled) is POSTed as JSON, once; "
        "`https://user:password@host/...` sends HTTP basic auth",
        None,
        http_url,
        secret="endpoint",
    )
    slack_url: str | None = setting(
        "CPP_NOTIFY_SLACK_URL",
        "a Slack incoming webhook that gets each outcome as one line",
        None,
        http_url,
        secret="endpoint",
    )
    timeout_s: float = setting(
        "CPP_NOTIFY_TIMEOUT_S",
        "seconds one POST may take, connection to answer (at most 20); a slower receiver is tried again later",
        10.0,
        seconds_up_to(20),
        shown="10",
    )
    retry_delay_s: float = setting(
        "CPP_NOTIFY_RETRY_DELAY_S",
        "seconds before a failed notification is tried again (doubling, at most an hour; for 3 days)",
        30.0,
        duration,
        shown="30",
    )

    @property
    def destinations(self) -> tuple[tuple[str, str], ...]:
        """(name, URL) of each destination configured."""
        return tuple((name, url) for name, url in (("webhook", self.webhook_url), ("slack", self.slack_url)) if url)
