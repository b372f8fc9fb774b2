"""The demo sub-analysis end to end (sensor, Dagster run, real CellProfiler): its batch
steps convert their own tables, the merge concatenates them, and the feature
tables are identical to the CSV route's over the same batch outputs. A re-run reuses
the batches' converted tables along with their CSVs."""

from __future__ import annotations

import dagster as dg
import pyarrow.parquet as pq
from dagster_helpers import launch, tick

from cpp_dagster.analysis import lifecycle
from cpp_dagster.analysis.sub_analysis import resolve
from cpp_dagster.demo.register import DEMO_PIPELINE, register_plate
from cpp_dagster.features.batch_tables import COMPLETE, OUTPUT, TABLES, converted
from cpp_dagster.features.merge import merge_batches

TABLE_NAMES = ("Image", "Nuclei", "Cells", "Cytoplasm")


def test_demo_tables_are_identical_by_batch_conversion_and_by_the_csv_route(lab, dagster_instance, tmp_path):
    acq = register_plate(lab.db, lab.settings, barcode="ROUTES", wells=["B02", "C03"], sites=[1, 2], seed=11)
    sub_id = lab.db.submit_analysis(acq, DEMO_PIPELINE).sub_ids[0]
    (request,) = tick(dagster_instance).run_requests
    assert launch(dagster_instance, request).status == dg.DagsterRunStatus.SUCCESS
    results = lab.nas / lab.db.sub_analysis(sub_id).result["job_folder"]

    batches = sorted((lab.settings.work_root / f"sub_{sub_id}" / "g0").glob("batch_*"))
    assert [b.name for b in batches] == ["batch_0000", "batch_0001"]
    for b in batches:  # converted by the batch step, before it marked the batch done
        assert set(converted(b)) == set(TABLE_NAMES)
        assert (b / TABLES / COMPLETE).stat().st_mtime <= (b / "done.json").stat().st_mtime

    csv_route = merge_batches([b / OUTPUT for b in batches], tmp_path / "csv-route")
    for name in TABLE_NAMES:
        merged, expected = pq.read_table(results / f"{name}.parquet"), pq.read_table(csv_route.tables[name].path)
        assert merged.num_rows > 0
        assert merged.schema.equals(expected.schema), name
        assert merged.equals(expected), name

    # A re-run of the finished sub-analysis plans generation 1: both batch steps reuse
    # generation 0's outputs, converted tables included (linked, not converted again).
    lab.db.rerun_sub_analysis(sub_id)
    prepared = lifecycle.prepare(lab.db, lab.settings, resolve(lab.db, lab.settings, sub_id))
    assert prepared.stamp.generation == 1
    for spec, b in zip(prepared.batches, batches):
        assert lifecycle.run_batch(lab.settings, spec).reused
        for name, table in converted(spec.batch_dir).items():
            assert table.stat().st_ino == converted(b)[name].stat().st_ino
