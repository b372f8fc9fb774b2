"""CellProfiler never outlives the batch step that started it: killed with its step (the
kernel's parent-death signal), and stopped when the step learns its run is gone. Otherwise
it would go on writing into the batch folder that the step's retry runs CellProfiler in.
A stand-in `cellprofiler` (a shell script that records its pid and sleeps) keeps this fast."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from cpp_dagster.analysis import cellprofiler


@pytest.fixture
def sleeping_cellprofiler(tmp_path) -> tuple[Path, Path]:
    pid_file = tmp_path / "cellprofiler.pid"
    exe = tmp_path / "cellprofiler"
    exe.write_text(f"#!/bin/sh\necho $$ > {pid_file}\necho 'CellProfiler running'\nexec sleep 120\n")
    exe.chmod(0o755)
    batch_dir = tmp_path / "batch_0000"
    batch_dir.mkdir()
    (batch_dir / "loaddata.csv").write_text("FileName_DNA\n")
    return exe, pid_file


def started(pid_file: Path, timeout: float = 30) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid_file.is_file() and pid_file.read_text().strip():
            return psutil.Process(int(pid_file.read_text()))
        time.sleep(0.05)
    raise TimeoutError("the stand-in CellProfiler never started")


def gone_within(process: psutil.Process, seconds: float) -> bool:
    """Exited (a zombie waiting for its reaper counts) within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_cellprofiler_dies_with_its_killed_batch_step(sleeping_cellprofiler, tmp_path):
    exe, pid_file = sleeping_cellprofiler
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from cpp_dagster.analysis import cellprofiler\n"
        "cellprofiler.run_batch(cellprofiler=sys.argv[1], pipeline=Path('x.cppipe'), batch_dir=Path(sys.argv[2]),\n"
        "                       expected_image_sets=1, timeout_s=600, echo=lambda line: None)\n"
    )
    step = subprocess.Popen([sys.executable, "-c", code, str(exe), str(tmp_path / "batch_0000")])
    cp = started(pid_file)
    try:
        os.kill(step.pid, signal.SIGKILL)  # as the kernel's OOM killer, or `kill -9`
        step.wait(10)
        assert gone_within(cp, 5), "CellProfiler outlived its killed batch step"
    finally:
        if not gone_within(cp, 0):
            cp.kill()
    assert not (tmp_path / "batch_0000" / "output").exists()


def test_cellprofiler_is_stopped_once_its_run_is_gone_and_nothing_is_published(sleeping_cellprofiler, tmp_path):
    exe, pid_file = sleeping_cellprofiler
    run_gone = tmp_path / "run-worker-gone"
    started_at = time.monotonic()
    with pytest.raises(cellprofiler.BatchAbandoned, match="the run that started it is gone"):
        cellprofiler.run_batch(
            cellprofiler=str(exe),
            pipeline=Path("x.cppipe"),
            batch_dir=tmp_path / "batch_0000",
            expected_image_sets=1,
            timeout_s=600,
            echo=lambda line: run_gone.touch(),  # the run worker "dies" once CellProfiler is up
            abandoned=run_gone.exists,
        )
    assert time.monotonic() - started_at < 30
    assert not psutil.pid_exists(int(pid_file.read_text()))  # killed and reaped by run_batch
    assert not (tmp_path / "batch_0000" / "output").exists()  # the attempt published nothing
