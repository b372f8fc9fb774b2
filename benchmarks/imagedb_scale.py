"""imagedb at production scale: one sensor tick and the planning of one big analysis.

    .venv/bin/python benchmarks/imagedb_scale.py           # 5,000 acquisitions, 20,000 analyses,
                                                           # 10 M images: a few minutes (make bench-imagedb)
    .venv/bin/python benchmarks/imagedb_scale.py --quick   # 1/20 of everything, well under a minute

An embedded PostgreSQL of its own in a temporary folder (removed at the end; `--pgdata DIR`
keeps it in DIR instead and, when DIR already holds a loaded benchmark of the same size,
reuses it without loading again). The project's schema via `ImageDB.apply_schema()`, then:

  plate_acquisition  5,000 plates, the newest 4 % still being imaged (finished NULL)
  channel_map        one map of 5 channels
  image_analyses     20,000 analyses of 2 sub-analyses each (the 2nd depends on the 1st):
                     mostly finished, some failed, running, submitted and ready, submitted
                     and waiting for the 1st, and submitted on plates still being imaged;
                     priorities NULL / 1 / 3 on analyses and some on sub-analyses
  images             10 M rows over the plates (server-side generate_series, 2 connections),
                     among them one 384-well x 9-site x 5-channel plate: 17,280 images

then VACUUM ANALYZE. Measured, on warm caches as the daemon and a run worker would see them:

  sensor tick  the real `pending_sub_analyses` of `cpp_dagster.definitions` evaluated with
               `dagster.build_sensor_context` on a `dagster.instance_for_test()` instance
               (context building included): the first evaluation and the best of 3
  planning     what `analysis.prepare` does before it writes files, for the 17,280-image
               plate: `sub_analysis` + `plate_acquisition` + `images` + `channel_map` +
               `SubAnalysisOptions.from_meta` + `planning.plan` + `loaddata_csv` of every
               batch (batch_size 96): best of 3

Goals: tick < 2 s, planning < 1 s. Printed: row counts, timings against the goals, the
ready query alone and its EXPLAIN ANALYZE; the last line is one JSON object
{"acquisitions", "analyses", "images", "sensor_tick_s", "planning_s"}.

This module holds the measurements, the report and the command line; the server and the
data it is filled with are in imagedb_scale_data.py.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from imagedb_scale_data import (  # noqa: E402
    FULL,
    PLAN_IMAGES,
    PLAN_SITES,
    PLAN_WELLS,
    QUICK_DIVISOR,
    connect,
    counts,
    database,
    load,
    log,
    postgres,
)

from cpp_dagster.imagedb.store import ImageDB  # noqa: E402

GOALS = {"sensor_tick_s": 2.0, "planning_s": 1.0}
REPEATS = 3


# --- measurements -----------------------------------------------------------------


class RecordingImageDB(ImageDB):
    """ImageDB that keeps the last statement sent (with its parameters bound)."""

    queries: list[bytes] = []

    @contextmanager
    def _cursor(self):
        with super()._cursor() as cur:
            yield cur
            self.queries.append(cur.query)


def ready_query(url: str) -> tuple[list, float, list[str], str]:
    """All ready rows paged as the sensor pages them (500 a page), the seconds it took, the
    EXPLAIN ANALYZE of the first page and its SQL."""
    from cpp_dagster.defs.analysis.sensors import PAGE_SIZE

    db = ImageDB(url)
    best = float("inf")
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        rows, after = [], None
        while True:
            page = db.ready_sub_analyses(limit=PAGE_SIZE, after=after)
            rows += page
            if len(page) < PAGE_SIZE:
                break
            after = (page[-1].priority, page[-1].sub_id)
        best = min(best, time.perf_counter() - t0)
    rec = RecordingImageDB(url)
    rec.queries.clear()
    rec.ready_sub_analyses(limit=PAGE_SIZE)
    query = rec.queries[-1].decode()
    with connect(url) as cur:
        cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + query)
        plan = [r[0] for r in cur.fetchall()]
    return rows, best, plan, query


def sensor_ticks(url: str) -> tuple[float, float, object]:
    """(first evaluation, best of the next REPEATS, the last result) of the real sensor."""
    os.environ["CPP_IMAGEDB_URL"] = url  # before cpp_dagster.definitions is imported
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import dagster as dg

        from cpp_dagster.definitions import build_defs

    defs = build_defs()
    sensor = defs.get_repository_def().get_sensor_def("pending_sub_analyses")
    times = []
    data = None
    with warnings.catch_warnings(), dg.instance_for_test() as instance:
        warnings.simplefilter("ignore")
        for _ in range(1 + REPEATS):
            t0 = time.perf_counter()
            context = dg.build_sensor_context(
                instance_ref=instance.get_ref(), definitions=defs, resources=defs.resources
            )
            data = sensor.evaluate_tick(context)
            times.append(time.perf_counter() - t0)
    return times[0], min(times[1:]), data


def planning_runs(url: str, sub_id: int) -> tuple[float, dict[str, float], dict[str, int]]:
    """Best of REPEATS of prepare()'s reads and planning; the parts of the best run."""
    from cpp_dagster.analysis import loaddata, planning

    db = ImageDB(url)
    best, parts_best, shape = float("inf"), {}, {}
    for _ in range(REPEATS):
        t = [time.perf_counter()]
        sub = db.sub_analysis(sub_id)
        acq = db.plate_acquisition(sub.plate_acquisition_id)
        options = planning.SubAnalysisOptions.from_meta(sub.meta)
        t.append(time.perf_counter())
        images = db.images(acq.id)
        t.append(time.perf_counter())
        channel_map = db.channel_map(acq.channel_map_id)
        p = planning.plan(images, channel_map, options)
        t.append(time.perf_counter())
        # as prepare() does: with use_icf, the ICF columns point at the analysis's results folder
        icf_folder = f"/share/results/{acq.plate_barcode}/{acq.id}/{sub.analysis_id}" if options.use_icf else None
        texts = [
            loaddata.loaddata_csv(
                b, p.dyes, plate_barcode=acq.plate_barcode, plate_acquisition_id=acq.id, icf_folder=icf_folder
            )
            for b in p.batches
        ]
        t.append(time.perf_counter())
        total = t[-1] - t[0]
        if total < best:
            best = total
            parts_best = {
                "sub_analysis+plate+options": t[1] - t[0],
                "images query": t[2] - t[1],
                "channel_map+plan": t[3] - t[2],
                "loaddata_csv": t[4] - t[3],
            }
            shape = {
                "images": len(images),
                "image_sets": p.image_set_count,
                "batches": len(p.batches),
                "batch_size": options.batch_size,
                "csv_bytes": sum(len(x) for x in texts),
            }
    return best, parts_best, shape


