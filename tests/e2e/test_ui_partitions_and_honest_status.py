"""The lab's front door in the UI, with real parts: a Materialize of a plate x pipeline
partition is a submission that runs the pipeline's steps in dependency order; a step
that fails after the feature tables were merged leaves the partition failed, in Dagster
and in imagedb. Real CellProfiler. What a Materialize does before any batch runs:
tests/integration/test_ui_partitions_are_submissions.py."""

from __future__ import annotations

import dagster as dg
from dagster_helpers import events, launch_from_ui, tick

from cpp_dagster.demo.register import DEMO_ICF_PIPELINE, DEMO_PIPELINE, register_plate

FEATURES_STEP = [dg.AssetKey(k) for k in ("feature_tables", "single_cell_table", "well_profiles")]


def step_order(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [e.step_key for e in events(instance, run_id, dg.DagsterEventType.STEP_SUCCESS)]


def test_a_materialize_from_the_ui_submits_the_pipeline_and_runs_its_steps_in_order(lab, dagster_instance):
    acq = register_plate(lab.db, lab.settings, barcode="UI-ICF", wells=["B02"], sites=[1, 2], seed=4)
    tick(dagster_instance)  # the plate and the pipelines become partitions
    assert {"UI-ICF"} <= set(dagster_instance.get_dynamic_partitions("plate"))
    assert {DEMO_PIPELINE, DEMO_ICF_PIPELINE} <= set(dagster_instance.get_dynamic_partitions("pipeline"))

    run = launch_from_ui(dagster_instance, DEMO_ICF_PIPELINE, "UI-ICF")
    assert run.status == dg.DagsterRunStatus.SUCCESS

    # The same rows as a CLI submission, both steps finished, by this one run.
    analysis_id = lab.db.analysis_of_run(run.run_id)
    icf, features = lab.db.sub_analyses_of(analysis_id)
    assert lab.db.analysis(analysis_id)["pipeline_name"] == DEMO_ICF_PIPELINE
    assert features.depends_on_sub_id == [icf.sub_id]
    assert icf.finish and features.finish and not (icf.error or features.error)
    assert icf.status["run_id"] == features.status["run_id"] == run.run_id
    assert lab.db.analysis(analysis_id)["finish"] is not None
    order = step_order(dagster_instance, run.run_id)
    assert order.index("illumination_functions.complete_step") < order.index("features_step.plan_batches")

    key = f"{DEMO_ICF_PIPELINE}|UI-ICF"
    for asset in ("illumination_functions", "feature_tables", "single_cell_table", "well_profiles"):
        event = dagster_instance.get_latest_materialization_event(dg.AssetKey(asset))
        assert event.asset_materialization.partition == key
    # The pipeline has no QC step: its asset says so rather than stopping the run.
    qc = dagster_instance.get_latest_materialization_event(dg.AssetKey("image_qc")).asset_materialization
    assert qc.metadata["reason"].value == f"none: pipeline {DEMO_ICF_PIPELINE!r} has no image_qc stage"

    # The sensor never launches what the UI run claimed.
    assert tick(dagster_instance).run_requests == []
    assert acq  # (registered above)


def test_a_failed_single_cell_table_leaves_the_partition_failed_in_dagster_and_imagedb(
    lab, dagster_instance, monkeypatch
):
    """The NAS fills up while the single-cell table is written (the in-process executor
    lets the test make the writer raise as the disk would): the feature tables were
    merged, yet no asset of the features step turns green, and imagedb says failed."""
    from cpp_dagster.features import single_cell

    monkeypatch.setenv("CPP_EXECUTOR", "in_process")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(single_cell, "write_single_cell", disk_full)
    register_plate(lab.db, lab.settings, barcode="UI-FULL", wells=["B02"], sites=[1], seed=4)
    tick(dagster_instance)
    run = launch_from_ui(dagster_instance, DEMO_PIPELINE, "UI-FULL")
    assert run.status == dg.DagsterRunStatus.FAILURE
    (failure,) = events(dagster_instance, run.run_id, dg.DagsterEventType.STEP_FAILURE)
    assert failure.step_key == "features_step.write_single_cell_table"

    # Dagster: the merge succeeded, but none of the step's assets materialized: each was
    # planned for this partition by a run that failed, which the partition grid shows as
    # failed (the real UI's view is checked through GraphQL in test_ui_backfill_is_submission).
    assert "features_step.merge_tables" in step_order(dagster_instance, run.run_id)
    for asset in FEATURES_STEP:
        assert dagster_instance.get_latest_materialization_event(asset) is None
    planned = {
        (e.asset_key, e.partition)
        for e in events(dagster_instance, run.run_id, dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED)
    }
    assert {(asset, f"{DEMO_PIPELINE}|UI-FULL") for asset in FEATURES_STEP} <= planned

    # imagedb: the sub-analysis and its analysis failed, with the step and the reason.
    (sub,) = lab.db.sub_analyses_of(lab.db.analysis_of_run(run.run_id))
    assert sub.error is not None and sub.finish is None
    assert sub.status["message"].startswith("step features_step.write_single_cell_table failed")
    assert "No space left on device" in sub.status["message"]
    assert lab.db.analysis(sub.analysis_id)["error"] is not None
