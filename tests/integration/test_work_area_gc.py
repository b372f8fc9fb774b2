"""`cpp-dagster gc`: the work area of sub-analyses that finished longer ago than the
retention is freed, and a running, submitted or failed sub-analysis's is never touched;
with real imagedb rows in the embedded PostgreSQL."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import psycopg2
import pytest
from psycopg2 import sql

from cpp_dagster.analysis import work_area
from cpp_dagster.imagedb.rows import RunStamp
from cpp_dagster.settings import Settings

CLI = str(Path(sys.executable).with_name("cpp-dagster"))
PIPELINE = {"sub_analyses": [{"type": "cellprofiler", "pipeline_file": "demo/demo_features.cppipe"}]}


def age(db, sub_id: int, column: str, days: float) -> None:
    """Move a sub-analysis's finish or error time `days` into the past."""
    with psycopg2.connect(db.url) as conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "UPDATE image_sub_analyses SET {0} = {0} - make_interval(secs => %s), "
                "start = start - make_interval(secs => %s) WHERE sub_id = %s"
            ).format(sql.Identifier(column)),
            (days * 86400, days * 86400, sub_id),
        )


def batch_folders(settings, sub_id: int, generation: int = 0, size: int = 3000) -> Path:
    """A batch's work folder as the batch step leaves it: LoadData CSV, CellProfiler's
    CSVs and log, the converted Parquet; `size` bytes per file."""
    batch = settings.work_root / f"sub_{sub_id}" / f"g{generation}" / "batch_0000"
    for rel in ("loaddata.csv", "cellprofiler.log", "output/MyExpt_Image.csv", "tables/Image.arrow"):
        (batch / rel).parent.mkdir(parents=True, exist_ok=True)
        (batch / rel).write_bytes(b"x" * size)
    return batch


class Lab:
    """Sub-analyses in each state the clean-up must tell apart, with their work folders."""

    def __init__(self, db, settings):
        self.db, self.settings = db, settings
        db.put_channel_map(1, {1: "HOECHST"})
        db.put_pipeline("gc-test", PIPELINE)
        self.acq = db.add_plate_acquisition("GC-1", channel_map_id=1, folder="/nas/GC-1")

    def sub(self, state: str, days_ago: float = 0, tables: bool = True) -> int:
        sub_id = self.db.submit_analysis(self.acq, "gc-test").sub_ids[0]
        batch_folders(self.settings, sub_id)
        if state == "submitted":
            return sub_id
        self.db.mark_sub_started(sub_id, batches=1, image_sets=1, stamp=RunStamp(generation=0))
        if state == "finished":
            table = f"results/GC-1/{self.acq}/{sub_id}/Image.parquet"
            if tables:
                (self.settings.nas_root / table).parent.mkdir(parents=True, exist_ok=True)
                (self.settings.nas_root / table).write_bytes(b"PAR1")
            self.db.mark_sub_finished(sub_id, {"job_folder": str(Path(table).parent), "file_list": [table]})
            age(self.db, sub_id, "finish", days_ago)
        elif state == "failed":
            self.db.mark_sub_failed(sub_id, "CellProfiler failed on batch_0000")
            age(self.db, sub_id, "error", days_ago)
        elif state == "running":
            age(self.db, sub_id, "finish", days_ago)  # started long ago, still running
        return sub_id


@pytest.fixture
def gc_lab(db, settings) -> Lab:
    return Lab(db, settings)


def collect(lab: Lab, days: float = 7, **options) -> dict[int, work_area.WorkAreaOutcome]:
    outcomes = work_area.collect(lab.db, lab.settings.work_root, lab.settings.nas_root, days, **options)
    return {o.sub_id: o for o in outcomes}