# --- main -------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help=f"1/{QUICK_DIVISOR} of every table (the planned plate stays 17,280 images)"
    )
    ap.add_argument("--pgdata", type=Path, help="keep the server's data here (reused when already loaded at this size)")
    args = ap.parse_args()
    # a SIGTERM still stops the server and removes its folder
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    sizes = {k: v // QUICK_DIVISOR for k, v in FULL.items()} if args.quick else dict(FULL)
    log(
        f"imagedb scale benchmark ({'quick' if args.quick else 'full'}): "
        + ", ".join(f"{v:,} {k}" for k, v in sizes.items())
    )

    with postgres(args.pgdata.resolve() if args.pgdata else None) as server:
        url = database(server, "imagedb_bench")
        db = ImageDB(url)
        db.apply_schema()
        have = counts(url)
        load_times: dict[str, float] = {}
        if have["acquisitions"] == 0:
            t0 = time.perf_counter()
            load_times = load(url, sizes)
            load_times["total_s"] = time.perf_counter() - t0
            have = counts(url)
            log("loaded in " + ", ".join(f"{k} {v:.1f}" for k, v in load_times.items()))
        elif (have["acquisitions"], have["analyses"], have["images"]) != tuple(sizes.values()):
            sys.exit(f"{args.pgdata} holds another size: {have}; use another --pgdata")
        else:
            log(f"reusing the loaded database in {args.pgdata}")
            with connect(url) as cur:
                cur.execute("ANALYZE")  # a schema change may have added indexes

        rows, query_s, explain, _ = ready_query(url)
        first_tick, tick, data = sensor_ticks(url)
        requests = len(data.run_requests or [])
        with connect(url) as cur:
            cur.execute(
                "SELECT sub_id FROM image_sub_analyses WHERE analysis_id = 1 AND meta->>'sub_type' = 'features'"
            )
            plan_sub = cur.fetchone()[0]
        plan_s, parts, shape = planning_runs(url, plan_sub)

    assert shape["images"] == PLAN_IMAGES and shape["image_sets"] == PLAN_WELLS * PLAN_SITES, shape
    from cpp_dagster.settings import load_settings

    MAX_REQUESTS_PER_TICK = load_settings().launch.sensor_max_requests

    def verdict(value: float, goal: float) -> str:
        return "ok" if value < goal else "MISSED"

    log("")
    log("rows")
    for k in ("acquisitions", "analyses", "sub_analyses", "images", "planned_plate_images"):
        log(f"  {k:<22}{have[k]:>12,}")
    log(
        f"  (plates still being imaged {have['acquisitions_unfinished']:,}; sub-analyses finished "
        f"{have['subs_finished']:,}, failed {have['subs_failed']:,}, running {have['subs_running']:,}, "
        f"submitted {have['subs_submitted']:,})"
    )
    log(
        f"  {'ready sub-analyses':<22}{len(rows):>12,}   (run requests per tick: {requests:,}, "
        f"at most {MAX_REQUESTS_PER_TICK:,})"
    )
    if load_times:
        log(f"  {'load':<22}{load_times['total_s']:>11.1f}s")
    log("")
    log(f"{'measurement':<44}{'seconds':>9}{'goal':>7}")
    log(
        f"  {'sensor tick, best of ' + str(REPEATS):<42}{tick:>9.3f}{GOALS['sensor_tick_s']:>7.1f}  "
        f"{verdict(tick, GOALS['sensor_tick_s'])}"
    )
    log(f"  {'sensor tick, first evaluation':<42}{first_tick:>9.3f}")
    log(f"  {'  the ready query alone, all pages':<42}{query_s:>9.3f}")
    log(
        f"  {'planning 17,280 images, best of ' + str(REPEATS):<42}{plan_s:>9.3f}{GOALS['planning_s']:>7.1f}  "
        f"{verdict(plan_s, GOALS['planning_s'])}"
    )
    for k, v in parts.items():
        log(f"    {k:<40}{v:>9.3f}")
    log(
        f"  ({shape['image_sets']:,} image sets in {shape['batches']} batches of {shape['batch_size']}, "
        f"{shape['csv_bytes'] / 1e6:.1f} MB of LoadData CSV)"
    )
    log("")
    log("EXPLAIN ANALYZE of the ready query's first page:")
    for line in explain[:40]:
        log("  " + line)
    if len(explain) > 40:
        log(f"  ... ({len(explain) - 40} more lines)")
    log("")
    print(
        json.dumps(
            {
                "acquisitions": have["acquisitions"],
                "analyses": have["analyses"],
                "images": have["images"],
                "sensor_tick_s": round(tick, 4),
                "planning_s": round(plan_s, 4),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
