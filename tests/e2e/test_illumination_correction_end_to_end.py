"""Illumination correction end to end with real parts: the demo ICF pipeline's first
sub-analysis (real CellProfiler, one batch of every image set) writes ICF_<dye>.npy into
the analysis's results folder; the sensor then launches the features sub-analysis, whose
LoadData CSVs point at those files and whose CellProfiler divides each image by them
before segmenting; both outcomes reach imagedb."""

from __future__ import annotations

import csv

import dagster as dg
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import tifffile
from dagster_helpers import events, launch, tick

from cpp_dagster.analysis.sub_analysis import work_dir
from cpp_dagster.demo.register import DEMO_ICF_PIPELINE, register_plate
from cpp_dagster.demo.synthetic_plate import DYES

NOT_APPLICABLE = "not applicable: no object tables"


def check_outcomes(instance: dg.DagsterInstance, run_id: str) -> dict[str, tuple[bool, str]]:
    return {
        e.check_name: (e.passed, e.description)
        for e in (ev.event_specific_data for ev in events(instance, run_id, dg.DagsterEventType.ASSET_CHECK_EVALUATION))
    }


def materialization(instance: dg.DagsterInstance, asset: str, partition: str):
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    assert event is not None and event.asset_materialization.partition == partition
    return event.asset_materialization


