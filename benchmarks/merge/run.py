"""Merge benchmark: the project's CellProfiler-CSV -> Parquet merge against the old method
and the plain streaming routes of pyarrow, polars and duckdb, on the same synthetic plate.

    .venv/bin/python benchmarks/merge/run.py --preset quick   # ~45 MB, well under a minute (make bench-merge)
    .venv/bin/python benchmarks/merge/run.py --preset plate   # ~3 GB plate + the doubled plate, several minutes
    .venv/bin/python benchmarks/merge/run.py --preset plate,jump --methods merge,batch-converted --no-doubled
        # the route batch-converted against today's merge, plate and JUMP width side by side

Each method runs in its own subprocess, so its peak RSS is its own: measured with
`/usr/bin/time -v` when present, else by polling the child's RSS with psutil (and the
kernel's exact figure from wait4 where it has one). Wall time is the child's whole life,
interpreter start and imports included, the same for every method.

Methods (every table but Experiment; each writes DEST/<table>.parquet):
  merge    the project's `cpp_dagster.features.merge.merge_batches` over the batch folders
           (batch keys, drift rule, float32, atomic writes: everything it does in production)
  baseline the old method, re-implemented here: per table, concatenate the batches' CSV
           text (repeated headers skipped) into one file, `pandas.read_csv` the whole file,
           float64 -> float32, `DataFrame.to_parquet`
  pyarrow  plain streaming: `pyarrow.csv.open_csv` (16 MB blocks, the first file's types)
           -> one `ParquetWriter` per table over all batches
  polars   plain streaming: `scan_csv` over the batch files -> `sink_parquet`
  duckdb   plain streaming: `read_csv` with delim/quote/escape given (no dialect sniffing)
           -> `COPY ... TO ... (FORMAT parquet)`
  batch-converted  what the analysis does since batches convert their own tables: every
           batch's conversion (`batch_tables.convert_batch`, 2 batches at a time, as batch
           pods), then the final merge of the converted tables (`merge_converted`); the
           two are measured apart and set side by side with `merge` (batch_converted.py),
           and its tables must be identical to `merge`'s (schemas and values)
The plain routes add no batch keys and keep float64. Outputs are verified equal in rows
(per table) and columns (the project's = the plain routes' + its 2 key columns), and in
the sums of two integer columns.

The doubled plate (`--scale 2` of the generator: twice the batches of the same size) is
then merged by the project's merge alone, to see that its memory does not grow with the
plate. The last line printed is one JSON object with the headline figures (one per
preset, keyed by preset, when several are given).

Wall times are only as steady as the machine: on a shared machine, use `--repeat 2` (or
more) to run the methods round-robin and keep each one's fastest run; the load average
is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parents[1]
sys.path.insert(0, str(HERE))
import batch_converted  # noqa: E402
import generate  # noqa: E402
from measure import best, measurer, run_measured  # noqa: E402

METHODS = ["merge", "baseline", "pyarrow", "polars", "duckdb", "batch-converted"]
PLAIN = ["pyarrow", "polars", "duckdb"]
EXPERIMENT = "Experiment"
MB = 1e6

GOALS = {"speedup_vs_baseline": 4.0, "vs_fastest_plain": 1.25, "peak_rss_mb": 1000.0, "rss_growth": 1.20}


# --- the methods (run inside the child) -------------------------------------------


def batch_dirs(src: Path) -> list[Path]:
    return sorted(p for p in Path(src).iterdir() if p.is_dir() and not p.name.startswith("."))


def tables_by_name(src: Path) -> dict[str, list[Path]]:
    """Object table name -> its CSV in every batch, in batch order (Experiment left out)."""
    from cpp_dagster.features.merge import table_files

    out: dict[str, list[Path]] = {}
    for d in batch_dirs(src):
        for name, path in table_files(d).items():
            if name != EXPERIMENT:
                out.setdefault(name, []).append(path)
    return out


def run_merge(src: Path, dest: Path) -> None:
    from cpp_dagster.features.merge import merge_batches

    merge_batches(batch_dirs(src), dest)


def run_baseline(src: Path, dest: Path) -> None:
    import pandas as pd

    dest.mkdir(parents=True, exist_ok=True)
    for name, files in tables_by_name(src).items():
        concat = dest / f".{name}.concat.csv"
        with open(concat, "wb") as out:
            for i, f in enumerate(files):
                with open(f, "rb") as inp:
                    if i:
                        inp.readline()  # the repeated header
                    shutil.copyfileobj(inp, out, 16 << 20)
        df = pd.read_csv(concat)
        floats = df.select_dtypes("float64").columns
        df[floats] = df[floats].astype("float32")
        df.to_parquet(dest / f"{name}.parquet", index=False)
        del df
        concat.unlink()


def run_pyarrow(src: Path, dest: Path) -> None:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    dest.mkdir(parents=True, exist_ok=True)
    read = pacsv.ReadOptions(block_size=16 << 20)
    for name, files in tables_by_name(src).items():
        writer = None
        convert = pacsv.ConvertOptions(null_values=["", "nan"], strings_can_be_null=True)
        for f in files:
            reader = pacsv.open_csv(f, read_options=read, convert_options=convert)
            if writer is None:
                writer = pq.ParquetWriter(dest / f"{name}.parquet", reader.schema)
                # the rest of the batches are read with the first one's types
                convert = pacsv.ConvertOptions(
                    null_values=["", "nan"], strings_can_be_null=True, column_types=reader.schema
                )
            for batch in reader:
                writer.write_batch(batch)
        writer.close()


def run_polars(src: Path, dest: Path) -> None:
    import polars as pl

    dest.mkdir(parents=True, exist_ok=True)
    for name, files in tables_by_name(src).items():
        pl.scan_csv([str(f) for f in files], null_values=["nan"]).sink_parquet(dest / f"{name}.parquet")


def run_duckdb(src: Path, dest: Path) -> None:
    import duckdb

    dest.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    for name, files in tables_by_name(src).items():
        # the dialect given explicitly: sniffing ~1,000-column files costs ~7x
        relation = con.read_csv(
            [str(f) for f in files], header=True, sep=",", quotechar='"', escapechar='"', na_values="nan"
        )
        relation.write_parquet(str(dest / f"{name}.parquet"))
    con.close()


RUNNERS = {
    "merge": run_merge,
    "baseline": run_baseline,
    "pyarrow": run_pyarrow,
    "polars": run_polars,
    "duckdb": run_duckdb,
    # the two steps of the route "batch-converted"
    "convert": batch_converted.run_convert,
    "concat": batch_converted.run_concat,
}


# --- measuring (in the parent) ----------------------------------------------------


def remove_output(dest: Path) -> None:
    """An earlier run's output: a folder, or the project's merge's link to its version
    folder (`results_folder`), with its versions."""
    from cpp_dagster.features import results_folder

    if dest.is_symlink():
        dest.unlink()
    elif dest.exists():
        shutil.rmtree(dest)
    shutil.rmtree(results_folder.versions_dir(dest), ignore_errors=True)


def run_child(method: str, src: Path, dest: Path, how: str) -> dict:
    """Run one method in a fresh interpreter; its wall and CPU seconds and peak RSS (MB)."""
    remove_output(dest)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", method, str(src), str(dest)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT), os.environ.get("PYTHONPATH")]))}
    return run_measured(method, cmd, env, how)


def warm_page_cache(src: Path) -> None:
    """Read every CSV once, so no method pays for the first read from disk."""
    buf = bytearray(16 << 20)
    for f in sorted(Path(src).rglob("*.csv")):
        with open(f, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass


def summarize(dest: Path) -> dict[str, dict]:
    """Table -> rows, column names and the sums of ImageNumber and ObjectNumber."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    out = {}
    for f in sorted(dest.glob("*.parquet")):
        meta = pq.read_metadata(f)
        names = pq.read_schema(f).names
        sums = {}
        for c in ("ImageNumber", "ObjectNumber"):
            if c in names:
                sums[c] = int(pc.sum(pq.read_table(f, columns=[c]).column(0)).as_py())
        out[f.stem] = {"rows": meta.num_rows, "columns": names, "sums": sums}
    return out


