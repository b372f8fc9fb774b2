"""The route "batch-converted" of the merge benchmark: each batch converts its own CSVs to
Parquet (`cpp_dagster.features.batch_tables.convert_batch`, what a batch step does after
CellProfiler), CONVERT_AT_ONCE batches at a time, as batch pods would; then the final merge
concatenates the converted Parquet (`merge_converted`). The two steps are measured apart:
the conversion's total CPU and its wall time, and the final merge's wall time, CPU and
peak RSS, against today's CSV merge (`merge_batches` over the CSVs).

The batches are laid out as in the work area: `work/batch_NNNN/output` is a link to the
generated batch folder, and the conversion writes `work/batch_NNNN/tables/`.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

CONVERT_AT_ONCE = 2  # batches converted side by side (2 batch pods on the benchmark's 2 cores)
GOALS = {"final_merge_vs_csv_merge": 0.25, "total_cpu_vs_csv_merge": 1.1, "peak_rss_mb": 1000.0}


def work_layout(src: Path, work: Path) -> list[Path]:
    """The work area's batch folders for the generated batches in `src`."""
    dirs = []
    for batch in sorted(p for p in Path(src).iterdir() if p.is_dir() and not p.name.startswith(".")):
        d = Path(work) / batch.name
        d.mkdir(parents=True, exist_ok=True)
        if not (d / "output").exists():
            os.symlink(batch.resolve(), d / "output")
        dirs.append(d)
    return dirs


def _convert(batch_dir: Path) -> float:
    from cpp_dagster.features.batch_tables import convert_batch

    cpu = time.process_time()
    convert_batch(batch_dir)
    return time.process_time() - cpu


def run_convert(src: Path, work: Path) -> float:
    """Every batch's conversion, CONVERT_AT_ONCE at a time, each worker a fresh process
    (as a pod is); returns the CPU seconds of the conversions alone (no imports)."""
    with ProcessPoolExecutor(CONVERT_AT_ONCE, mp_context=get_context("spawn")) as pool:
        return sum(pool.map(_convert, work_layout(src, work), chunksize=1))


def run_concat(work: Path, dest: Path) -> None:
    from cpp_dagster.features.batch_tables import merge_converted

    merge_converted(sorted(p for p in Path(work).iterdir() if p.is_dir() and not p.name.startswith(".")), dest)


def same_tables(a: Path, b: Path) -> list[str]:
    """Differences between the Parquet tables in folders `a` and `b` (none: the same
    tables, schemas and values), compared slice by slice: memory stays that of a few
    row groups."""
    import pyarrow.parquet as pq

    problems = []
    names_a, names_b = sorted(p.name for p in a.glob("*.parquet")), sorted(p.name for p in b.glob("*.parquet"))
    if names_a != names_b:
        return [f"tables {names_a} != {names_b}"]
    for name in names_a:
        fa, fb = pq.ParquetFile(a / name), pq.ParquetFile(b / name)
        if not fa.schema_arrow.equals(fb.schema_arrow):
            problems.append(f"{name}: schemas differ")
            continue
        if fa.metadata.num_rows != fb.metadata.num_rows:
            problems.append(f"{name}: {fa.metadata.num_rows} rows != {fb.metadata.num_rows}")
            continue
        ia, ib = fa.iter_batches(batch_size=8192), fb.iter_batches(batch_size=8192)
        xa = xb = None
        row = 0
        while True:
            xa = xa if xa is not None and len(xa) else next(ia, None)
            xb = xb if xb is not None and len(xb) else next(ib, None)
            if xa is None or xb is None:
                break
            n = min(len(xa), len(xb))
            if not xa.slice(0, n).equals(xb.slice(0, n)):
                problems.append(f"{name}: values differ in rows {row}..{row + n}")
                break
            xa, xb, row = xa.slice(n), xb.slice(n), row + n
    return problems


def report(figures: dict[str, dict]) -> list[tuple[str, bool]]:
    """Print the presets side by side; returns the goals, met or not. Times are those of
    the work inside each process (`work_s`, `work_cpu_s`: a batch or merge step's process
    has its interpreter and imports already); the whole processes' figures follow."""
    print()
    print("batch-converted route against today's CSV merge (work wall s / work CPU s / peak RSS MB):")
    print(
        f"{'preset':<11} {'CSV MB':>8} {'CSV merge':>20} {'conversion (2 at once)':>24} {'final merge':>20} "
        f"{'final/CSV wall':>15} {'CPU total/CSV':>14}"
    )
    checks = []
    for preset, f in figures.items():
        m, c, j = f["merge"], f["convert"], f["concat"]
        wall_ratio = j["work_s"] / m["work_s"]
        cpu_ratio = (c["work_cpu_s"] + j["work_cpu_s"]) / m["work_cpu_s"]

        def cell(r, wall="work_s", cpu="work_cpu_s"):
            return f"{r[wall]:.1f} / {r[cpu]:.1f} / {r['peak_rss_mb']:.0f}"

        print(
            f"{preset:<11} {f['csv_mb']:>8,.0f} {cell(m):>20} {cell(c):>24} {cell(j):>20} "
            f"{wall_ratio:>14.2f}x {cpu_ratio:>13.2f}x"
        )
        print(
            f"{'  processes':<20} {cell(m, 'wall_s', 'cpu_s'):>20} {cell(c, 'wall_s', 'cpu_s'):>24} "
            f"{cell(j, 'wall_s', 'cpu_s'):>20} {j['wall_s'] / m['wall_s']:>14.2f}x "
            f"{(c['cpu_s'] + j['cpu_s']) / m['cpu_s']:>13.2f}x"
        )
        checks += [
            (
                f"{preset}: final merge <= {GOALS['final_merge_vs_csv_merge']}x the CSV merge's wall time",
                wall_ratio <= GOALS["final_merge_vs_csv_merge"],
            ),
            (
                f"{preset}: conversion + final merge CPU <= {GOALS['total_cpu_vs_csv_merge']}x the CSV merge's",
                cpu_ratio <= GOALS["total_cpu_vs_csv_merge"],
            ),
            (
                f"{preset}: peak RSS <= {GOALS['peak_rss_mb']:.0f} MB in every step",
                max(m["peak_rss_mb"], c["peak_rss_mb"], j["peak_rss_mb"]) <= GOALS["peak_rss_mb"],
            ),
            (f"{preset}: batch-converted tables identical to the CSV merge's", not f["differences"]),
        ]
    return checks
