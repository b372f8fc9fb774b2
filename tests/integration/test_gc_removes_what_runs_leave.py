"""The nightly `clean_work_area` job (and `cpp-dagster gc`) also removes, past the
retention, what runs leave in the work area: compute logs and IO-manager pickles of runs
that have ended, unused pipeline-check cache entries and training folders of versions not
running. Never anything of a run still active, never through a symbolic link. Real
imagedb, a real Dagster instance on PostgreSQL, the real job."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest

from cpp_dagster.analysis import cellprofiler, pipeline_check
from cpp_dagster.settings import load_settings

DAY = 86400


def old(path: Path, days: float = 10) -> Path:
    """Every entry under `path` (and `path`) last changed `days` ago (links untouched)."""
    when = time.time() - days * DAY
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.utime(os.path.join(root, name), (when, when), follow_symlinks=False)
    os.utime(path, (when, when), follow_symlinks=False)
    return path


def folder_with_file(path: Path, name: str = "file", size: int = 1000) -> Path:
    path.mkdir(parents=True)
    (path / name).write_bytes(b"x" * size)
    return path


def run_folder(path: Path, days: float = 10) -> Path:
    """`<path>/step/result`, 1,000 bytes, all of it last changed `days` ago."""
    folder_with_file(path / "step", "result")
    return old(path, days)


def active_run(instance: dg.DagsterInstance, **tags: str) -> str:
    """A run that has not ended (created, not yet started)."""
    run_id = str(uuid.uuid4())
    instance.add_run(dg.DagsterRun(job_name="training_job", run_id=run_id, tags=tags))
    return run_id


def ended_run(instance: dg.DagsterInstance) -> str:
    run_id = active_run(instance)
    instance.report_run_canceled(instance.get_run_by_id(run_id))
    return run_id


@pytest.fixture
def work(db, settings, monkeypatch, tmp_path) -> Path:
    """The work area, with a pipeline-check cache of this test's own (not the session's)."""
    monkeypatch.setenv("CPP_PIPELINE_CHECK_CACHE", str(tmp_path / "checks"))
    monkeypatch.setenv("CPP_WORK_RETENTION_DAYS", "7")
    root = load_settings().work_root
    root.mkdir(parents=True, exist_ok=True)
    return root


def clean(instance: dg.DagsterInstance) -> dict:
    from cpp_dagster.definitions import build_defs

    result = build_defs().resolve_job_def("clean_work_area").execute_in_process(instance=instance)
    assert result.success
    [output] = [e for e in result.all_node_events if e.event_type_value == "STEP_OUTPUT"]
    return {k: v.value for k, v in output.step_output_data.metadata.items()}


@pytest.mark.parametrize("kind", ["compute-logs", "dagster-io"])
def test_an_ended_runs_logs_and_pickles_go_an_active_runs_stay(work, dagster_instance, kind):
    gone = run_folder(work / kind / ended_run(dagster_instance))
    running = run_folder(work / kind / active_run(dagster_instance))
    recent = run_folder(work / kind / ended_run(dagster_instance), days=1)
    # an asset partition's pickles are its latest materialization: never a run's leftover
    asset = run_folder(work / kind / "feature_tables")
    metadata = clean(dagster_instance)
    assert not gone.exists()
    assert running.is_dir() and recent.is_dir() and asset.is_dir()
    assert metadata["freed_leftovers"] == 1 and metadata["freed_bytes"] >= 1000


def test_unused_pipeline_check_entries_go_a_used_one_is_refreshed(work, dagster_instance, tmp_path):
    checks = tmp_path / "checks"
    checks.mkdir()
    unused = old_file(checks / f"{'a' * 64}.json")
    interrupted = old_file(checks / f"{'b' * 64}.json12345.tmp")
    other = old_file(checks / "notes.txt")
    pipeline = tmp_path / "p.cppipe"
    pipeline.write_text("CellProfiler Pipeline\n")
    ran = cellprofiler.version("cp", checks)  # what the "executable" reports, as inspect keys it
    used = checks / f"{pipeline_check.cache_key(pipeline, 'cp', ran)}.json"
    used.write_text('{"modules": [], "image_inputs": [], "needs_images": {}, "exports": []}')
    old(used)
    pipeline_check.inspect(pipeline, cellprofiler="cp", cache_dir=checks)  # a hit: last used now
    clean(dagster_instance)
    assert not unused.exists() and not interrupted.exists()
    assert used.is_file() and other.is_file()


def old_file(path: Path) -> Path:
    path.write_text("{}")
    return old(path)


def test_a_training_folder_goes_once_its_version_is_not_running(work, dagster_instance):
    idle = old(folder_with_file(work / "training" / "cp-v1"))
    busy = old(folder_with_file(work / "training" / "cp-v2"))
    active_run(dagster_instance, **{"dagster/partition": "cp-v2"})
    still_written = old(folder_with_file(work / "training" / "cp-v3"))
    (still_written / "model.partial").write_bytes(b"y")  # written to just now
    clean(dagster_instance)
    assert not idle.exists()
    assert busy.is_dir() and still_written.is_dir()


def test_links_are_never_followed_nor_what_they_point_at_removed(work, dagster_instance, tmp_path):
    outside = folder_with_file(tmp_path / "precious")
    old(outside)
    run_folder = work / "compute-logs" / ended_run(dagster_instance)
    run_folder.parent.mkdir(parents=True)
    run_folder.symlink_to(outside)  # a run folder that is a link
    inner = old(folder_with_file(work / "dagster-io" / ended_run(dagster_instance) / "step"))
    (inner / "escape").symlink_to(outside)  # a link inside an old run folder
    old(inner.parent)
    (work / "training").symlink_to(outside)  # the training folder itself a link
    clean(dagster_instance)
    assert (outside / "file").read_bytes() == b"x" * 1000
    assert run_folder.is_symlink()
    assert not inner.parent.exists()  # the folder went, the link with it, not its target
    assert (work / "training").is_symlink()


def test_gc_without_a_dagster_instance_keeps_runs_leftovers_and_says_so(work, monkeypatch, tmp_path):
    import subprocess
    import sys

    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    logs = old(folder_with_file(work / "compute-logs" / str(uuid.uuid4())))
    (tmp_path / "checks").mkdir()
    unused = old_file(tmp_path / "checks" / f"{'c' * 64}.json")
    cli = str(Path(sys.executable).with_name("cpp-dagster"))
    done = subprocess.run([cli, "gc"], capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert done.returncode == 0, done.stderr
    assert "DAGSTER_HOME is not set" in done.stderr
    assert logs.is_dir() and not unused.exists()


def test_gc_with_an_unreadable_dagster_home_keeps_runs_leftovers_in_one_line(work, tmp_path):
    import subprocess
    import sys

    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("storage: [this is: not, a valid: instance")
    logs = old(folder_with_file(work / "compute-logs" / str(uuid.uuid4())))
    cli = str(Path(sys.executable).with_name("cpp-dagster"))
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    done = subprocess.run([cli, "gc"], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    [said] = [line for line in done.stderr.splitlines() if "DAGSTER_HOME could not be read" in line]
    assert "Traceback" not in done.stderr and logs.is_dir()
