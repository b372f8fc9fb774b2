"""The lab's front door in the UI, with real imagedb and real Dagster runs, before any
batch runs: each plate key leads back to its acquisition, a Materialize of a plate x
pipeline partition submits the pipeline (a plate still being imaged waits, a selection
that leaves out a step is refused, on Kubernetes it only submits). Running the steps:
tests/e2e/test_ui_partitions_and_honest_status.py."""

from __future__ import annotations

import dagster as dg
import pytest
from dagster_helpers import ANALYSIS_ASSETS, events, launch_from_ui, tick

from cpp_dagster.defs.analysis.partitions import key_lookup, plate_keys
from cpp_dagster.demo.register import DEMO_ICF_PIPELINE, DEMO_PIPELINE, register_plate

FEATURES_STEP = [dg.AssetKey(k) for k in ("feature_tables", "single_cell_table", "well_profiles")]


def test_each_plate_key_leads_back_to_its_acquisition_with_one_small_query(db):
    """A run from the UI finds the acquisition of its partition's plate key by looking up
    that barcode or id alone, never by reading every acquisition."""
    db.put_channel_map(1, {1: "HOECHST"})
    barcodes = ["P-1", "P-2", "P-1", "bad|bar,code", "X~2", "P-1"]
    ids = [db.add_plate_acquisition(b, channel_map_id=1, folder=f"/nas/{k}") for k, b in enumerate(barcodes)]
    keys = plate_keys(db.plate_acquisitions_by_id())
    assert [keys[i] for i in ids] == ["P-1", "P-2", f"P-1~{ids[2]}", f"~{ids[3]}", f"~{ids[4]}", f"P-1~{ids[5]}"]
    for acq_id, key in keys.items():
        found = plate_keys(db.plate_acquisitions_like(*key_lookup(key)))
        assert [a for a, k in found.items() if k == key] == [acq_id], key
    for unknown in ("P-3", f"P-1~{ids[0]}", f"P-2~{ids[2]}", "~999999", "P-1~x"):
        assert unknown not in plate_keys(db.plate_acquisitions_like(*key_lookup(unknown))).values(), unknown


def test_a_selection_that_leaves_out_a_step_of_the_pipeline_is_refused_before_submitting(lab, dagster_instance):
    register_plate(lab.db, lab.settings, barcode="UI-PART", wells=["B02"], sites=[1], seed=4)
    tick(dagster_instance)
    run = launch_from_ui(dagster_instance, DEMO_ICF_PIPELINE, "UI-PART", assets=FEATURES_STEP)
    assert run.status == dg.DagsterRunStatus.FAILURE
    (failure,) = events(dagster_instance, run.run_id, dg.DagsterEventType.STEP_FAILURE)
    assert "select illumination_functions too (nothing was submitted)" in failure.event_specific_data.error.message
    assert lab.db.analysis_of_run(run.run_id) is None


@pytest.mark.parametrize("barcode", ["UI-WAIT"])
def test_a_plate_still_being_imaged_is_submitted_and_waits(lab, dagster_instance, barcode):
    acq = register_plate(lab.db, lab.settings, barcode=barcode, wells=["B02"], sites=[1], seed=4, finished=False)
    tick(dagster_instance)
    run = launch_from_ui(dagster_instance, DEMO_PIPELINE, barcode, assets=ANALYSIS_ASSETS)
    assert run.status == dg.DagsterRunStatus.SUCCESS  # nothing failed: it waits
    assert dagster_instance.get_latest_materialization_event(dg.AssetKey("feature_tables")) is None
    (sub,) = lab.db.sub_analyses_of(lab.db.analysis_of_run(run.run_id))
    assert sub.start is None and sub.error is None  # submitted, not claimed by the run
    assert tick(dagster_instance).run_requests == []  # not ready: the acquisition is not finished
    lab.db.finish_plate_acquisition(acq)
    (request,) = tick(dagster_instance).run_requests  # now the sensor launches it
    assert request.tags["imagedb/sub_id"] == str(sub.sub_id) and request.partition_key == f"{DEMO_PIPELINE}|{barcode}"


def test_on_kubernetes_a_ui_run_only_submits_and_the_sensor_runs_each_step_with_its_pod_settings(
    lab, dagster_instance, monkeypatch
):
    """CPP_UI_RUNS=submit (the default with CPP_EXECUTOR=k8s): a Materialize submits the
    pipeline and runs no batch itself; the sensor then launches each sub-analysis as a run
    of its own (the runs that carry a cp_version's image and a step's resources)."""
    monkeypatch.setenv("CPP_UI_RUNS", "submit")
    register_plate(lab.db, lab.settings, barcode="UI-K8S", wells=["B02"], sites=[1], seed=4)
    tick(dagster_instance)
    run = launch_from_ui(dagster_instance, DEMO_ICF_PIPELINE, "UI-K8S")
    assert run.status == dg.DagsterRunStatus.SUCCESS
    started = {e.step_key for e in events(dagster_instance, run.run_id, dg.DagsterEventType.STEP_START)}
    assert started and not any("run_cellprofiler" in key for key in started)
    assert not events(dagster_instance, run.run_id, dg.DagsterEventType.ASSET_MATERIALIZATION)
    logs = [e.user_message for e in dagster_instance.all_logs(run.run_id)]
    assert any("the sensor launches each of its sub-analyses as a run of its own" in m for m in logs)

    icf, features = lab.db.sub_analyses_of(lab.db.analysis_of_run(run.run_id))
    assert all(s.start is None and "claimed_by_run" not in (s.status or {}) for s in (icf, features))
    (request,) = tick(dagster_instance).run_requests  # the illumination step first; features waits for it
    assert request.tags["imagedb/sub_id"] == str(icf.sub_id)
    assert request.job_name == "illumination_functions_job"
    assert request.partition_key == f"{DEMO_ICF_PIPELINE}|UI-K8S"
