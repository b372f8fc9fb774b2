"""End to end with real parts: a plate registered in imagedb is picked up by the sensor,
run batch by batch by real CellProfiler (each batch its own process), merged into
Parquet feature tables on the NAS, the outcome (quality checks included) is recorded in
imagedb, and the lab is told."""

from __future__ import annotations

import dagster as dg
import pyarrow.compute as pc
import pyarrow.parquet as pq
from dagster_helpers import events, launch, tick
from http_receiver import Receiver, free_port

from cpp_dagster.demo.register import DEMO_PIPELINE, register_plate
from cpp_dagster.features.columns import BATCH_COLUMN, IMAGE_KEY_COLUMN


def test_submitted_analysis_becomes_feature_tables_and_an_imagedb_outcome(lab, dagster_instance, monkeypatch):
    monkeypatch.setenv("CPP_RESULTS_URL_TEMPLATE", "https://files.lab/{path}")  # the lab's file browser
    acq = register_plate(lab.db, lab.settings, barcode="E2E-1", wells=["B02", "C03"], sites=[1, 2], seed=7)
    submitted = lab.db.submit_analysis(acq, DEMO_PIPELINE)
    sub_id = submitted.sub_ids[0]

    first = tick(dagster_instance)
    assert len(first.run_requests) == 1
    request = first.run_requests[0]
    # The partition a person reads: pipeline x plate barcode; the run key is the sub-analysis's.
    assert request.partition_key == f"{DEMO_PIPELINE}|E2E-1" and request.run_key == f"sub{sub_id}"
    assert dagster_instance.has_dynamic_partition("plate", "E2E-1")
    assert dagster_instance.has_dynamic_partition("pipeline", DEMO_PIPELINE)

    run = launch(dagster_instance, request)
    assert run.status == dg.DagsterRunStatus.SUCCESS

    # Two batches of two image sets, each run by CellProfiler in its own step process.
    batch_steps = [
        e
        for e in events(dagster_instance, run.run_id, dg.DagsterEventType.STEP_SUCCESS)
        if ".run_cellprofiler[" in e.step_key
    ]
    assert sorted(e.step_key for e in batch_steps) == [
        "features_step.run_cellprofiler[batch_0000]",
        "features_step.run_cellprofiler[batch_0001]",
    ]
    assert len({e.pid for e in batch_steps}) == 2

    # imagedb: start, finish, result, progress; the analysis finished with it.
    sub = lab.db.sub_analysis(sub_id)
    assert sub.start and sub.finish and sub.error is None
    results = lab.nas / "results" / "E2E-1" / str(acq) / str(submitted.analysis_id)
    assert sub.result["job_folder"] == f"results/E2E-1/{acq}/{submitted.analysis_id}"
    for table in ("Image", "Nuclei", "Cells", "Cytoplasm", "single_cell", "well_profiles"):
        assert f"{sub.result['job_folder']}/{table}.parquet" in sub.result["file_list"]
    assert sub.status["message"] == "2 / 2 batches finished, ~0.0 h left"
    assert dagster_instance.get_run_by_id(run.run_id).tags["imagedb/progress"] == sub.status["message"]
    assert lab.db.analysis(submitted.analysis_id)["finish"] is not None

    # Feature tables: one Image row per image set; object rows match the nuclei counted.
    image = pq.read_table(results / "Image.parquet")
    assert image.num_rows == 4
    assert sorted(zip(image["Metadata_Well"].to_pylist(), image["Metadata_Site"].to_pylist())) == [
        ("B02", 1),
        ("B02", 2),
        ("C03", 1),
        ("C03", 2),
    ]
    assert set(image[BATCH_COLUMN].to_pylist()) == {"batch_0000", "batch_0001"}
    nuclei = pq.read_table(results / "Nuclei.parquet")
    assert nuclei.num_rows == int(pc.sum(image["Count_Nuclei"]).as_py()) > 4 * 10
    for table in ("Cells", "Cytoplasm"):
        t = pq.read_table(results / f"{table}.parquet")
        assert t.num_rows > 0
        assert set(t[IMAGE_KEY_COLUMN].to_pylist()) <= set(image[IMAGE_KEY_COLUMN].to_pylist())
    keys = list(zip(nuclei[IMAGE_KEY_COLUMN].to_pylist(), nuclei["ObjectNumber"].to_pylist()))
    assert len(set(keys)) == len(keys)  # ImageNumber restarts per batch, rows never collide
    assert nuclei.schema.field("Intensity_MeanIntensity_HOECHST").type == "float"  # float32
    assert (results / "Experiment.csv").is_file()

    # Dagster: the partition's materialization carries the tables' metadata.
    mat = dagster_instance.get_latest_materialization_event(dg.AssetKey("feature_tables")).asset_materialization
    key = f"{DEMO_PIPELINE}|E2E-1"
    assert mat.partition == key
    assert mat.metadata["Image_rows"].value == 4 and mat.metadata["Nuclei_rows"].value == nuclei.num_rows
    assert mat.metadata["results_path"].value == str(results)
    assert mat.metadata["results_url"].value == f"https://files.lab/{sub.result['job_folder']}"

    # Quality checks ran on the merged tables and passed; the plate map is in the metadata.
    evaluations = {
        e.check_name: e.passed
        for e in events(dagster_instance, run.run_id, dg.DagsterEventType.ASSET_CHECK_EVALUATION)
        for e in [e.event_specific_data]
    }
    assert evaluations == {
        "image_rows_match_plan": True,
        "all_batches_present": True,
        "well_cell_counts": True,
        "nan_share": True,
        "column_drift": True,
    }
    assert mat.metadata["plate_map"].value.startswith("![")
    # ... and imagedb has them, in the sub-analysis's status
    assert [(c["name"], c["severity"], c["passed"]) for c in lab.db.sub_analysis(sub_id).status["checks"]] == [
        ("image_rows_match_plan", "ERROR", True),
        ("all_batches_present", "ERROR", True),
        ("well_cell_counts", "WARN", True),
        ("nan_share", "WARN", True),
        ("column_drift", "WARN", True),
    ]

    # The joined single-cell table: one row per cell; per-well profiles: one row per well.
    cells = pq.read_table(results / "Cells.parquet")
    single = pq.read_table(results / "single_cell.parquet")
    assert single.num_rows == cells.num_rows
    assert any(c.startswith("Nuclei_") for c in single.column_names)
    assert any(c.startswith("Cytoplasm_") for c in single.column_names)
    profiles = pq.read_table(results / "well_profiles.parquet")
    assert sorted(profiles["Metadata_Well"].to_pylist()) == ["B02", "C03"]
    for name in ("single_cell_table", "well_profiles"):
        assert (
            dagster_instance.get_latest_materialization_event(dg.AssetKey(name)).asset_materialization.partition == key
        )

    # A second tick finds nothing: the sub-analysis is never requested twice.
    assert tick(dagster_instance).run_requests == []

    # The lab is told, once, by the notify_lab sensor.
    receiver = Receiver(free_port()).start()
    try:
        monkeypatch.setenv("CPP_NOTIFY_WEBHOOK_URL", receiver.url())
        tick(dagster_instance, "notify_lab")
        tick(dagster_instance, "notify_lab")
        [told] = receiver.bodies()
    finally:
        receiver.stop()
    assert (told["analysis_id"], told["state"], told["plate_barcode"]) == (submitted.analysis_id, "finished", "E2E-1")
    assert told["result_url"] == f"https://files.lab/{sub.result['job_folder']}"
