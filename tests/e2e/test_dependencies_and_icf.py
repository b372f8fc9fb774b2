"""A features step waits for its illumination step, and with use_icf its LoadData CSVs
point at the ICF_<dye>.npy files that step wrote to the analysis's results folder."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from dagster_helpers import tick

from cpp_dagster.analysis import lifecycle
from cpp_dagster.analysis.planning import PlanningError
from cpp_dagster.analysis.sub_analysis import resolve
from cpp_dagster.demo.register import (
    DEMO_FEATURES_ICF_PIPELINE_FILE,
    DEMO_ICF_PIPELINE_FILE,
    DEMO_PIPELINE_FILE,
    register_plate,
)
from cpp_dagster.demo.synthetic_plate import DYES

ICF_THEN_FEATURES = {
    "analysis_meta": {},
    "sub_analyses": [
        {"type": "cellprofiler", "sub_type": "icf", "pipeline_file": DEMO_ICF_PIPELINE_FILE, "batch_size": 0},
        # The pipeline must load the illumination images: planning checks it (pipeline_check).
        {
            "type": "cellprofiler",
            "sub_type": "features",
            "pipeline_file": DEMO_FEATURES_ICF_PIPELINE_FILE,
            "batch_size": 2,
            "use_icf": True,
        },
    ],
}


def test_features_step_waits_for_icf_step_and_reads_its_files(lab, dagster_instance):
    lab.db.put_pipeline("icf-then-features", ICF_THEN_FEATURES)
    acq = register_plate(lab.db, lab.settings, barcode="ICF", wells=["B02"], sites=[1, 2, 3], seed=9)
    icf_sub, features_sub = lab.db.submit_analysis(acq, "icf-then-features").sub_ids

    assert [r.tags["imagedb/sub_id"] for r in tick(dagster_instance).run_requests] == [str(icf_sub)]

    # The illumination step ran (its outcome staged here): ICF files in the results folder.
    lab.db.mark_sub_started(icf_sub, batches=1, image_sets=3)
    results = resolve(lab.db, lab.settings, icf_sub).results_dir
    with pytest.raises(
        PlanningError, match=r"use_icf is set but ICF_HOECHST.npy, ICF_CONC.npy, .*ICF_PHAandWGA.npy are not in"
    ):
        lifecycle.prepare(lab.db, lab.settings, resolve(lab.db, lab.settings, features_sub))
    results.mkdir(parents=True, exist_ok=True)
    for dye in DYES:
        np.save(results / f"ICF_{dye}.npy", np.ones((256, 256), np.float32))
    lab.db.mark_sub_finished(icf_sub, {"job_folder": "x", "file_list": []})

    requests = tick(dagster_instance).run_requests
    assert [r.tags["imagedb/sub_id"] for r in requests] == [str(features_sub)]
    prepared = lifecycle.prepare(lab.db, lab.settings, resolve(lab.db, lab.settings, features_sub))
    assert [b.image_sets for b in prepared.batches] == [2, 1]
    rows = list(csv.DictReader(io.StringIO(open(prepared.batches[0].batch_dir + "/loaddata.csv").read())))
    assert len(rows) == 2
    for dye in DYES:
        assert rows[0][f"FileName_ICF_{dye}"] == f"ICF_{dye}.npy"
        assert rows[0][f"PathName_ICF_{dye}"] == str(results)
        assert rows[0][f"URL_ICF_{dye}"] == (results / f"ICF_{dye}.npy").as_uri()


def test_broad_icf_naming_reads_the_plate_illum_files_and_names_the_missing_ones(lab):
    meta = {
        "analysis_meta": {},
        "sub_analyses": [
            {"type": "cellprofiler", "sub_type": "icf", "pipeline_file": DEMO_ICF_PIPELINE_FILE, "batch_size": 0},
            {
                "type": "cellprofiler",
                "sub_type": "features",
                "pipeline_file": DEMO_PIPELINE_FILE,
                "batch_size": 0,
                "use_icf": True,
                "icf_naming": "broad",
                "channels": ["HOECHST", "MITO"],
            },
        ],
    }
    lab.db.put_pipeline("broad-icf", meta)
    acq = register_plate(lab.db, lab.settings, barcode="BROAD-1", wells=["B02"], sites=[1], seed=9)
    icf_sub, features_sub = lab.db.submit_analysis(acq, "broad-icf").sub_ids
    results = resolve(lab.db, lab.settings, icf_sub).results_dir
    results.mkdir(parents=True)
    np.save(results / "BROAD-1_IllumHOECHST.npy", np.ones((256, 256), np.float32))
    np.save(results / "ICF_MITO.npy", np.ones((256, 256), np.float32))  # the other naming does not count

    with pytest.raises(
        PlanningError,
        match=r"use_icf is set but BROAD-1_IllumMITO.npy are not in .* "
        r"\(icf_naming 'broad'; did the illumination step run",
    ):
        lifecycle.prepare(lab.db, lab.settings, resolve(lab.db, lab.settings, features_sub))
    np.save(results / "BROAD-1_IllumMITO.npy", np.ones((256, 256), np.float32))
    # with the files there, what is left is the pipeline: the demo features pipeline loads
    # no illumination image (the JUMP end-to-end test runs a pipeline that does)
    with pytest.raises(PlanningError, match=r"use_icf .*no illumination image"):
        lifecycle.prepare(lab.db, lab.settings, resolve(lab.db, lab.settings, features_sub))
