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

import contextlib
import csv
import ctypes
import functools
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cpp_dagster import paths
from cpp_dagster.settings import Settings

LOG_TAIL_LINES = 30
ABANDONED_POLL_S = 1.0  # how often a running batch asks whether it was abandoned
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


class BatchAbandoned(CellProfilerError):
    """The process that asked for the batch is gone (`abandoned()` said so): CellProfiler
    was killed and nothing of this attempt became the batch's output."""


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


def version(cellprofiler: str, cache_dir: Path | None = None) -> str:
    """What `cellprofiler --version` of this executable says (the version that runs, not the
    one asked for); a readable reason when it cannot say. Kept in `cache_dir` (the pipeline
    check's cache) per executable file (its real path, inode, size and mtime: a reinstall
    asks again), since starting CellProfiler takes seconds."""
    try:
        real = Path(shutil.which(cellprofiler) or cellprofiler).resolve()
        st = real.stat()
    except OSError as e:
        return f"unknown ({cellprofiler}: {e.strerror})"
    key = hashlib.sha256(f"{real}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}\0{cellprofiler}".encode()).hexdigest()
    cached = Path(cache_dir) / "versions" / key if cache_dir is not None else None
    with contextlib.suppress(OSError):
        if cached is not None:
            return cached.read_text()
    reported = _ask_version(cellprofiler)
    if cached is not None and not reported.startswith("unknown"):
        with contextlib.suppress(OSError):
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(f".{key}.{os.getpid()}.tmp")
            tmp.write_text(reported)
            tmp.replace(cached)
    return reported


@functools.cache
def _ask_version(cellprofiler: str) -> str:
    try:
        done = subprocess.run(
            [cellprofiler, "--version"], capture_output=True, text=True, timeout=120, env=cellprofiler_environment()
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({cellprofiler} --version: {e})"
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[-1].strip() if done.returncode == 0 and lines else f"unknown (exit {done.returncode})"


def executable_for(
    cp_version: str | None, *, default: str, versions: Sequence[tuple[str, str]] = (), cache_dir: Path | None = None
) -> str:
    """The executable that runs `cp_version` here: `default` (CPP_CELLPROFILER) without one,
    or when it reports that version; else the one `versions` (CPP_CELLPROFILER_VERSIONS) maps
    it to, once it reports that version. Anything else is a CellProfilerError naming the
    versions installed (what each executable reports), so one version never runs for another."""
    if cp_version is None:
        return default
    installed = {version(default, cache_dir): default}
    for name, executable in versions:
        reported = version(executable, cache_dir)
        if name == cp_version and reported != name:
            raise CellProfilerError(
                f"cp_version {cp_version!r}: CPP_CELLPROFILER_VERSIONS maps it to {executable}, which reports "
                f"{reported!r}; nothing was run"
            )
        installed.setdefault(reported, executable)
    if cp_version in installed:
        return installed[cp_version]
    have = ", ".join(f"{v} ({exe})" for v, exe in sorted(installed.items()))
    raise CellProfilerError(
        f"cp_version {cp_version!r} is not installed in this deployment; it has {have} "
        "(CPP_CELLPROFILER_VERSIONS maps versions to executables)"
    )


def executable_of(settings: Settings, cp_version: str | None) -> str:
    """The executable that runs a sub-analysis's `cp_version` in this deployment
    (`executable_for`); on Kubernetes the pod's image is the version's, so CPP_CELLPROFILER in it."""
    if settings.launch.executor == "k8s":
        return settings.cellprofiler
    return executable_for(
        cp_version,
        default=settings.cellprofiler,
        versions=settings.cellprofiler_versions,
        cache_dir=settings.pipeline_check_cache,
    )


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


# prctl(PR_SET_PDEATHSIG, SIGKILL), looked up once: the child calls only this between fork and exec
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In CellProfiler's process, before it starts: the kernel SIGKILLs it when the batch
    step that started it dies (a killed step, a killed run worker's orphan), so no
    CellProfiler outlives its step and writes into the folder the step's retry runs in."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


def run_batch(
    *,
    cellprofiler: str,
    pipeline: Path,
    batch_dir: Path,
    expected_image_sets: int,
    timeout_s: float,
    echo: Callable[[str], None] | None = None,
    abandoned: Callable[[], bool] | None = None,
) -> BatchOutcome:
    """Run CellProfiler on `batch_dir/loaddata.csv`; raise CellProfilerError on a non-zero
    exit or incomplete outputs, BatchTimeout (a CellProfilerError) on a timeout (a
    timeout is a failure, never a success). `abandoned`, asked every ABANDONED_POLL_S
    while CellProfiler runs: once it says True, CellProfiler is killed (BatchAbandoned)."""
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
            proc = subprocess.Popen(
                args,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
                preexec_fn=_die_with_parent,
            )
        except OSError as e:
            raise CellProfilerError(f"cannot start CellProfiler {cellprofiler!r}: {e}") from e

        def kill_on_timeout() -> None:
            timed_out.set()
            proc.kill()

        timer = threading.Timer(timeout_s, kill_on_timeout)
        timer.start()
        gone, watch_done = threading.Event(), threading.Event()

        def kill_when_abandoned() -> None:
            while not watch_done.wait(ABANDONED_POLL_S):
                if abandoned():
                    gone.set()
                    proc.kill()
                    return

        if abandoned is not None:
            threading.Thread(target=kill_when_abandoned, name="abandoned-watch", daemon=True).start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                tail.append(line)
                echo(line)
            exit_code = proc.wait()
        finally:
            timer.cancel()
            watch_done.set()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    seconds = time.monotonic() - started
    last_lines = "".join(tail).rstrip()

    if gone.is_set():
        raise BatchAbandoned(f"CellProfiler was stopped after {seconds:.0f} s: the run that started it is gone")
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