def test_gc_frees_finished_sub_analyses_past_the_retention_and_never_a_running_or_failed_one(gc_lab):
    old = gc_lab.sub("finished", days_ago=10)
    recent = gc_lab.sub("finished", days_ago=2)
    failed = gc_lab.sub("failed", days_ago=30)
    running = gc_lab.sub("running", days_ago=30)
    waiting = gc_lab.sub("submitted")
    no_tables = gc_lab.sub("finished", days_ago=10, tables=False)
    work = gc_lab.settings.work_root

    outcomes = collect(gc_lab)
    assert {s for s, o in outcomes.items() if o.freed} == {old}
    assert outcomes[old].bytes == 4 * 3000 and outcomes[old].reason.startswith("finished 10.0 days ago")
    assert not (work / f"sub_{old}").exists()
    for kept in (recent, failed, running, waiting, no_tables):
        assert (work / f"sub_{kept}" / "g0" / "batch_0000" / "tables" / "Image.arrow").is_file(), kept
        assert outcomes[kept].bytes == 0
    assert outcomes[failed].reason == "failed: kept for a re-run, which reuses its finished batches"
    assert outcomes[running].reason == "running: its batches are in use"
    assert "its tables are not in the results folder" in outcomes[no_tables].reason

    # A failed one goes only when asked, once the retention has run out since its failure.
    assert {s for s, o in collect(gc_lab, expire_failed=True).items() if o.freed} == {failed}
    assert not (work / f"sub_{failed}").exists() and (work / f"sub_{running}").exists()


def test_a_rerun_keeps_the_work_area_until_the_rerun_has_finished_and_aged(gc_lab):
    sub_id = gc_lab.sub("finished", days_ago=10)
    gc_lab.db.rerun_sub_analysis(sub_id)  # re-run requested: its batches will be reused
    assert collect(gc_lab)[sub_id].freed is False
    gc_lab.db.mark_sub_started(sub_id, batches=1, image_sets=1, stamp=RunStamp(generation=1))
    g1 = batch_folders(gc_lab.settings, sub_id, generation=1)
    (g1 / "tables" / "Image.arrow").unlink()
    os.link(
        gc_lab.settings.work_root / f"sub_{sub_id}" / "g0" / "batch_0000" / "tables" / "Image.arrow",
        g1 / "tables" / "Image.arrow",
    )  # a reused batch's Parquet is a link to g0's
    assert collect(gc_lab, days=0)[sub_id].reason == "running: its batches are in use"
    gc_lab.db.mark_sub_finished(sub_id, {"file_list": []}, RunStamp(generation=1))
    age(gc_lab.db, sub_id, "finish", 8)
    outcome = collect(gc_lab)[sub_id]
    assert outcome.freed and outcome.bytes == 7 * 3000  # the linked file counted once
    assert not (gc_lab.settings.work_root / f"sub_{sub_id}").exists()


def test_gc_command_prints_what_it_freed_and_a_dry_run_removes_nothing(gc_lab):
    old = gc_lab.sub("finished", days_ago=3)
    failed = gc_lab.sub("failed", days_ago=3)
    (gc_lab.settings.work_root / "pipeline-checks").mkdir()  # not a sub-analysis's: never touched
    (gc_lab.settings.work_root / "sub_999").mkdir()  # no such sub-analysis
    env = {**os.environ, "CPP_WORK_RETENTION_DAYS": "2"}

    dry = subprocess.run([CLI, "gc", "--dry-run"], env=env, capture_output=True, text=True, check=True)
    assert f"sub-analysis {old}: would free 12.0 kB (12000 bytes; finished 3.0 days ago)" in dry.stdout
    assert f"sub-analysis {failed}: kept (failed: kept for a re-run" in dry.stdout
    assert "sub-analysis 999: kept (no such sub-analysis in imagedb)" in dry.stdout
    assert (gc_lab.settings.work_root / f"sub_{old}").is_dir()

    longer = subprocess.run([CLI, "gc", "--retention-days", "5"], env=env, capture_output=True, text=True, check=True)
    assert f"sub-analysis {old}: kept (finished less than 5 days ago)" in longer.stdout
    done = subprocess.run([CLI, "gc"], env=env, capture_output=True, text=True, check=True)
    assert f"sub-analysis {old}: freed 12.0 kB (12000 bytes" in done.stdout
    # the sub-analyses' total, then one line per kind of run leftover (work_leftovers.py)
    assert "freed 12.0 kB (12000 bytes) of 1 sub-analyses' work areas" in done.stdout.splitlines()
    assert not (gc_lab.settings.work_root / f"sub_{old}").exists()
    assert (gc_lab.settings.work_root / f"sub_{failed}").is_dir()
    assert (gc_lab.settings.work_root / "pipeline-checks").is_dir()


