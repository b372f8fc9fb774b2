"""Cancelling a run from Dagster while CellProfiler runs: the batch's CellProfiler
process stops, and imagedb says the sub-analysis was cancelled. Real dagster-daemon
(sensors, run queue), real run worker and step processes, real CellProfiler."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg
import psutil
from dagster_helpers import daemon_environment, wait_until

from cpp_dagster.demo.register import demo_pipeline_meta, register_plate
from cpp_dagster.demo.run import dagster_daemon


def cellprofiler_processes(work_root: Path, sub_id: int) -> list[psutil.Process]:
    """This test's CellProfiler: its work area is under this test's own work root (a test
    on the other pytest worker may run a sub-analysis of the same id in its own database)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "cellprofiler" in cmd and f"{work_root}/" in cmd and f"sub_{sub_id}/" in cmd:
            found.append(p)
    return found


def cancel_from_another_process(run_id: str) -> None:
    """What "Terminate" in the UI does, from a process of its own as the webserver's:
    the cancel reaches the run worker over gRPC, and a gRPC channel left in the pytest
    process can crash it later, when it is garbage-collected after the executor forks."""
    code = (
        "import sys, dagster as dg\n"
        "with dg.DagsterInstance.get() as instance:\n"
        "    sys.exit(0 if instance.run_coordinator.cancel_run(sys.argv[1]) else 1)\n"
    )
    subprocess.run([sys.executable, "-c", code, run_id], check=True, timeout=120)


def test_cancel_stops_cellprofiler_and_records_cancelled(lab, pg_server, tmp_path, monkeypatch):
    env = daemon_environment(pg_server, tmp_path, monkeypatch)
    acq = register_plate(lab.db, lab.settings, barcode="CANCEL", wells=["B02", "B03"], sites=[1, 2, 3, 4], seed=8)
    lab.db.put_pipeline("one-batch", demo_pipeline_meta(batch_size=0))  # one long batch of 8 image sets
    sub_id = lab.db.submit_analysis(acq, "one-batch").sub_ids[0]

    with dagster_daemon(env, tmp_path / "daemon.log"), dg.DagsterInstance.get() as instance:
        running = wait_until("CellProfiler to start", lambda: cellprofiler_processes(lab.settings.work_root, sub_id))
        (run,) = instance.get_runs(filters=dg.RunsFilter(tags={"imagedb/sub_id": str(sub_id)}))
        cancel_from_another_process(run.run_id)

        wait_until(
            "the run to be cancelled",
            lambda: instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.CANCELED,
            120,
        )
        wait_until(
            "CellProfiler to stop",
            lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in running),
            60,
        )
        sub = wait_until(
            "imagedb to record the cancellation",
            lambda: (lambda s: s if s.error else None)(lab.db.sub_analysis(sub_id)),
            120,
        )
    assert sub.finish is None and sub.status["state"] == "failed"
    assert sub.status["message"].startswith(f"cancelled: run {run.run_id} was cancelled")
    assert lab.db.analysis(sub.analysis_id)["error"] is not None
    assert not (lab.nas / "results" / "CANCEL").exists()  # nothing half-merged
