"""Quality that counts, with real CellProfiler: a plate with an empty well (nothing
seeded: its images are black) runs to the end; imagedb's status has the five checks, the
empty well flagged, and the lab's notification says so. The pipeline says `quality:
block`, and still it finishes: only a failed ERROR check (tables incomplete) blocks,
never a warning about the data (those cases: tests/integration/test_quality_checks_count_in_imagedb.py)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np
from analysis_failures import run_once
from submissions import submit

from cpp_dagster.demo.register import register_plate
from cpp_dagster.demo.synthetic_plate import write_tiff


def test_an_empty_well_is_a_warning_in_imagedb_that_never_blocks(lab, dagster_instance):
    acq = register_plate(lab.db, lab.settings, barcode="QC-EMPTY", wells=["B02", "C03"], sites=[1, 2], seed=3)
    for image in lab.db.images(acq):
        if image.well == "C03":  # nothing was seeded in this well
            write_tiff(Path(image.path), np.zeros((256, 256), np.uint16))
    sub_id = submit(lab, acq, batch_size=2, quality="block")

    run = run_once(lab, dagster_instance, sub_id)

    assert run.status == dg.DagsterRunStatus.SUCCESS
    sub = lab.db.sub_analysis(sub_id)
    assert sub.finish is not None and sub.error is None and sub.status["state"] == "finished"
    checks = {c["name"]: c for c in sub.status["checks"]}
    assert checks["image_rows_match_plan"]["passed"] and checks["all_batches_present"]["passed"]
    flagged = checks["well_cell_counts"]
    assert (flagged["severity"], flagged["passed"]) == ("WARN", False)
    assert flagged["message"].startswith("1 of 2 wells flagged")
    analysis = lab.db.analysis(sub.analysis_id)
    assert analysis["finish"] is not None and analysis["error"] is None
    [told] = lab.db.notifications_of(sub.analysis_id)
    assert told.state == "finished" and "quality warnings: well_cell_counts: 1 of 2 wells flagged" in told.message
