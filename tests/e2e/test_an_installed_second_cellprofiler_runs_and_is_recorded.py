"""A local `cp_version` that CPP_CELLPROFILER_VERSIONS maps to a second executable runs
that executable for every batch (real CellProfiler, through the real imagedb and job), and
the provenance records the version it reported as what ran. The refusals:
tests/integration/test_the_cellprofiler_asked_for_or_a_clear_no.py."""

from __future__ import annotations

import json

import dagster as dg
from analysis_failures import run_once
from cellprofiler_versions import wrapper
from submissions import submit

from cpp_dagster.demo.register import register_plate
from cpp_dagster.features import provenance


def test_an_installed_second_version_runs_and_is_recorded_as_what_ran(lab, dagster_instance, monkeypatch, tmp_path):
    other = wrapper(tmp_path / "cp-other", "4.2.99")
    monkeypatch.setenv("CPP_CELLPROFILER_VERSIONS", f"4.2.99={other}")
    acq = register_plate(lab.db, lab.settings, barcode="CPOTHER", wells=["B02"], sites=[1], seed=2)
    sub_id = submit(lab, acq, cp_version="4.2.99")
    run = run_once(lab, dagster_instance, sub_id)
    sub = lab.db.sub_analysis(sub_id)
    assert run.status == dg.DagsterRunStatus.SUCCESS, sub.status
    assert sub.finish is not None
    batch_runs = [line for line in (other.parent / "calls").read_text().splitlines() if " -r " in f" {line} "]
    assert len(batch_runs) == sub.status["batches"]  # every batch ran the wrapper, not CPP_CELLPROFILER
    results = lab.settings.nas_root / sub.result["job_folder"]
    record = json.loads((results / provenance.folder_of(sub_id) / provenance.RECORD).read_text())
    assert record["cellprofiler"] == {"executable": str(other), "version": "4.2.99"}
    assert record["meta"]["cp_version"] == "4.2.99"
    assert all(b["command"].startswith(f"$ {other} -c -r ") for b in record["batches"])
