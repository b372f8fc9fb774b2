"""imagedb refuses the write of a run that a re-run replaced, and the refusal is in the
run log the lab reads; batches reporting at the same moment are all counted. Real
imagedb, a real Dagster run. A stale run through real CellProfiler runs and sensors:
tests/e2e/test_no_stale_run_overwrites_a_new_one.py."""

from __future__ import annotations

import dagster as dg
from submissions import submit

from cpp_dagster.demo.register import register_plate
from cpp_dagster.imagedb.rows import RunStamp


def test_progress_of_batches_finishing_at_once_is_never_lost(lab):
    """status is updated under a row lock: sixteen batches reporting at the same moment
    are all counted."""
    from concurrent.futures import ThreadPoolExecutor

    from cpp_dagster.demo.register import DEMO_PIPELINE

    acq = lab.db.add_plate_acquisition("BUSY", channel_map_id=1, folder="/nowhere")
    sub_id = lab.db.submit_analysis(acq, DEMO_PIPELINE).sub_ids[0]
    stamp = RunStamp(0, "run-busy")
    assert lab.db.mark_sub_started(sub_id, batches=16, image_sets=16, stamp=stamp)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda i: lab.db.record_batch_finished(sub_id, f"batch_{i:04d}", stamp), range(16)))
    status = lab.db.sub_analysis(sub_id).status
    assert status["finished_batches"] == [f"batch_{i:04d}" for i in range(16)]
    assert status["message"].startswith("16 / 16 batches finished")


def test_a_refused_stale_write_is_in_the_run_log_the_lab_reads(lab, tmp_path):
    """A failure hook of a stale run has its write refused by imagedb; the warning saying so
    reaches the run's event log in the UI, through the project's dagster.yaml
    (`python_logs`: the `cpp_dagster` loggers are Dagster-managed)."""
    import yaml

    from cpp_dagster.settings import PROJECT_ROOT

    python_logs = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())["python_logs"]
    acq = register_plate(lab.db, lab.settings, barcode="STALE-LOG", wells=["B02"], sites=[1], seed=2)
    sub_id = submit(lab, acq, batch_size=1)
    lab.db.mark_sub_started(sub_id, batches=1, image_sets=1, stamp=RunStamp(0, "the-current-run"))

    @dg.op
    def late_failure_of_an_old_run():
        assert not lab.db.mark_sub_failed(sub_id, "late failure", RunStamp(0, "an-old-run"))

    @dg.job
    def old_run():
        late_failure_of_an_old_run()

    (tmp_path / "home").mkdir()
    with dg.instance_for_test(overrides={"python_logs": python_logs}, temp_dir=str(tmp_path / "home")) as instance:
        result = old_run.execute_in_process(instance=instance)
        assert result.success
        logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any("refused" in m and f"sub-analysis {sub_id} belongs to a newer run" in m for m in logs), logs
    assert lab.db.sub_analysis(sub_id).error is None
