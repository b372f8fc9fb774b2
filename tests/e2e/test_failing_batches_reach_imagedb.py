"""A batch that fails in CellProfiler (a corrupt image, its job timeout, outputs that
cannot be converted) ends as an `error` timestamp and a readable message in imagedb and
a failed run in Dagster, retried only when another attempt could succeed; nothing
half-written becomes visible. Real CellProfiler. Failures before any batch runs:
tests/integration/test_failures_reach_imagedb.py."""

from __future__ import annotations

import dagster as dg
import pytest
from analysis_failures import assert_failed, run_once
from dagster_helpers import events
from submissions import submit

from cpp_dagster.demo.register import register_plate


def test_failing_batch_is_retried_then_fails_with_exit_code_and_log_tail(lab, dagster_instance):
    acq = register_plate(lab.db, lab.settings, barcode="CORRUPT", wells=["B02"], sites=[1, 2, 3, 4], seed=5)
    corrupt = next(im for im in lab.db.images(acq) if im.site == 3 and im.channel == 4)
    with open(corrupt.path, "wb") as f:
        f.write(b"this is not a TIFF")
    sub_id = submit(lab, acq)
    run = run_once(lab, dagster_instance, sub_id)

    retried = events(dagster_instance, run.run_id, dg.DagsterEventType.STEP_UP_FOR_RETRY)
    assert [e.step_key for e in retried] == ["features_step.run_cellprofiler[batch_0001]"]
    message = assert_failed(
        lab, sub_id, run, "run_cellprofiler[batch_0001]", "CellProfiler exited with code 1", "last lines of its log"
    )
    assert "Traceback" in message or "Error" in message
    sub = lab.db.sub_analysis(sub_id)
    assert sub.status["finished_batches"] == ["batch_0000"]  # the good batch finished, and only it
    results = lab.nas / "results" / "CORRUPT"
    assert not list(results.rglob("*.parquet"))  # no merge of a half-done analysis
    # The failed attempt left no output folder that could pass for finished.
    batch_dir = lab.nas / "work" / f"sub_{sub_id}" / "g0" / "batch_0001"
    assert not (batch_dir / "output").exists() and (batch_dir / "cellprofiler.log").is_file()


@pytest.mark.parametrize("retry_timeouts, attempts", [(None, 1), ("true", 2)])
def test_batch_killed_by_its_job_timeout_is_not_retried(lab, dagster_instance, monkeypatch, retry_timeouts, attempts):
    """A crash is retried (the test above); a batch that ran out of time would take as long
    again, so it fails after one attempt, with retries configured (CPP_BATCH_RETRIES=1).
    CPP_RETRY_TIMEOUTS=true retries it like a crash."""
    if retry_timeouts is None:
        monkeypatch.delenv("CPP_RETRY_TIMEOUTS", raising=False)
    else:
        monkeypatch.setenv("CPP_RETRY_TIMEOUTS", retry_timeouts)
    acq = register_plate(lab.db, lab.settings, barcode="SLOW", wells=["B02"], sites=[1], seed=5)
    sub_id = submit(lab, acq, job_timeout=1)  # CellProfiler alone takes longer to start
    run = run_once(lab, dagster_instance, sub_id)

    step = "features_step.run_cellprofiler[batch_0000]"
    retried = events(dagster_instance, run.run_id, dg.DagsterEventType.STEP_UP_FOR_RETRY)
    assert [e.step_key for e in retried] == [step] * (attempts - 1)
    assert [e.step_key for e in events(dagster_instance, run.run_id, dg.DagsterEventType.STEP_FAILURE)] == [step]
    assert_failed(
        lab,
        sub_id,
        run,
        f"step {step} failed: CellProfiler did not finish within the job timeout of 1 s and was killed",
    )


def test_outputs_that_cannot_be_converted_fail_the_batch_without_running_cellprofiler_again(
    lab, dagster_instance, monkeypatch
):
    """CellProfiler finished and its outputs were verified, but a table cannot be converted
    (here its Cells table is emptied after the verification): CellProfiler would write the
    same again, so the batch fails at once, with retries configured, naming the file. A
    disk error while converting (OSError) is still retried like a crash."""
    from cpp_dagster.features import batch_tables

    monkeypatch.setenv("CPP_EXECUTOR", "in_process")  # the conversion runs in this process
    monkeypatch.setenv("CPP_BATCH_RETRIES", "2")
    convert = batch_tables.convert_batch

    def emptied_cells_table(batch_dir, number=None):
        next((batch_dir / "output").glob("*Cells.csv")).write_bytes(b"")
        return convert(batch_dir, number)

    monkeypatch.setattr(batch_tables, "convert_batch", emptied_cells_table)
    acq = register_plate(lab.db, lab.settings, barcode="EMPTYCSV", wells=["B02"], sites=[1], seed=5)
    sub_id = submit(lab, acq)
    run = run_once(lab, dagster_instance, sub_id)

    step = "features_step.run_cellprofiler[batch_0000]"
    assert not events(dagster_instance, run.run_id, dg.DagsterEventType.STEP_UP_FOR_RETRY)
    assert [e.step_key for e in events(dagster_instance, run.run_id, dg.DagsterEventType.STEP_FAILURE)] == [step]
    message = assert_failed(
        lab,
        sub_id,
        run,
        f"step {step} failed: batch_0000: its outputs cannot be converted",
        "its Cells table",
        "is empty (0 bytes, no header)",
    )
    assert "Cells.csv" in message
    assert not list((lab.nas / "results").rglob("*.parquet"))
