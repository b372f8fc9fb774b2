"""`make demo`'s command on a fresh local directory: embedded PostgreSQL, the real
dagster-daemon and its sensor, real CellProfiler; the last line is the JSON outcome.

The same demo run then shows what its provenance is good for: the folder is beside the
tables and in imagedb's file list, `cpp-dagster provenance` verifies it (and says so when
a table was changed), `gc` frees the work area and leaves it, and the tables can be made
again from it alone (CellProfiler on the saved LoadData CSVs and pipeline, then the merge)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

from cpp_dagster.analysis import cellprofiler
from cpp_dagster.demo.register import DYES
from cpp_dagster.features import provenance
from cpp_dagster.settings import PROJECT_ROOT

CLI = str(Path(sys.executable).with_name("cpp-dagster"))
CELLPROFILER = str(PROJECT_ROOT / ".venv-cp" / "bin" / "cellprofiler")
TABLES = ("Image", "Nuclei", "Cells", "Cytoplasm")


def test_demo_command_leaves_tables_and_provenance_that_verify_survive_gc_and_reproduce(tmp_path):
    """One demo run (it takes a minute), then each thing the lab relies on, in order."""
    local = Path(tempfile.mkdtemp(prefix="cpp-demo-test-"))
    local.chmod(0o755)  # the embedded server runs as its own user and must reach its folder
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CPP_", "DAGSTER_"))}
    env.update(CPP_LOCAL_DIR=str(local), CPP_SENSOR_INTERVAL_S="2")
    try:
        proc = subprocess.run(
            [CLI, "demo", "--wells", "2", "--sites", "2", "--batch-size", "2"],
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        demo = (local, env, proc)
        demo_outcome_is_read_back_from_imagedb(demo)
        demo_leaves_its_provenance_beside_the_tables_and_in_imagedb(demo)
        provenance_command_verifies_the_tables_and_names_a_changed_one(demo, tmp_path)
        gc_frees_the_work_area_and_never_the_provenance(demo)
        a_result_is_reproducible_from_its_provenance_alone(demo, tmp_path)
    finally:
        subprocess.run([CLI, "local", "stop"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(local, ignore_errors=True)


def outcome(demo) -> dict:
    local, _, proc = demo
    daemon_log = local / "logs" / "dagster-daemon.log"
    assert proc.returncode == 0, proc.stderr[-3000:] + (daemon_log.read_text()[-3000:] if daemon_log.exists() else "")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def results_folder(demo) -> Path:
    return Path(outcome(demo)["tables"]["Image"]["path"]).parent


def sums(demo) -> list[str]:
    """The published tables' lines in the sub-analysis's SHA256SUMS."""
    sub = results_folder(demo) / provenance.folder_of(outcome(demo)["sub_analysis_id"])
    return (sub / provenance.SUMS).read_text().splitlines()


def demo_outcome_is_read_back_from_imagedb(demo):
    local, _, proc = demo
    result = outcome(demo)
    assert result["batches"] == 2 and result["image_sets"] == 4
    assert set(result["tables"]) == {"Image", "Nuclei", "Cells", "Cytoplasm", "single_cell", "well_profiles"}
    assert result["tables"]["single_cell"]["rows"] == result["tables"]["Cells"]["rows"]
    assert result["tables"]["well_profiles"]["rows"] == 2
    assert result["tables"]["Image"]["rows"] == 4
    for table in result["tables"].values():
        assert table["rows"] > 0 and table["columns"] > 2
        assert Path(table["path"]).is_file()
        assert table["path"].startswith(str(local / "nas" / "results" / "DEMO-0001"))
    assert result["db"]["finish"] and result["db"]["error"] is None
    assert result["dagster_run"]["status"] == "SUCCESS"
    assert "batches finished" in proc.stderr  # progress was followed from imagedb


def demo_leaves_its_provenance_beside_the_tables_and_in_imagedb(demo):
    result, folder = outcome(demo), results_folder(demo)
    sub = folder / provenance.folder_of(result["sub_analysis_id"])
    listed = set(result["db"]["file_list"])
    rel = str(sub.relative_to(folder.parents[3]))  # relative to the NAS root, as imagedb lists it
    for name in (provenance.RECORD, provenance.PIPELINE, provenance.LOADDATA, provenance.IMAGES, provenance.SUMS):
        assert (sub / name).is_file() and f"{rel}/{name}" in listed, name
    record = json.loads((sub / provenance.RECORD).read_text())
    assert record["cellprofiler"]["version"] == cellprofiler.version(CELLPROFILER)
    assert record["cellprofiler"]["version"][0].isdigit()  # what the executable said, e.g. 4.2.8
    assert record["pipeline"]["sha256"] == provenance.sha256_file(sub / provenance.PIPELINE)
    assert record["meta"]["pipeline_file"] == "demo/demo_features.cppipe"
    assert [r["run_id"] for r in record["dagster_runs"]] == [result["dagster_run"]["run_id"]]
    assert record["dagster_runs"][0]["started"] and record["dagster_runs"][0]["merged"]
    assert [(b["batch"], b["exit_code"], b["retries"]) for b in record["batches"]] == [
        ("batch_0000", 0, 0),
        ("batch_0001", 0, 0),
    ]
    assert all(b["seconds"] > 0 and b["log_tail"] for b in record["batches"])
    assert all(b["command"].startswith(f"$ {CELLPROFILER} -c -r ") for b in record["batches"])
    assert record["images"]["count"] == 4 * len(DYES)  # 4 image sets x the demo's channels
    for table in result["tables"]:
        assert any(line.endswith(f"  {table}.parquet") for line in sums(demo)), table  # derived ones too


def provenance_command_verifies_the_tables_and_names_a_changed_one(demo, tmp_path):
    folder, env = results_folder(demo), demo[1]
    tables = len(sums(demo))
    ok = subprocess.run([CLI, "provenance", str(folder)], env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert f"{tables} verified" in ok.stdout and f"CellProfiler {cellprofiler.version(CELLPROFILER)} (" in ok.stdout
    copy = tmp_path / "edited"
    shutil.copytree(folder.resolve(), copy)
    table = pq.read_table(copy / "Nuclei.parquet")
    pq.write_table(table.slice(1), copy / "Nuclei.parquet")  # a row removed after publishing
    bad = subprocess.run([CLI, "provenance", str(copy)], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert "CHANGED      Nuclei.parquet" in bad.stdout and f"{tables - 1} verified" in bad.stdout


def gc_frees_the_work_area_and_never_the_provenance(demo):
    local, env, _ = demo
    result, folder = outcome(demo), results_folder(demo)
    work = local / "nas" / "work" / f"sub_{result['sub_analysis_id']}"
    assert work.is_dir()
    gc = subprocess.run([CLI, "gc", "--retention-days", "0"], env=env, capture_output=True, text=True, timeout=120)
    assert gc.returncode == 0, gc.stderr
    assert not work.exists()
    check = subprocess.run([CLI, "provenance", str(folder)], env=env, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and f"{len(sums(demo))} verified" in check.stdout


def a_result_is_reproducible_from_its_provenance_alone(demo, tmp_path):
    """After `gc` (the work area is gone): CellProfiler on the saved LoadData CSVs and
    pipeline, then `cpp-dagster merge`: the same tables, except CellProfiler's own
    ExecutionTime_* columns (how long each module took)."""
    result, folder = outcome(demo), results_folder(demo)
    sub = folder / provenance.folder_of(result["sub_analysis_id"])
    batches = tmp_path / "batches"
    with tarfile.open(sub / provenance.LOADDATA) as tar:
        tar.extractall(batches, filter="data")
    for batch in sorted(batches.iterdir()):
        (batch / "output").mkdir()
        args = cellprofiler.command(CELLPROFILER, sub / provenance.PIPELINE, batch / "loaddata.csv", batch / "output")
        subprocess.run(args, check=True, capture_output=True, timeout=600, env=cellprofiler.cellprofiler_environment())
        (batch / "loaddata.csv").unlink()  # not an output of the batch
        for out in (batch / "output").iterdir():
            out.rename(batch / out.name)
        (batch / "output").rmdir()
    merged = tmp_path / "merged"
    done = subprocess.run([CLI, "merge", str(batches), str(merged)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for name in TABLES:
        again, published = pq.read_table(merged / f"{name}.parquet"), pq.read_table(folder / f"{name}.parquet")
        keep = [c for c in published.column_names if not c.startswith("ExecutionTime_")]
        assert again.select(keep).equals(published.select(keep)), name
