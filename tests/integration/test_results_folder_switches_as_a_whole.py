"""A merge killed (SIGKILL) while it writes the tables, then run again: the results
folder shows the old tables or the new ones, never a mix, and no staging folder is left.
The merge runs as `cpp-dagster merge` in a process of its own, on enough data to take
a while."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from cpp_dagster.features.results_folder import versions_dir

CLI = str(Path(sys.executable).with_name("cpp-dagster"))
BATCHES, IMAGES, OBJECTS_PER_IMAGE, FEATURES = 4, 200, 10, 100


def write_plate(src: Path, version: int, tables: list[str]) -> None:
    """ExportToSpreadsheet-like outputs of BATCHES batches; every value of every table
    carries `version`, so a table tells which merge wrote it."""
    rng = np.random.default_rng(version)
    for b in range(BATCHES):
        folder = src / f"batch_{b:04d}"
        folder.mkdir(parents=True)
        for table in tables:
            n = IMAGES if table == "Image" else IMAGES * OBJECTS_PER_IMAGE
            columns = {"ImageNumber": np.repeat(np.arange(1, IMAGES + 1), n // IMAGES), "Version": np.full(n, version)}
            if table != "Image":
                columns["ObjectNumber"] = np.tile(np.arange(1, OBJECTS_PER_IMAGE + 1), IMAGES)
            for f in range(FEATURES):
                columns[f"{table}_Feature{f}"] = rng.random(n)
            pacsv.write_csv(pa.table(columns), folder / f"Plate_{table}.csv")


def versions_seen(folder: Path) -> tuple[frozenset, frozenset] | None:
    """(the tables, the versions in them) a reader sees in the folder, resolved once as
    a reader that wants one consistent view does; None when there is no folder."""
    try:
        root = folder.resolve(strict=True)
        tables = list(root.glob("*.parquet"))
        versions = {v for t in tables for v in pq.read_table(t, columns=["Version"])["Version"].unique().to_pylist()}
        return frozenset(t.stem for t in tables), frozenset(versions)
    except OSError:  # the version was retired while being read: read again
        return None


class Watcher(threading.Thread):
    """Reads the results folder over and over while merges run; records what it saw."""

    def __init__(self, folder: Path):
        super().__init__(daemon=True)
        self.folder, self.seen, self.stop = folder, [], threading.Event()

    def run(self):
        while not self.stop.is_set():
            seen = versions_seen(self.folder)
            if seen is not None:
                self.seen.append(seen)
            time.sleep(0.02)


def merge_process(src: Path, dest: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [CLI, "merge", str(src), str(dest)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ
    )


def test_a_merge_killed_mid_write_then_rerun_never_shows_a_mix(tmp_path):
    old_src, new_src, dest = tmp_path / "old", tmp_path / "new", tmp_path / "results" / "PLATE" / "1" / "7"
    write_plate(old_src, 1, ["Image", "Nuclei", "Cells", "Cytoplasm"])
    write_plate(new_src, 2, ["Image", "Nuclei", "Cells"])  # the new pipeline no longer exports Cytoplasm
    assert subprocess.run([CLI, "merge", str(old_src), str(dest)], capture_output=True).returncode == 0
    old = (frozenset({"Image", "Nuclei", "Cells", "Cytoplasm"}), frozenset({1}))
    new = (frozenset({"Image", "Nuclei", "Cells"}), frozenset({2}))  # Cytoplasm is gone
    assert versions_seen(dest) == old

    watcher = Watcher(dest)
    watcher.start()
    try:
        merging = merge_process(new_src, dest)
        deadline = time.monotonic() + 120
        while not any(p.suffix == ".parquet" and p.stat().st_size > 0 for p in versions_dir(dest).glob("staging-*/*")):
            assert merging.poll() is None, "the merge ended before it could be killed mid-write"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        merging.send_signal(signal.SIGKILL)  # mid-write: its first tables are being written
        merging.wait()
        assert versions_seen(dest) == old  # the killed merge changed nothing visible
        assert [p.name.split("-")[0] for p in versions_dir(dest).iterdir()].count("staging") == 1

        rerun = merge_process(new_src, dest)
        assert rerun.wait(timeout=300) == 0, rerun.stderr.read().decode()
        assert versions_seen(dest) == new
    finally:
        watcher.stop.set()
        watcher.join()

    assert set(watcher.seen) <= {old, new}, set(watcher.seen) - {old, new}  # never a mix
    assert old in watcher.seen and new in watcher.seen
    # no staging folder, no old version and no stray link are left behind
    assert [p.name.split("-")[0] for p in versions_dir(dest).iterdir()] == ["v"]
    assert sorted(p.name for p in dest.parent.iterdir()) == [".7.versions", "7"]
