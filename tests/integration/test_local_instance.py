"""The local Dagster instance as `make dev` opens it (the project's dagster.yaml, the
cellprofiler pool's limit set first), and a `dagster dev` that does not stop in time
stopped with all it started; no webserver or daemon is started here. `cpp-dagster dev`
itself: tests/e2e/test_make_dev_serves_the_asset_graph.py."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import dagster as dg
from dagster_helpers import wait_until
from pg_databases import new_database

from cpp_dagster.local.environment import sqlalchemy_url
from cpp_dagster.settings import PROJECT_ROOT


def test_the_ui_opens_without_the_community_modal(pg_server, tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_PG_URL", sqlalchemy_url(new_database(pg_server, "dagster")))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        assert instance.nux_enabled is False
        assert instance.telemetry_enabled is False


def test_a_dagster_dev_that_does_not_stop_in_time_is_stopped_with_everything_it_started():
    """What `cpp-dagster dev` does when dagster dev ignores SIGTERM past the grace period
    (a daemon still loading the code location): killing it alone would orphan its
    webserver and daemon; every process it started goes with it."""
    from cpp_dagster.local.ui import stop

    proc = subprocess.Popen(
        ["bash", "-c", 'trap "" TERM; sleep 300 & echo $!; wait'],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    child = int(proc.stdout.readline())
    started = time.monotonic()
    stop(proc, grace_s=1)
    assert proc.returncode == -signal.SIGKILL and time.monotonic() - started < 30
    assert wait_until(
        "the process it started to be gone",
        lambda: not os.path.exists(f"/proc/{child}") or open(f"/proc/{child}/stat").read().split()[2] == "Z",
        10,
    )


def test_the_cellprofiler_pool_limit_is_set_before_any_run_claims_it(pg_server, tmp_path):
    """Left to dagster.yaml's default, the pool's limit is written by the first runs that
    claim it, and two runs doing it at once fail one of them on PostgreSQL (seen in the
    UI backfill test; dagster-io/dagster#33552). `cpp-dagster dev` and the UI test harness
    set it first, as `dagster instance concurrency set` does."""
    from cpp_dagster.local.environment import pin_pool_limits

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_URL": sqlalchemy_url(new_database(pg_server, "dagster")),
    }
    pin_pool_limits(env)
    shown = subprocess.run(
        [str(PROJECT_ROOT / ".venv" / "bin" / "dagster"), "instance", "concurrency", "get", "cellprofiler"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    assert "cellprofiler" in shown.stdout and "4" in shown.stdout, shown.stdout
