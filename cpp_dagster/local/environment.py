"""The local deployment: embedded PostgreSQL for imagedb, the training store, the demo
compound database and the Dagster instance, a NAS folder, and a DAGSTER_HOME that uses
the repository's dagster.yaml.

The only place a missing database URL is filled in: `environment()` gives the Dagster
processes (webserver, daemon, run and step workers) every URL, so the resources and the
domain code below them never start a database of their own. `make demo`, `make dev` and
`cpp-dagster local env` create the local deployment; the CLI's other commands only attach
to one that exists (`cli_url`): on any other machine (a pod, a lab workstation) a missing
URL is one settings error, never a private database nobody else sees.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from cpp_dagster.local import postgres as local_postgres
from cpp_dagster.service_settings import compound_database_variable
from cpp_dagster.setting_rules import SettingsError
from cpp_dagster.settings import PROJECT_ROOT, Settings, load_settings

COMPOUNDS = "compounds"  # the compound database with a local default: the public demo data set
COMPOUNDS_READER = "compounds_reader"  # the role training queries run as: SELECT on its tables, nothing else


def dagster_home(settings: Settings) -> Path:
    """$CPP_LOCAL_DIR/dagster_home, holding a link to the repository's dagster.yaml."""
    home = settings.local_dir / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    link = home / "dagster.yaml"
    if not link.exists():
        link.symlink_to(PROJECT_ROOT / "dagster.yaml")
    return home


def sqlalchemy_url(url: str) -> str:
    """A libpq URL for dagster-postgres: SQLAlchemy 2.1 maps plain `postgresql://` to
    psycopg 3, which is not installed; name the psycopg2 driver."""
    return url.replace("postgresql://", "postgresql+psycopg2://", 1)


def _embedded(settings: Settings, name: str) -> str:
    return local_postgres.database_url(name, settings.local_dir / "pgdata")


def has_local_deployment(settings: Settings) -> bool:
    """True when `make demo`, `make dev` or `cpp-dagster local env` made the embedded
    server's data folder here (PostgreSQL writes PG_VERSION when it initializes one)."""
    return (settings.local_dir / "pgdata" / "PG_VERSION").is_file()


def cli_url(settings: Settings, database: str) -> str:
    """The URL a CLI command uses for `database` ("imagedb" or "training"): its setting,
    else the existing local deployment's embedded database; else a SettingsError naming the
    variable. Never creates a local deployment (that is `make demo`, `make dev` or
    `cpp-dagster local env`)."""
    variable, url = {
        "imagedb": ("CPP_IMAGEDB_URL", settings.imagedb_url),
        "training": ("CPP_TRAINING_DB_URL", settings.training.db_url),
    }[database]
    if url:
        return url
    if not has_local_deployment(settings):
        raise SettingsError(
            f"{variable} is not set, and this machine has no local deployment "
            f"(no embedded database in {settings.local_dir}): set {variable} to the database's "
            "PostgreSQL URL; `make demo`, `make dev` or `cpp-dagster local env` creates the local one"
        )
    return _embedded(settings, database)


def imagedb_url(settings: Settings) -> str:
    """CPP_IMAGEDB_URL, else the embedded server's `imagedb` (started if needed)."""
    return settings.imagedb_url or _embedded(settings, "imagedb")


def training_db_url(settings: Settings) -> str:
    """CPP_TRAINING_DB_URL, else the embedded server's `training` database."""
    return settings.training.db_url or _embedded(settings, "training")


def compounds_url(settings: Settings) -> str:
    """CPP_DATABASE_COMPOUNDS_URL, else the embedded server's `compounds` database with the
    public demo data set loaded (once), as the role `compounds_reader`, which may only
    SELECT that table (a training query never runs as the superuser)."""
    url = settings.training.compound_database_url(COMPOUNDS)
    if url:
        return url
    from cpp_dagster.training.compounds import load_public_dataset

    url = _embedded(settings, COMPOUNDS)
    load_public_dataset(url)
    return local_postgres.ensure_reader(url, COMPOUNDS_READER, [COMPOUNDS])


def environment(settings: Settings | None = None, *, compounds: bool = True) -> dict[str, str]:
    """Environment for Dagster processes (webserver, daemon, run and step workers): every
    database URL, the embedded server's where the environment gives none. `compounds`:
    also the demo compound database (loading its data set the first time takes RDKit a
    few seconds; the analysis demo trains nothing and skips it)."""
    settings = settings or load_settings()
    env = {
        "CPP_IMAGEDB_URL": imagedb_url(settings),
        "CPP_TRAINING_DB_URL": training_db_url(settings),
        "DAGSTER_PG_URL": os.environ.get("DAGSTER_PG_URL") or sqlalchemy_url(_embedded(settings, "dagster")),
        "DAGSTER_HOME": os.environ.get("DAGSTER_HOME") or str(dagster_home(settings)),
        "CPP_NAS_ROOT": str(settings.nas_root),
    }
    if compounds:
        env[compound_database_variable(COMPOUNDS)] = compounds_url(settings)
    return env


def pin_pool_limits(env: dict[str, str]) -> None:
    """Set each pool's limit (dagster.yaml's `default_limit`) in the instance of `env`
    (DAGSTER_HOME, DAGSTER_PG_URL), as `dagster instance concurrency set` does. Left to
    its default, the limit is written by the first runs that claim the pool, and two runs
    doing it at once fail one of them on PostgreSQL (dagster-io/dagster#33552)."""
    from cpp_dagster.defs.analysis.steps import CELLPROFILER_POOL

    config = yaml.safe_load((Path(env["DAGSTER_HOME"]) / "dagster.yaml").read_text())
    limit = config["concurrency"]["pools"]["default_limit"]
    dagster = str(Path(sys.executable).with_name("dagster"))
    subprocess.run(
        [dagster, "instance", "concurrency", "set", CELLPROFILER_POOL, str(limit)],
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
