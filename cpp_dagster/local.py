"""The local deployment: embedded PostgreSQL for imagedb and the Dagster instance,
a NAS folder, and a DAGSTER_HOME that uses the repository's dagster.yaml."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from cpp_dagster import local_postgres
from cpp_dagster.config import PROJECT_ROOT, imagedb_url, load_settings, local_dir


def dagster_home() -> Path:
    """$CPP_LOCAL_DIR/dagster_home, holding a link to the repository's dagster.yaml."""
    home = local_dir() / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    link = home / "dagster.yaml"
    if not link.exists():
        link.symlink_to(PROJECT_ROOT / "dagster.yaml")
    return home


def sqlalchemy_url(url: str) -> str:
    """A libpq URL for dagster-postgres: SQLAlchemy 2.1 maps plain `postgresql://` to
    psycopg 3, which is not installed; name the psycopg2 driver."""
    return url.replace("postgresql://", "postgresql+psycopg2://", 1)


def environment() -> dict[str, str]:
    """Environment for Dagster processes (webserver, daemon, run and step workers):
    starts the embedded server when CPP_IMAGEDB_URL / DAGSTER_PG_URL are not given."""
    settings = load_settings()
    env = {
        "CPP_IMAGEDB_URL": imagedb_url(settings),
        "DAGSTER_PG_URL": os.environ.get("DAGSTER_PG_URL") or sqlalchemy_url(local_postgres.database_url("dagster")),
        "DAGSTER_HOME": os.environ.get("DAGSTER_HOME") or str(dagster_home()),
        "CPP_NAS_ROOT": str(settings.nas_root),
    }
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
    subprocess.run([dagster, "instance", "concurrency", "set", CELLPROFILER_POOL, str(limit)],
                   env=env, check=True, capture_output=True, timeout=300)
