"""What grows with the lab stays bounded: the UI's lab overview observation.

    .venv/bin/python benchmarks/lab_growth.py            # 3,000 / 5,000 / 10,000 acquisitions, ~1 min
    .venv/bin/python benchmarks/lab_growth.py --quick    # 1,000 / 5,000

An embedded PostgreSQL of its own in a temporary folder (removed at the end), filled per
size by `tests/support/lab_scale.py` (acquisitions x 3 steps, ~70 % finished, 10 % each
waiting, running, failed). For each size it prints the serialized `imagedb/lab_overview`
observation (what the event log stores and the asset page downloads, 100 of them) as it
was (the whole markdown table plus the counts) and as it is now (counts plus at most 50
lines that need attention), side by side with the ratio, and the time to build each from
the overview rows. The last line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
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
from cpp_dagster.imagedb.store import ImageDB  # noqa: E402


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, well under a minute")
    args = parser.parse_args()
    sizes = [1000, 5000] if args.quick else [3000, 5000, 10000]
    with postgres(None) as server:
        overview = overview_sizes(server, sizes)
    print(json.dumps({"overview": overview}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
