"""A local `cp_version` runs the CellProfiler of that version, or fails its sub-analysis
before any batch naming the versions this deployment has (CPP_CELLPROFILER_VERSIONS, and
CPP_CELLPROFILER under the version it reports); what ran is recorded in the provenance.
Through the real imagedb and job; the second version is a second executable wrapping the
same install that reports another version; the run of that version (real CellProfiler):
tests/e2e/test_an_installed_second_cellprofiler_runs_and_is_recorded.py."""

from __future__ import annotations

import os

import dagster as dg
import pytest
from analysis_failures import assert_failed, run_once
from cellprofiler_versions import REAL, wrapper
from dagster_helpers import events
from submissions import submit

from cpp_dagster.analysis import cellprofiler
from cpp_dagster.demo.register import register_plate
from cpp_dagster.setting_rules import SettingsError
from cpp_dagster.settings import load_settings


def test_a_cp_version_not_installed_fails_before_any_batch_naming_the_installed_ones(
    lab, dagster_instance, monkeypatch, tmp_path
):
    other = wrapper(tmp_path / "cp-other", "4.2.99")
    monkeypatch.setenv("CPP_CELLPROFILER_VERSIONS", f"4.2.99={other}")
    installed = cellprofiler.version(str(REAL), lab.settings.pipeline_check_cache)
    acq = register_plate(lab.db, lab.settings, barcode="CPMISSING", wells=["B02"], sites=[1], seed=2)
    sub_id = submit(lab, acq, cp_version="9.9.9")
    run = run_once(lab, dagster_instance, sub_id)
    message = assert_failed(lab, sub_id, run, "step features_step.plan_batches failed", "cp_version '9.9.9'")
    assert "is not installed in this deployment" in message
    assert f"{installed} ({REAL})" in message and f"4.2.99 ({other})" in message
    assert not events(dagster_instance, run.run_id, dg.DagsterEventType.STEP_START)[1:]  # only the plan step
    assert not list((lab.settings.work_root / f"sub_{sub_id}").rglob("loaddata.csv"))


def test_a_mapped_executable_that_reports_another_version_is_refused(lab, dagster_instance, monkeypatch, tmp_path):
    liar = wrapper(tmp_path / "cp-liar", "4.2.8")
    monkeypatch.setenv("CPP_CELLPROFILER_VERSIONS", f"4.2.99={liar}")
    acq = register_plate(lab.db, lab.settings, barcode="CPLIAR", wells=["B02"], sites=[1], seed=2)
    sub_id = submit(lab, acq, cp_version="4.2.99")
    run = run_once(lab, dagster_instance, sub_id)
    assert_failed(lab, sub_id, run, f"maps it to {liar}, which reports '4.2.8'")


@pytest.mark.parametrize("value", ["4.2.8", "=/opt/cp", "4.2.8=/a,4.2.8=/b"])
def test_a_bad_versions_setting_is_a_readable_error(monkeypatch, value):
    monkeypatch.setenv("CPP_CELLPROFILER_VERSIONS", value)
    with pytest.raises(SettingsError, match="CPP_CELLPROFILER_VERSIONS"):
        load_settings()


def test_without_cp_version_the_default_runs_without_asking_its_version(tmp_path):
    assert cellprofiler.executable_for(None, default="/nowhere/cellprofiler") == "/nowhere/cellprofiler"
    assert not os.path.exists("/nowhere/cellprofiler")
