"""`make demo`: the whole flow on embedded defaults, driven by the real Dagster daemon.

Registers a synthetic plate and a submitted analysis in imagedb, starts
`dagster-daemon` (sensors, run queue, run monitoring), waits until the sensor's run
has recorded its outcome in imagedb and finished in Dagster, and returns the summary.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.parquet as pq

from cpp_dagster import paths
from cpp_dagster.demo.register import DEMO_PIPELINE, install_demo_pipeline, plate_wells, register_plate
from cpp_dagster.imagedb.rows import SubAnalysisStatus
from cpp_dagster.imagedb.store import ImageDB
from cpp_dagster.local import environment as local_env
from cpp_dagster.settings import PROJECT_ROOT, load_settings
from cpp_dagster.training.store import ConfigStore


@contextmanager
def dagster_process(command: str, args: list[str], env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen]:
    """A Dagster command of this virtualenv (`dagster-daemon`, `dagster-webserver`) over
    workspace.yaml in its own process group, its output in `log_path`; stopped (with its
    code server and run workers) on exit, also when the body fails."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    exe = Path(sys.executable).with_name(command)
    with open(log_path, "a") as log:
        proc = subprocess.Popen(
            [str(exe), *args, "-w", str(PROJECT_ROOT / "workspace.yaml")],
            cwd=PROJECT_ROOT,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield proc
        finally:
            _stop_group(proc)


def dagster_daemon(env: dict[str, str], log_path: Path):
    """`dagster-daemon run` (sensors, run queue, backfills, run monitoring)."""
    return dagster_process("dagster-daemon", ["run"], env, log_path)


def _stop_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_for_outcome(
    db: ImageDB, sub_id: int, timeout_s: float, echo: Callable[[str], None], daemon: subprocess.Popen | None = None
):
    """Poll imagedb until the sub-analysis has `finish` or `error`; echo progress."""
    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        sub = db.sub_analysis(sub_id)
        message = SubAnalysisStatus.from_json(sub.status).message
        if message and message != last:
            echo(f"imagedb status: {message}")
            last = message
        if sub.finish or sub.error:
            return sub
        if daemon is not None and daemon.poll() is not None:
            raise RuntimeError(f"dagster-daemon exited with code {daemon.returncode}; see its log")
        time.sleep(1)
    raise TimeoutError(f"sub-analysis {sub_id} has no outcome after {timeout_s:.0f} s")


def wait_for_run(sub_id: int, timeout_s: float):
    """The Dagster run of a sub-analysis, once it has reached a terminal status."""
    import dagster as dg

    deadline = time.monotonic() + timeout_s
    with dg.DagsterInstance.get() as instance:
        while time.monotonic() < deadline:
            runs = instance.get_runs(filters=dg.RunsFilter(tags={"imagedb/sub_id": str(sub_id)}), limit=1)
            if runs and runs[0].is_finished:
                return runs[0]
            time.sleep(1)
    raise TimeoutError(f"the run of sub-analysis {sub_id} did not finish in {timeout_s:.0f} s")


def summary(db: ImageDB, settings, acq_id: int, analysis_id: int, sub, run=None) -> dict:
    status = SubAnalysisStatus.from_json(sub.status)
    tables = {}
    for f in (sub.result or {}).get("file_list", []):
        path = paths.under_relative(settings.nas_root, f, what="result file")
        if path.suffix == ".parquet":
            meta = pq.read_metadata(path)
            tables[path.stem] = {"path": str(path), "rows": meta.num_rows, "columns": meta.num_columns}
    out = {
        "plate_acquisition_id": acq_id,
        "analysis_id": analysis_id,
        "sub_analysis_id": sub.sub_id,
        "batches": status.batches,
        "image_sets": status.image_sets,
        "tables": tables,
        "db": {
            "finish": sub.finish.isoformat(sep=" ") if sub.finish else None,
            "error": sub.error.isoformat(sep=" ") if sub.error else None,
            "file_list": (sub.result or {}).get("file_list", []),
        },
    }
    if sub.error:
        out["db"]["message"] = status.message
    if run is not None:
        out["dagster_run"] = {"run_id": run.run_id, "status": run.status.value}
    return out


def run_demo(
    *,
    wells: int = 4,
    sites: int = 4,
    batch_size: int = 4,
    seed: int = 1,
    timeout_s: float = 1800,
    echo: Callable[[str], None] = print,
) -> dict:
    os.environ.setdefault("CPP_SENSOR_INTERVAL_S", "5")  # the demo's sensors tick faster, unless set
    env = local_env.environment(compounds=False)
    os.environ.update(env)
    db = ImageDB(env["CPP_IMAGEDB_URL"])
    db.apply_schema()
    settings = load_settings()
    ConfigStore(env["CPP_TRAINING_DB_URL"]).apply_schema()  # so `make dev` afterwards ticks every sensor clean
    install_demo_pipeline(db, settings, batch_size=batch_size)
    started = time.monotonic()
    acq_id = register_plate(
        db, settings, barcode=f"DEMO-{seed:04d}", wells=plate_wells(wells), sites=list(range(1, sites + 1)), seed=seed
    )
    submitted = db.submit_analysis(acq_id, DEMO_PIPELINE)
    sub_id = submitted.sub_ids[0]
    echo(
        f"registered plate acquisition {acq_id} ({wells} wells x {sites} sites x 5 channels) "
        f"and submitted analysis {submitted.analysis_id} (sub-analysis {sub_id}); starting dagster-daemon"
    )
    with dagster_daemon(env, settings.local_dir / "logs" / "dagster-daemon.log") as daemon:
        sub = wait_for_outcome(db, sub_id, timeout_s, echo, daemon)
        run = wait_for_run(sub_id, 120)
    echo(f"done in {time.monotonic() - started:.0f} s (Dagster run {run.run_id}: {run.status.value})")
    return summary(db, settings, acq_id, submitted.analysis_id, sub, run)
