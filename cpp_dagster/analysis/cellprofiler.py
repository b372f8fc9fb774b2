"""Run real CellProfiler headless on one batch and verify what it wrote.

The same function runs in a local step process and in a Kubernetes step pod. Layout
of a batch's work folder (on the shared work area, never a step-local disk):

    <batch_dir>/loaddata.csv        the batch's image sets (written by planning)
    <batch_dir>/cellprofiler.log    stdout+stderr of the last attempt
    <batch_dir>/output/             complete outputs of the successful attempt only

Outputs are written to `output.partial/` and renamed to `output/` once verified, so
a retried or killed batch never leaves files that look finished.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cpp_dagster import paths

LOG_TAIL_LINES = 30
# What CellProfiler (and any plugin it loads) gets of the step's environment: an allow-list,
# so imagedb's and Dagster's URLs, PG* variables and tokens never reach it.
ENVIRONMENT_ALLOWED = (
    "PATH",
    "HOME",
    "TMPDIR",
    "TMP",
    "TEMP",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "LD_LIBRARY_PATH",
    "JAVA_HOME",
    "MPLCONFIGDIR",
    "XDG_CACHE_HOME",
    "XDG_CONFIG_HOME",
    "PYTHONDONTWRITEBYTECODE",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "OMP_NUM_THREADS",
)


class CellProfilerError(RuntimeError):
    """A batch failed: the message names the exit code and ends with the log's last lines."""


class BatchTimeout(CellProfilerError):
    """A batch ran past its job_timeout and was killed. Unlike a crash or an eviction,
    running it again would most likely take as long again: not retried by default
    (CPP_RETRY_TIMEOUTS)."""


@dataclass(frozen=True)
class BatchOutcome:
    batch: str
    exit_code: int
    seconds: float
    output_dir: str
    log_path: str
    image_sets: int
    files: list[str] = field(default_factory=list)
    reused: bool = False  # outputs of an earlier run of the same batch, not run again


def resolve_pipeline_file(pipelines_dir: Path, pipeline_file: str) -> Path:
    """The `.cppipe` a sub-analysis names, which must exist inside the pipelines folder
    (the path rule: relative, no `..`, no control character, not leaving the folder
    through a symlink)."""
    try:
        path = paths.under_relative(pipelines_dir, pipeline_file, what="pipeline file").resolve()
    except paths.UnsafePathError as e:
        raise CellProfilerError(f"{e} (it must name a file inside the pipelines folder {pipelines_dir})") from None
    if not path.is_file():
        raise CellProfilerError(f"pipeline file {pipeline_file!r} does not exist in {pipelines_dir.resolve()}")
    return path


def command(cellprofiler: str, pipeline: Path, data_file: Path, output_dir: Path) -> list[str]:
    # -c headless, -r run; imageio_reader instead of Bio-Formats, which would try to
    # download Java artifacts at start-up.
    return [
        cellprofiler,
        "-c",
        "-r",
        "-p",
        str(pipeline),
        "--data-file",
        str(data_file),
        "-o",
        str(output_dir),
        "-e",
        "imageio_reader",
    ]


def cellprofiler_environment(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The environment CellProfiler runs with: only the allowed variables of `environ`
    (`ENVIRONMENT_ALLOWED`), one OpenMP thread (a batch is one core's work) and matplotlib
    without a display."""
    env = {k: v for k, v in environ.items() if k in ENVIRONMENT_ALLOWED}
    return {**env, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}


def run_batch(
    *,
    cellprofiler: str,
    pipeline: Path,
    batch_dir: Path,
    expected_image_sets: int,
    timeout_s: float,
    echo: Callable[[str], None] | None = None,
) -> BatchOutcome:
    """Run CellProfiler on `batch_dir/loaddata.csv`; raise CellProfilerError on a non-zero
    exit or incomplete outputs, BatchTimeout (a CellProfilerError) on a timeout (a
    timeout is a failure, never a success)."""
    echo = echo or (lambda line: print(line, end="", file=sys.stdout, flush=True))
    batch_dir = Path(batch_dir)
    staging, final = batch_dir / "output.partial", batch_dir / "output"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    log_path = batch_dir / "cellprofiler.log"
    env = {**cellprofiler_environment(), "PYTHONUNBUFFERED": "1"}
    args = command(cellprofiler, pipeline, batch_dir / "loaddata.csv", staging)

    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    started = time.monotonic()
    timed_out = threading.Event()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(args) + "\n")
        try:
            proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        except OSError as e:
            raise CellProfilerError(f"cannot start CellProfiler {cellprofiler!r}: {e}") from e

        def kill_on_timeout() -> None:
            timed_out.set()
            proc.kill()

        timer = threading.Timer(timeout_s, kill_on_timeout)
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                tail.append(line)
                echo(line)
            exit_code = proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    seconds = time.monotonic() - started
    last_lines = "".join(tail).rstrip()

    if timed_out.is_set():
        raise BatchTimeout(
            f"CellProfiler did not finish within the job timeout of {timeout_s:.0f} s and was killed; "
            f"last lines of its log:\n{last_lines}"
        )
    if exit_code != 0:
        raise CellProfilerError(
            f"CellProfiler exited with code {exit_code} after {seconds:.0f} s; last lines of its log:\n{last_lines}"
        )
    rows = image_table_rows(staging)
    if rows is not None and rows != expected_image_sets:
        raise CellProfilerError(
            f"CellProfiler exited 0 but its Image table has {rows} rows for {expected_image_sets} image sets; "
            f"last lines of its log:\n{last_lines}"
        )
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    files = sorted(str(p.relative_to(final)) for p in final.rglob("*") if p.is_file())
    return BatchOutcome(batch_dir.name, exit_code, seconds, str(final), str(log_path), expected_image_sets, files)


def image_table_rows(output_dir: Path) -> int | None:
    """Rows of the ExportToSpreadsheet Image table (`*Image.csv`), None when there is none."""
    tables = sorted(Path(output_dir).glob("*Image.csv"))
    if not tables:
        return None
    with open(tables[0], newline="") as f:
        return sum(1 for _ in csv.reader(f)) - 1
