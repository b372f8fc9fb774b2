"""One demo batch as a batch step runs it, without Dagster or imagedb: how the user-code
image is checked the way production uses it (`make image-check`, deploy/image/check.py).

- `write_batch`: one batch of the demo plate's image sets as a LoadData CSV, its image
  paths as the place where the batch runs sees them (a pod sees the NAS at its mount path),
  and `batch.json` with what the pipeline check and the runner need.
- `run_batch` (`python -m cpp_dagster.demo.batch BATCH_DIR RESULTS_DIR`, inside the image):
  `cellprofiler --version`, the pipeline check against the batch's plan, CellProfiler
  through the project's own runner (`analysis.cellprofiler.run_batch`), the batch's tables
  converted (`features.batch_tables`, as a batch step does) and merged into Parquet feature
  tables in RESULTS_DIR; prints a JSON summary as its last line.
- `compare_tables`: the tables of two runs of that batch (the image's and a local one) equal.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cpp_dagster.analysis import cellprofiler, loaddata, pipeline_check, planning
from cpp_dagster.demo.register import DEMO_CHANNEL_MAP, DEMO_PIPELINE_FILE, demo_pipeline_meta
from cpp_dagster.demo.synthetic_plate import DYES
from cpp_dagster.features import batch_tables
from cpp_dagster.imagedb.rows import Image
from cpp_dagster.settings import load_settings

BATCH_FILE = "batch.json"
BARCODE = "IMAGE-CHECK"


def demo_pipeline() -> Path:
    """The bundled demo features pipeline (installed with the package: read-only in the image)."""
    with resources.as_file(
        resources.files("cpp_dagster.demo").joinpath("pipelines", Path(DEMO_PIPELINE_FILE).name)
    ) as p:
        return Path(p)


def write_batch(batch_dir: Path, records: Sequence[dict], images_dir: Path, seen_at: Path) -> dict:
    """The LoadData CSV of one batch holding every image set of `records` (synthetic_plate's
    records, files under `images_dir`), their paths rewritten to `seen_at` (where the images
    are mounted for the run); returns what `batch.json` holds."""
    images = [
        Image(well=r["well"], site=r["site"], channel=r["channel"], z=r["z"], timepoint=1,
              path=str(seen_at / Path(r["path"]).relative_to(images_dir)))
        for r in records
    ]  # fmt: skip
    meta = {**demo_pipeline_meta()["sub_analyses"][0], "batch_size": 0}  # 0: one batch
    options = planning.SubAnalysisOptions.from_meta(meta)
    plan = planning.plan(images, {i + 1: dye for i, dye in enumerate(DYES)}, options)
    (batch,) = plan.batches
    batch_dir.mkdir(parents=True, exist_ok=True)
    text = loaddata.loaddata_csv(batch, plan.dyes, plate_barcode=BARCODE, plate_acquisition_id=DEMO_CHANNEL_MAP)
    (batch_dir / "loaddata.csv").write_text(text)
    spec = {"dyes": list(plan.dyes), "image_sets": len(batch.image_sets), "job_timeout": options.job_timeout}
    (batch_dir / BATCH_FILE).write_text(json.dumps(spec))
    return spec


def run_batch(batch_dir: Path, results_dir: Path, cellprofiler_exe: str, cache_dir: Path) -> dict:
    """What a batch step does with the batch `write_batch` wrote, then the merge; the summary."""
    spec = json.loads((batch_dir / BATCH_FILE).read_text())
    version = subprocess.run([cellprofiler_exe, "--version"], capture_output=True, text=True, check=True)
    pipeline = demo_pipeline()
    needs = pipeline_check.inspect(pipeline, cellprofiler=cellprofiler_exe, cache_dir=cache_dir)
    pipeline_check.check(
        needs, pipeline_file=DEMO_PIPELINE_FILE, dyes=spec["dyes"], illumination_images=(), use_icf=False
    )
    outcome = cellprofiler.run_batch(
        cellprofiler=cellprofiler_exe,
        pipeline=pipeline,
        batch_dir=batch_dir,
        expected_image_sets=spec["image_sets"],
        timeout_s=spec["job_timeout"],
        echo=lambda line: None,
    )
    batch_tables.convert_batch(batch_dir)
    merged = batch_tables.merge_converted([batch_dir], results_dir)
    return {
        "cellprofiler_version": version.stdout.strip().splitlines()[-1],
        "pipeline_check": "passed",
        "image_sets": outcome.image_sets,
        "cellprofiler_seconds": round(outcome.seconds, 1),
        "tables": {name: table.rows for name, table in sorted(merged.tables.items())},
    }


class TablesDiffer(AssertionError):
    """The image's tables are not the local run's."""


def as_seen_in_pod(table: pa.Table, host_images: str, pod_images: str) -> pa.Table:
    """The local table with the images' host folder in every text value replaced by the pod's."""
    columns = []
    for column in table.columns:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            column = pc.replace_substring(column, host_images, pod_images)
        columns.append(column)
    return pa.table(columns, schema=table.schema)


def compare_tables(local_dir: Path, image_dir: Path, host_images: str, pod_images: str) -> dict[str, int]:
    """Each Parquet table of the local run's `local_dir` against the image's `image_dir`:
    equal but for ExecutionTime_* (timings) and the images' folder in text values. Rows per
    table; TablesDiffer names the first columns that differ."""
    local = {p.name: p for p in local_dir.rglob("*.parquet")}
    inside = {p.name: p for p in image_dir.rglob("*.parquet")}
    if not local or local.keys() != inside.keys():
        raise TablesDiffer(f"the image wrote tables {sorted(inside)}, the local run {sorted(local)}")
    rows = {}
    for name in sorted(local):
        a = as_seen_in_pod(pq.read_table(local[name]), host_images, pod_images)
        b = pq.read_table(inside[name])
        timings = [c for c in a.column_names if c.startswith("ExecutionTime_")]
        if not a.drop_columns(timings).equals(b.drop_columns([c for c in timings if c in b.column_names])):
            differ = [
                c for c in a.column_names if c not in timings and (c not in b.column_names or not a[c].equals(b[c]))
            ]
            raise TablesDiffer(f"{name}: the image's table differs from the local run's in {differ[:10]}")
        rows[name] = a.num_rows
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cpp_dagster.demo.batch", description=__doc__.split("\n\n")[0])
    p.add_argument("batch_dir", type=Path, help="a batch folder write_batch wrote (on the work area)")
    p.add_argument("results_dir", type=Path, help="where the merged Parquet feature tables go (on the NAS)")
    args = p.parse_args(argv)
    settings = load_settings()
    try:
        summary = run_batch(args.batch_dir, args.results_dir, settings.cellprofiler, settings.pipeline_check_cache)
    except (cellprofiler.CellProfilerError, pipeline_check.PipelineCheckError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