def test_a_retention_that_is_not_a_number_of_days_is_one_clear_line(gc_lab):
    bad = subprocess.run(
        [CLI, "gc"], env={**os.environ, "CPP_WORK_RETENTION_DAYS": "a week"}, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == (
        "cpp-dagster gc: CPP_WORK_RETENTION_DAYS='a week': expected a number of days, 0 or more (e.g. 7 or 0.5)"
    )
    assert Settings.from_env({}).work_retention_days == 7.0
    assert Settings.from_env({"CPP_WORK_RETENTION_DAYS": "0.5"}).work_retention_days == 0.5


def test_the_nightly_cleaning_frees_what_gc_frees_and_says_what_it_kept(gc_lab, monkeypatch):
    """The job `clean_work_area` (on by default, every night) is `cpp-dagster gc` with the
    deployment's retention: its run frees the finished sub-analysis past the retention,
    keeps the recent and failed ones, and its step's metadata gives the totals."""
    from cpp_dagster.definitions import build_defs

    monkeypatch.setenv("CPP_WORK_RETENTION_DAYS", "2.5")
    old = gc_lab.sub("finished", days_ago=3)
    recent = gc_lab.sub("finished", days_ago=2)
    failed = gc_lab.sub("failed", days_ago=30)
    defs = build_defs()
    schedule = defs.resolve_schedule_def("clean_work_area_nightly")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING and schedule.cron_schedule == "30 3 * * *"

    instance = dg.DagsterInstance.ephemeral()
    result = defs.resolve_job_def("clean_work_area").execute_in_process(instance=instance)
    assert result.success
    work = gc_lab.settings.work_root
    assert not (work / f"sub_{old}").exists()
    assert (work / f"sub_{recent}").is_dir() and (work / f"sub_{failed}").is_dir()
    [materialized] = [e for e in result.all_node_events if e.event_type_value == "STEP_OUTPUT"]
    metadata = {k: v.value for k, v in materialized.step_output_data.metadata.items()}
    assert metadata["freed_bytes"] == 12000 and metadata["freed_sub_analyses"] == [old]
    assert metadata["kept_sub_analyses"] == 2 and metadata["retention_days"] == 2.5
    logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any(f"sub-analysis {failed}: kept (failed: kept for a re-run" in m for m in logs)


def test_two_gc_at_once_free_each_work_area_once_and_neither_crashes(gc_lab):
    """The second gc lists a folder, then waits for its row while the first removes it
    (the row lock held here stands for the first gc): it reports the folder as already
    cleaned instead of failing on the missing folder and leaving the rest uncleaned."""
    contested = gc_lab.sub("finished", days_ago=10)
    other = gc_lab.sub("finished", days_ago=10)
    folder = gc_lab.settings.work_root / f"sub_{contested}"
    first = psycopg2.connect(gc_lab.db.url)
    result: dict = {}
    with first.cursor() as cur:
        cur.execute("SELECT 1 FROM image_sub_analyses WHERE sub_id = %s FOR UPDATE", (contested,))
        second = threading.Thread(target=lambda: result.update(outcomes=collect(gc_lab)))
        second.start()
        deadline = time.monotonic() + 30
        while not waiting_for_a_lock(gc_lab.db.url) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert waiting_for_a_lock(gc_lab.db.url), "the second gc never waited for the row"
        shutil.rmtree(folder)  # what the first gc does while it holds the row
    first.commit()
    first.close()
    second.join(timeout=30)
    outcomes = result["outcomes"]
    assert (
        not outcomes[contested].freed and outcomes[contested].reason == "already cleaned by another gc at the same time"
    )
    assert outcomes[other].freed and not (gc_lab.settings.work_root / f"sub_{other}").exists()


def waiting_for_a_lock(url: str) -> bool:
    """Some session of this database waits for a lock (a row lock: a transaction id)."""
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cur.fetchone()[0] > 0
