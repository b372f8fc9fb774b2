"""A run worker killed mid-run (SIGKILL, as the kernel's OOM killer does) strands nothing:
its orphaned batch steps stop CellProfiler by themselves, Dagster's run retries re-execute
the run from failure (dagster.yaml `run_retries`), and the analysis finishes with no one
acting. imagedb never says failed in between. Through the real daemon and code server."""

from __future__ import annotations

import time

import dagster as dg
import psutil
import pyarrow.parquet as pq
from dagster_helpers import daemon_environment, wait_until

from cpp_dagster.demo.register import demo_pipeline_meta, register_plate
from cpp_dagster.demo.run import dagster_daemon
from cpp_dagster.features.columns import BATCH_COLUMN


def cellprofilers(work_root) -> list[psutil.Process]:
    """This test's CellProfiler batches (its own work root and a LoadData CSV in their
    command line; not the pipeline check's inspection)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "cellprofiler" in cmd and f"{work_root}/" in cmd and "loaddata.csv" in cmd:
            found.append(p)
    return found


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_a_killed_run_worker_is_retried_from_failure_and_the_analysis_finishes(lab, pg_server, tmp_path, monkeypatch):
    env = daemon_environment(pg_server, tmp_path, monkeypatch)  # run_retries as deployed
    # one batch of 8 image sets: CellProfiler runs long enough that only the kill stops it
    acq = register_plate(lab.db, lab.settings, barcode="KILLED", wells=["B02", "B03"], sites=[1, 2, 3, 4], seed=5)
    lab.db.put_pipeline("one-batch", demo_pipeline_meta(batch_size=0))
    sub_id = lab.db.submit_analysis(acq, "one-batch").sub_ids[0]

    with dagster_daemon(env, tmp_path / "daemon.log"), dg.DagsterInstance.get() as instance:
        running = wait_until("CellProfiler to start", lambda: cellprofilers(lab.settings.work_root), 300)
        step = running[0].parent()
        forkserver = step.parent()
        run_worker = forkserver.parent()
        assert "forkserver" in " ".join(forkserver.cmdline())  # the chain the executor makes
        (first,) = instance.get_runs(filters=dg.RunsFilter(tags={"imagedb/sub_id": str(sub_id)}))
        run_worker.kill()
        killed_at = time.monotonic()

        # the orphans stop by themselves, before their batch is done and before the retry
        # starts its own CellProfiler in the same folder
        wait_until("the orphaned CellProfiler to stop", lambda: not alive(running), 30)
        wait_until("the orphaned step to exit", lambda: not alive([step]), 30)
        orphans_s = time.monotonic() - killed_at

        sub = wait_until(
            "the analysis to end",
            lambda: (lambda s: s if s.finish or s.error else None)(lab.db.sub_analysis(sub_id)),
            420,
        )
        retry = wait_until(
            "the retry to end",
            lambda: next(
                (
                    r
                    for r in instance.get_runs(filters=dg.RunsFilter(tags={"dagster/parent_run_id": first.run_id}))
                    if r.is_finished
                ),
                None,
            ),
            120,
        )
        runs = instance.get_runs(filters=dg.RunsFilter(tags={"imagedb/sub_id": str(sub_id)}))
        print(
            f"after the kill: orphans gone in {orphans_s:.1f} s, analysis finished in {time.monotonic() - killed_at:.1f} s"
        )
        retried_steps = {
            e.step_key
            for e in instance.all_logs(retry.run_id, of_type=dg.DagsterEventType.STEP_START)
            if e.step_key is not None
        }
        first_successes = {
            e.step_key
            for e in instance.all_logs(first.run_id, of_type=dg.DagsterEventType.STEP_SUCCESS)
            if e.step_key is not None
        }

    assert sub.error is None and sub.finish is not None, sub.status
    assert instance.get_run_by_id(first.run_id).status == dg.DagsterRunStatus.FAILURE
    assert instance.get_run_by_id(first.run_id).tags.get("dagster/will_retry") == "true"
    assert retry.tags.get("dagster/parent_run_id") == first.run_id and retry.tags.get("dagster/retry_number") == "1"
    assert retry.status == dg.DagsterRunStatus.SUCCESS
    assert len(runs) == 2
    # re-executed from failure: the killed run's plan is reused, its unfinished batch runs again
    assert first_successes == {"features_step.plan_batches"}
    assert "features_step.plan_batches" not in retried_steps
    assert "features_step.run_cellprofiler[batch_0000]" in retried_steps
    killed_batch = [e for e in instance.all_logs(first.run_id) if e.message and "this step process exits" in e.message]
    assert killed_batch and "the run that started it is gone" in killed_batch[0].message
    results = lab.nas / sub.result["job_folder"]
    image = pq.read_table(results / "Image.parquet")
    assert image.num_rows == 8 and set(image[BATCH_COLUMN].to_pylist()) == {"batch_0000"}
    assert pq.read_table(results / "Nuclei.parquet").num_rows > 10