def test_icf_step_writes_illumination_functions_the_features_step_applies(lab, dagster_instance):
    acq = register_plate(lab.db, lab.settings, barcode="ICF-E2E", wells=["B02", "C03"], sites=[1, 2], seed=11)
    submitted = lab.db.submit_analysis(acq, DEMO_ICF_PIPELINE)
    icf_sub, features_sub = submitted.sub_ids
    results = lab.nas / "results" / "ICF-E2E" / str(acq) / str(submitted.analysis_id)
    job_folder = f"results/ICF-E2E/{acq}/{submitted.analysis_id}"

    # Only the illumination step is ready: the features step waits for it.
    first = tick(dagster_instance)
    assert [r.tags["imagedb/sub_id"] for r in first.run_requests] == [str(icf_sub)]
    icf_run = launch(dagster_instance, first.run_requests[0])
    assert icf_run.status == dg.DagsterRunStatus.SUCCESS

    sub = lab.db.sub_analysis(icf_sub)
    assert sub.finish and sub.error is None
    assert sub.status["message"] == "1 / 1 batches finished, ~0.0 h left"  # batch_size 0: one batch
    assert sub.result["job_folder"] == job_folder
    icf = {}
    for dye in DYES:
        assert f"{job_folder}/ICF_{dye}.npy" in sub.result["file_list"]
        icf[dye] = np.load(results / f"ICF_{dye}.npy")
        function = icf[dye]
        assert function.shape == (256, 256) and np.isfinite(function).all()
        # rescaled to >= 1 (robust minimum 1), so dividing by it keeps intensities in 0..1
        assert function.min() == pytest.approx(1.0) and function.max() > 1.01
    # The step the features step depends on keeps its tables in a subfolder of its own.
    icf_tables = results / f"sub{icf_sub}_icf"
    assert f"{job_folder}/sub{icf_sub}_icf/Image.parquet" in sub.result["file_list"]
    icf_image = pq.read_table(icf_tables / "Image.parquet")
    assert icf_image.num_rows == 4  # every image set went into the functions
    assert not (results / "Image.parquet").exists()
    # No object tables: nothing to join or profile, and the checks that count objects say so.
    assert not list(results.rglob("single_cell.parquet")) and not list(results.rglob("well_profiles.parquet"))
    assert not any(f.endswith(("single_cell.parquet", "well_profiles.parquet")) for f in sub.result["file_list"])
    # In Dagster the illumination step is its own asset, in the same plate x pipeline partition.
    key = f"{DEMO_ICF_PIPELINE}|ICF-E2E"
    assert first.run_requests[0].partition_key == key
    metadata = materialization(dagster_instance, "illumination_functions", key).metadata
    assert metadata["results_path"].value == str(results)
    assert sorted(f for f in metadata["file_list"].value if f.endswith(".npy")) == sorted(
        f"{job_folder}/ICF_{dye}.npy" for dye in DYES
    )
    for asset in ("feature_tables", "single_cell_table", "well_profiles"):
        assert dagster_instance.get_latest_materialization_event(dg.AssetKey(asset)) is None
    assert check_outcomes(dagster_instance, icf_run.run_id) == {}  # the checks are the feature tables'
    assert lab.db.analysis(submitted.analysis_id)["finish"] is None  # the features step is still to run

    # Now the features step is ready; its LoadData CSVs name the ICF files.
    second = tick(dagster_instance)
    assert [r.tags["imagedb/sub_id"] for r in second.run_requests] == [str(features_sub)]
    features_run = launch(dagster_instance, second.run_requests[0])
    assert features_run.status == dg.DagsterRunStatus.SUCCESS
    csv_rows = [
        row
        for batch in sorted(work_dir(lab.settings, features_sub).glob("batch_*"))
        for row in csv.DictReader(open(batch / "loaddata.csv"))
    ]
    assert len(csv_rows) == 4
    for row in csv_rows:
        for dye in DYES:
            assert (row[f"FileName_ICF_{dye}"], row[f"PathName_ICF_{dye}"]) == (f"ICF_{dye}.npy", str(results))

    sub = lab.db.sub_analysis(features_sub)
    assert sub.finish and sub.error is None
    assert sub.status["message"] == "2 / 2 batches finished, ~0.0 h left"
    for table in ("Image", "Nuclei", "Cells", "Cytoplasm", "single_cell", "well_profiles"):
        assert f"{job_folder}/{table}.parquet" in sub.result["file_list"]
    assert lab.db.analysis(submitted.analysis_id)["finish"] is not None

    # CellProfiler loaded the ICF files and measured each image divided by its function.
    image = pq.read_table(results / "Image.parquet").to_pylist()
    assert len(image) == 4
    for row in image:
        for dye in DYES:
            assert (row[f"FileName_ICF_{dye}"], row[f"PathName_ICF_{dye}"]) == (f"ICF_{dye}.npy", str(results))
            raw = tifffile.imread(f"{row[f'PathName_{dye}']}/{row[f'FileName_{dye}']}") / 65535.0
            corrected = np.clip(raw / icf[dye], 0.0, 1.0).mean()
            assert row[f"Intensity_MeanIntensity_Corr{dye}"] == pytest.approx(corrected, rel=1e-4)
            assert abs(corrected / raw.mean() - 1) > 0.01  # the division made a difference
        # Segmentation on the corrected images still finds the synthetic cells: the
        # generator places 15-38 cells per site (at most 41), none touching the border.
        assert 15 <= row["Count_Nuclei"] <= 41 and row["Count_Cells"] == row["Count_Nuclei"]

    nuclei = pq.read_table(results / "Nuclei.parquet")
    assert nuclei.num_rows == sum(row["Count_Nuclei"] for row in image)
    cells = pq.read_table(results / "Cells.parquet")
    assert pq.read_table(results / "single_cell.parquet").num_rows == cells.num_rows > 0
    assert pc.min(cells["Intensity_MeanIntensity_CorrPHAandWGA"]).as_py() > 0
    profiles = pq.read_table(results / "well_profiles.parquet")
    assert sorted(profiles["Metadata_Well"].to_pylist()) == ["B02", "C03"]
    outcomes = check_outcomes(dagster_instance, features_run.run_id)
    assert all(passed for passed, _ in outcomes.values()), outcomes
    assert not any(description.startswith(NOT_APPLICABLE) for _, description in outcomes.values())

    # Lineage by step: the features step's assets, same partition, downstream of the
    # illumination functions through a real asset dependency.
    assert features_run.tags["dagster/partition"] == key
    for asset in ("feature_tables", "single_cell_table", "well_profiles"):
        materialization(dagster_instance, asset, key)
    from cpp_dagster.definitions import build_defs

    graph = build_defs().resolve_asset_graph()
    assert dg.AssetKey("illumination_functions") in graph.get(dg.AssetKey("feature_tables")).parent_keys
    assert graph.get(dg.AssetKey("single_cell_table")).parent_keys == {dg.AssetKey("feature_tables")}
    assert graph.get(dg.AssetKey("well_profiles")).parent_keys == {dg.AssetKey("single_cell_table")}

    # The features step's merge kept the illumination step's files (same results folder),
    # its tables included.
    assert pq.read_table(icf_tables / "Image.parquet").equals(icf_image)
    assert "Count_Nuclei" not in icf_image.column_names
    assert sorted(p.name for p in results.glob("ICF_*.npy")) == sorted(f"ICF_{dye}.npy" for dye in DYES)
    for dye in DYES:
        assert np.array_equal(np.load(results / f"ICF_{dye}.npy"), icf[dye])

    assert tick(dagster_instance).run_requests == []  # nothing runs twice
