"""What grows with the lab stays bounded: the UI's lab overview observation, and the
launch sensor's ticks while a first deployment adds thousands of partition keys.

    .venv/bin/python benchmarks/lab_growth.py            # overview at 3,000 / 5,000 / 10,000
                                                         # acquisitions, 3,000 new plate keys: ~2 min
    .venv/bin/python benchmarks/lab_growth.py --quick    # 1,000 / 5,000; 600 keys

An embedded PostgreSQL of its own in a temporary folder (removed at the end), filled per
size by `tests/support/lab_scale.py` (acquisitions x 3 steps, ~70 % finished, 10 % each
waiting, running, failed). For each size it prints the serialized `imagedb/lab_overview`
observation (what the event log stores and the asset page downloads, 100 of them) as it
was (the whole markdown table plus the counts) and as it is now (counts plus at most 50
lines that need attention), side by side with the ratio, and the time to build each from
the overview rows.

Partition keys: a lab of N registered plates (no analyses) meets a Dagster instance on
PostgreSQL that has none of their keys, as on a first deployment. The real
`pending_sub_analyses` sensor ticks until every key is there, each tick's add-requests
applied the way Dagster's sensor daemon applies them (each key checked, then the new ones
added); printed per run: ticks, the longest tick (evaluation plus adding its keys) and the
total, before (`CPP_SENSOR_MAX_NEW_KEYS` past N: every key in one tick, as the sensor did
until it was bounded) and after (the default). The last line is one JSON object of the
figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support"), str(ROOT / "benchmarks")]

import dagster as dg  # noqa: E402
from imagedb_scale_data import database, postgres  # noqa: E402
from lab_scale import fill_lab  # noqa: E402

from cpp_dagster.analysis.lab_overview import (  # noqa: E402
    attention_markdown,
    attention_summary,
    markdown_table,
    overview_lines,
)
from cpp_dagster.defs.analysis.lab_overview import lab_overview  # noqa: E402
from cpp_dagster.defs.analysis.sensors import Launching  # noqa: E402
from cpp_dagster.imagedb.store import ImageDB  # noqa: E402
from cpp_dagster.local.environment import sqlalchemy_url  # noqa: E402


def observation_before(lines) -> dg.AssetObservation:
    """What the sensor stored until the overview was bounded: the whole table."""
    counts = attention_summary(lines).counts
    metadata = {"overview": dg.MetadataValue.md(markdown_table(lines)), **counts}
    return dg.AssetObservation(asset_key=lab_overview.key, metadata=metadata)


def observation_now(lines) -> dg.AssetObservation:
    summary = attention_summary(lines)
    metadata = {
        "overview": dg.MetadataValue.md(attention_markdown(summary)),
        **summary.counts,
        "attention_not_shown": summary.left_out,
    }
    return dg.AssetObservation(asset_key=lab_overview.key, metadata=metadata)


def serialized_size(build, lines) -> tuple[int, float]:
    """Bytes of the observation `build(lines)` as the event log stores it, and the seconds
    to build and serialize it."""
    start = time.perf_counter()
    size = len(dg.serialize_value(build(lines)))
    return size, time.perf_counter() - start


def overview_sizes(server, sizes: list[int]) -> list[dict]:
    print("\nimagedb/lab_overview: one observation, serialized (what the event log stores)")
    print(
        f"{'acquisitions':>12} {'lines':>7} {'before KB':>10} {'after KB':>9} {'ratio':>7} {'before s':>9} {'after s':>8}"
    )
    figures = []
    for n in sizes:
        url = database(server, f"overview_{n}")
        db = ImageDB(url)
        try:
            db.apply_schema()
            fill_lab(url, n)
            lines = overview_lines(db.lab_overview())
        finally:
            db.close()
        before, before_s = serialized_size(observation_before, lines)
        after, after_s = serialized_size(observation_now, lines)
        figures.append(
            {
                "acquisitions": n,
                "lines": len(lines),
                "before_bytes": before,
                "after_bytes": after,
                "before_s": round(before_s, 3),
                "after_s": round(after_s, 3),
            }
        )
        print(
            f"{n:>12,} {len(lines):>7,} {before / 1024:>10,.0f} {after / 1024:>9,.1f} "
            f"{before / after:>6.0f}x {before_s:>9.3f} {after_s:>8.3f}"
        )
    return figures


def daemon_applies(instance: dg.DagsterInstance, requests) -> None:
    """A tick's add-requests as Dagster's sensor daemon applies them
    (dagster/_daemon/sensor.py, `_handle_dynamic_partitions_requests`): every key checked
    with `has_dynamic_partition`, then the new ones added."""
    for request in requests:
        name = request.partitions_def_name
        new = [key for key in request.partition_keys if not instance.has_dynamic_partition(name, key)]
        if new:
            instance.add_dynamic_partitions(name, new)


def key_ticks(server, plates: int, max_new_keys: int) -> dict:
    """Ticks of the real launch sensor until Dagster has all `plates` keys."""
    label = f"{plates}_{max_new_keys}"
    url = database(server, f"keys_{label}")
    db = ImageDB(url)
    db.apply_schema()
    db.close()
    fill_lab(url, plates, analyses=False)
    os.environ.update({"CPP_IMAGEDB_URL": url, "CPP_SENSOR_MAX_NEW_KEYS": str(max_new_keys)})
    from cpp_dagster.definitions import build_defs

    defs = build_defs()
    sensor = defs.get_repository_def().get_sensor_def("pending_sub_analyses")
    storage = {"postgres": {"postgres_url": sqlalchemy_url(database(server, f"dagster_{label}"))}}
    ticks = []
    with (
        tempfile.TemporaryDirectory() as home,
        dg.instance_for_test(overrides={"storage": storage}, temp_dir=home) as instance,
    ):
        for _ in range(plates // max_new_keys + 3):
            start = time.perf_counter()
            with dg.build_sensor_context(
                instance_ref=instance.get_ref(), definitions=defs, resources=defs.resources
            ) as context:
                data = sensor.evaluate_tick(context)
            daemon_applies(instance, data.dynamic_partitions_requests or [])
            ticks.append(time.perf_counter() - start)
            if not data.dynamic_partitions_requests:
                break
        assert len(instance.get_dynamic_partitions("plate")) == plates, "not every plate key arrived"
    return {
        "max_new_keys": max_new_keys,
        "ticks": len(ticks),
        "longest_tick_s": round(max(ticks), 2),
        "total_s": round(sum(ticks), 2),
    }


def partition_growth(server, plates: int) -> dict:
    interval = Launching().interval_s
    print(f"\nlaunch sensor, {plates:,} new plate keys (a first deployment); the tick interval is {interval} s")
    print(f"{'':>28} {'keys/tick':>9} {'ticks':>6} {'longest s':>10} {'total s':>8}")
    before = key_ticks(server, plates, plates + 1)
    after = key_ticks(server, plates, Launching().max_new_keys)
    for name, f in (("before (every key at once)", before), ("after (bounded)", after)):
        print(f"{name:>28} {f['max_new_keys']:>9,} {f['ticks']:>6} {f['longest_tick_s']:>10.2f} {f['total_s']:>8.2f}")
    print(f"longest tick: {before['longest_tick_s'] / after['longest_tick_s']:.1f}x shorter")
    return {"plates": plates, "before": before, "after": after}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, well under a minute")
    args = parser.parse_args()
    sizes = [1000, 5000] if args.quick else [3000, 5000, 10000]
    os.environ.setdefault("CPP_NAS_ROOT", tempfile.mkdtemp(prefix="cpp-bench-nas-"))
    warnings.simplefilter("ignore")  # Dagster's preview and deprecation warnings
    with postgres(None) as server:
        overview = overview_sizes(server, sizes)
        keys = partition_growth(server, 600 if args.quick else 3000)
    print(json.dumps({"overview": overview, "partition_keys": keys}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
