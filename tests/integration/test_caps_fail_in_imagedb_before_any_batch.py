"""The caps of one sub-analysis through the real imagedb and job: a plan beyond
CPP_MAX_BATCHES or CPP_MAX_LOADDATA_MB, or a `z` beyond CPP_MAX_Z_PLANES, fails the
sub-analysis in imagedb with the cap named before any batch or LoadData CSV exists, and
the image rows stream from imagedb through a server-side cursor (a plate's rows are
never one list in memory). The caps themselves: tests/unit/test_a_sub_analysis_is_bounded.py."""

from __future__ import annotations

import tracemalloc

import dagster as dg
import pytest
from dagster_helpers import launch, tick
from test_image_paths_stay_under_the_image_roots import plate

from cpp_dagster.analysis import lifecycle, planning
from cpp_dagster.analysis.sub_analysis import resolve
from cpp_dagster.demo.register import demo_pipeline_meta
from cpp_dagster.imagedb.rows import Image
from cpp_dagster.settings import load_settings


def test_too_many_batches_fail_the_sub_analysis_in_imagedb_through_the_job(lab, dagster_instance, monkeypatch):
    monkeypatch.setenv("CPP_MAX_BATCHES", "2")
    lab.db.put_pipeline("capped", demo_pipeline_meta(batch_size=1))
    acq = plate(lab, "CAPPED")  # one well, one site: write three more sites' worth of rows
    sub_id = lab.db.submit_analysis(acq, "capped").sub_ids[0]
    extra = [Image("C03", s, im.channel, im.path, im.z) for s in (2, 3) for im in lab.db.images(acq) if im.site == 1]
    lab.db.add_images(acq, "CAPPED", extra)
    (request,) = tick(dagster_instance).run_requests
    run = launch(dagster_instance, request)
    assert run.status == dg.DagsterRunStatus.FAILURE
    sub = lab.db.sub_analysis(sub_id)
    assert sub.error is not None and sub.status["state"] == "failed"
    assert sub.status["message"] == (
        "step features_step.plan_batches failed: batch_size 1 makes 3 batches of 3 image sets; "
        "a sub-analysis may have at most 2 (CPP_MAX_BATCHES): use a larger batch_size"
    )
    assert not list((lab.settings.work_root / f"sub_{sub_id}").rglob("loaddata.csv"))


@pytest.mark.parametrize(
    "variable, value, meta, says",
    [
        ("CPP_MAX_LOADDATA_MB", "0.0001", {}, "MB; at most 0.0001 MB (CPP_MAX_LOADDATA_MB)"),
        ("CPP_MAX_Z_PLANES", "10", {"z": "0-999999999999"}, "names 1,000,000,000,000 planes"),
    ],
)
def test_a_cap_fails_planning_before_any_loaddata_is_written(lab, monkeypatch, variable, value, meta, says):
    monkeypatch.setenv(variable, value)
    settings = load_settings()
    pipeline = demo_pipeline_meta()
    pipeline["sub_analyses"][0].update(meta)
    lab.db.put_pipeline("capped", pipeline)
    sub_id = lab.db.submit_analysis(plate(lab, "CAP"), "capped").sub_ids[0]
    with pytest.raises(planning.PlanningError, match=says.replace("(", r"\(").replace(")", r"\)")):
        lifecycle.prepare(lab.db, settings, resolve(lab.db, settings, sub_id))
    assert lab.db.sub_analysis(sub_id).start is None
    assert not list((settings.work_root / f"sub_{sub_id}").rglob("loaddata.csv"))


def test_image_rows_stream_from_imagedb_in_pages(lab):
    acq = lab.db.add_plate_acquisition("BIG", channel_map_id=None, folder="/nas/images/BIG")
    rows = [
        Image(f"W{w:05d}", 1, c, f"/nas/images/BIG/W{w:05d}_c{c}_{'x' * 60}.tif")
        for w in range(20_000)
        for c in (1, 2, 3)
    ]
    lab.db.add_images(acq, "BIG", rows)
    del rows
    tracemalloc.start()
    stream = lab.db.stream_images(acq, page_rows=1000)
    first = next(stream)
    first_page = tracemalloc.get_traced_memory()[1]
    stream.close()
    tracemalloc.stop()
    whole = lab.db.images(acq)
    assert len(whole) == 60_000 and first in whole
    assert first_page < 3_000_000, f"{first_page:,} bytes held to read one row: the result was not paged"
