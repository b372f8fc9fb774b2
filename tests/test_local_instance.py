"""The local Dagster instance as `make dev` opens it (the project's dagster.yaml)."""
from __future__ import annotations

import shutil

import dagster as dg
from conftest import new_database

from cpp_dagster.config import PROJECT_ROOT
from cpp_dagster.local import sqlalchemy_url


def test_the_ui_opens_without_the_community_modal(pg_server, tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_PG_URL", sqlalchemy_url(new_database(pg_server, "dagster")))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        assert instance.nux_enabled is False
        assert instance.telemetry_enabled is False