def verify(summaries: dict[str, dict]) -> list[str]:
    """Problems (none when the outputs agree): same tables, rows and key sums everywhere;
    the project's columns are the plain ones plus its 2 key columns."""
    from cpp_dagster.features.columns import BATCH_COLUMN, IMAGE_KEY_COLUMN

    problems = []
    keyed = ("merge", "batch-converted")  # the project's routes: the plain columns + its 2 key columns
    ref_name = next((m for m in ["pyarrow", *summaries] if m in summaries and m not in keyed), "merge")
    ref = summaries[ref_name]
    for method, s in summaries.items():
        if set(s) != set(ref):
            problems.append(f"{method}: tables {sorted(s)} != {ref_name}'s {sorted(ref)}")
            continue
        for table, t in s.items():
            r = ref[table]
            if t["rows"] != r["rows"]:
                problems.append(f"{method}/{table}: {t['rows']} rows, {ref_name} {r['rows']}")
            expected = r["columns"]
            if method in keyed and ref_name not in keyed:
                expected = [BATCH_COLUMN, IMAGE_KEY_COLUMN, *expected]
            if t["columns"] != expected:
                problems.append(
                    f"{method}/{table}: columns differ from {ref_name}'s ({len(t['columns'])} vs {len(expected)})"
                )
            if t["sums"] != r["sums"]:
                problems.append(f"{method}/{table}: key sums {t['sums']} != {r['sums']}")
    return problems


def csv_bytes(src: Path) -> int:
    return sum(f.stat().st_size for f in Path(src).rglob("*.csv"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--preset",
        default="quick",
        help=f"one of {sorted(generate.PRESETS)}, or several, comma-separated (e.g. plate,jump)",
    )
    ap.add_argument("--out", type=Path, default=generate.DEFAULT_OUT, help="data and outputs (default benchmarks/out)")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {METHODS}")
    ap.add_argument("--no-doubled", action="store_true", help="skip the doubled plate")
    ap.add_argument(
        "--measure",
        choices=["auto", "time", "psutil"],
        default="auto",
        help="peak RSS by /usr/bin/time -v or by psutil polling (auto: time if present)",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run every method this many times, round-robin, and report its fastest run "
        "(and its largest peak RSS): steadier figures on a shared machine",
    )
    ap.add_argument("--keep", action="store_true", help="keep the Parquet outputs")
    ap.add_argument("--child", nargs=3, metavar=("METHOD", "SRC", "DEST"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        method, src, dest = args.child
        cpu, t0 = time.process_time(), time.perf_counter()
        workers_cpu = RUNNERS[method](Path(src), Path(dest)) or 0.0
        # the work alone, without interpreter start and imports (a step's process has them already)
        print(json.dumps({"work_s": time.perf_counter() - t0, "work_cpu_s": time.process_time() - cpu + workers_cpu}))
        return 0

    presets = [p for p in args.preset.split(",") if p]
    unknown = [p for p in presets if p not in generate.PRESETS]
    if unknown:
        ap.error(f"unknown preset {unknown}; choose from {sorted(generate.PRESETS)}")
    methods = [m for m in args.methods.split(",") if m]
    how = measurer(args.measure)
    print(
        f"peak RSS measured with {'/usr/bin/time -v' if how == 'time' else 'psutil polling (+ wait4)'}; "
        f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    headlines, figures = {}, {}
    for preset in presets:
        headlines[preset], route = run_preset(preset, args, methods, how)
        if route is not None:
            figures[preset] = route
    ok = all(h["outputs_equal"] for h in headlines.values())
    if figures:
        for text, met in batch_converted.report(figures):
            print(f"  [{'met' if met else 'MISSED'}] {text}")
        ok = ok and not any(f["differences"] for f in figures.values())
    print(json.dumps(headlines[presets[0]] if len(presets) == 1 else headlines))
    return 0 if ok else 1


def run_preset(preset: str, args, methods: list[str], how: str) -> tuple[dict, dict | None]:
    """One preset's runs and report: its headline figures, and those of the route
    batch-converted (None when it did not run)."""
    src = generate.generate(preset, 1, args.out)
    size = csv_bytes(src)
    n_batches = len(batch_dirs(src))
    print(f"{preset}: {size / MB:,.0f} MB of CSV in {n_batches} batches ({src})", flush=True)
    warm_page_cache(src)
    results: dict[str, dict] = {}
    converts: dict | None = None
    summaries: dict[str, dict] = {}
    dest_root, work = src.parent / "dest", src.parent / "work"
    for round_ in range(args.repeat):
        for m in methods:
            if m == "batch-converted":
                print("  running batch-converted: conversion ...", end=" ", flush=True)
                c = run_child("convert", src, work, how)
                converts = best(converts, c)
                os.sync()  # the conversions' writes reach the disk long before the merge, in a real run
                print(
                    f"{c['wall_s']:.1f} s, {c['cpu_s']:.1f} s CPU, {c['peak_rss_mb']:,.0f} MB; final merge ...",
                    end=" ",
                    flush=True,
                )
                r = run_child("concat", work, dest_root / m, how)
            else:
                print(f"  running {m} ...", end=" ", flush=True)
                r = run_child(m, src, dest_root / m, how)
            print(f"{r['wall_s']:.1f} s, {r['cpu_s']:.1f} s CPU, {r['peak_rss_mb']:,.0f} MB", flush=True)
            results[m] = best(results.get(m), r)
            if round_ == 0:
                summaries[m] = summarize(dest_root / m)
    problems = verify(summaries)
    differences = None
    if converts is not None and "merge" in results:
        differences = batch_converted.same_tables(dest_root / "merge", dest_root / "batch-converted")
        problems += differences
    if not args.keep:
        shutil.rmtree(dest_root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)

    doubled = None
    if not args.no_doubled and "merge" in methods:
        src2 = generate.generate(preset, 2, args.out)
        size2 = csv_bytes(src2)
        print(f"{preset} x2: {size2 / MB:,.0f} MB of CSV in {len(batch_dirs(src2))} batches", flush=True)
        warm_page_cache(src2)
        for _ in range(args.repeat):
            print("  running merge ...", end=" ", flush=True)
            r = run_child("merge", src2, src2.parent / "dest" / "merge", how)
            print(f"{r['wall_s']:.1f} s, {r['peak_rss_mb']:,.0f} MB", flush=True)
            doubled = best(doubled, r)
        doubled["csv_mb"] = size2 / MB
        if not args.keep:
            shutil.rmtree(src2.parent / "dest", ignore_errors=True)

    # --- report
    base = results.get("baseline", {}).get("wall_s")
    plain = {m: results[m]["wall_s"] for m in PLAIN if m in results}
    fastest = min(plain.values()) if plain else None
    print()
    print(
        f"{preset}: {size / MB:,.0f} MB CSV, {n_batches} batches"
        + (f"; fastest of {args.repeat} runs, largest peak RSS" if args.repeat > 1 else "")
    )
    print(f"{'method':<16} {'wall s':>8} {'peak RSS MB':>12} {'x faster than baseline':>23} {'vs fastest plain':>17}")
    for m, r in results.items():
        speed = f"{base / r['wall_s']:.2f}x" if base else "-"
        rel = f"{r['wall_s'] / fastest:.2f}x" if fastest else "-"
        label = "batch-converted*" if m == "batch-converted" else m
        print(f"{label:<16} {r['wall_s']:>8.1f} {r['peak_rss_mb']:>12,.0f} {speed:>23} {rel:>17}")
    if converts is not None:
        print("  * its final merge only; the conversion ran before, in the batch steps")
    if doubled:
        growth = doubled["peak_rss_mb"] / results["merge"]["peak_rss_mb"]
        print(
            f"doubled plate ({doubled['csv_mb']:,.0f} MB CSV): merge {doubled['wall_s']:.1f} s, "
            f"peak RSS {doubled['peak_rss_mb']:,.0f} MB ({growth:.2f}x the plate's)"
        )
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (on {os.cpu_count()} CPUs)")
    print(f"outputs equal: {not problems}" + "".join(f"\n  {p}" for p in problems))

    if "merge" in results:
        merge = results["merge"]
        checks = []
        if base:
            checks.append(
                (
                    f">= {GOALS['speedup_vs_baseline']}x faster than the old method",
                    base / merge["wall_s"] >= GOALS["speedup_vs_baseline"],
                )
            )
        if fastest:
            checks.append(
                (
                    f"within {GOALS['vs_fastest_plain']}x of the fastest plain route",
                    merge["wall_s"] / fastest <= GOALS["vs_fastest_plain"],
                )
            )
        checks.append(
            (
                f"peak RSS <= {GOALS['peak_rss_mb']:.0f} MB",
                max(merge["peak_rss_mb"], doubled["peak_rss_mb"] if doubled else 0) <= GOALS["peak_rss_mb"],
            )
        )
        if doubled:
            checks.append(
                (
                    f"peak RSS flat (within {GOALS['rss_growth'] - 1:.0%}) on the doubled plate",
                    doubled["peak_rss_mb"] <= GOALS["rss_growth"] * merge["peak_rss_mb"],
                )
            )
        checks.append(("outputs equal", not problems))
        for text, ok in checks:
            print(f"  [{'met' if ok else 'MISSED'}] {text}")

    def r1(x):
        return None if x is None else round(x, 1)

    headline = {
        "csv_mb": round(size / MB),
        "merge_s": r1(results.get("merge", {}).get("wall_s")),
        "baseline_s": r1(base),
        "fastest_plain_s": r1(fastest),
        "peak_rss_mb": r1(results.get("merge", {}).get("peak_rss_mb")),
        "peak_rss_mb_doubled": r1(doubled["peak_rss_mb"]) if doubled else None,
        "outputs_equal": not problems,
    }
    route = None
    if converts is not None and "merge" in results:
        route = {
            "csv_mb": size / MB,
            "merge": results["merge"],
            "convert": converts,
            "concat": results["batch-converted"],
            "differences": differences,
        }
        headline.update(
            batch_converted_final_s=r1(route["concat"]["wall_s"]),
            batch_converted_cpu_s=r1(converts["cpu_s"] + route["concat"]["cpu_s"]),
            merge_cpu_s=r1(results["merge"]["cpu_s"]),
        )
    return headline, route


if __name__ == "__main__":
    sys.exit(main())
