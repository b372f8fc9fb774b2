"""Image paths from imagedb must lie under the image folders (CPP_IMAGE_ROOTS): CellProfiler
reads whatever a LoadData CSV names, so an image row naming /etc/passwd, or a path that
climbs out with `..`, fails its sub-analysis before any batch, with a message naming the
paths, in imagedb and through the real job; the same plate under the roots plans."""

from __future__ import annotations

import dagster as dg
import pytest
from dagster_helpers import launch, tick

from cpp_dagster.analysis import lifecycle, planning
from cpp_dagster.analysis.sub_analysis import resolve
from cpp_dagster.demo.register import DEMO_CHANNEL_MAP, DEMO_PIPELINE
from cpp_dagster.demo.synthetic_plate import write_plate
from cpp_dagster.imagedb.rows import Image


def plate(lab, barcode: str, first_path: str | None = None) -> int:
    """A finished acquisition of one site in a folder under the image root; the first
    channel's path replaced by `first_path` when given."""
    files = write_plate(lab.nas / "images" / barcode, barcode, ["B02"], [1], seed=3)
    if first_path is not None:
        files[0] = {**files[0], "path": first_path}
    acq = lab.db.add_plate_acquisition(barcode, channel_map_id=DEMO_CHANNEL_MAP, folder=str(lab.nas / "images"))
    lab.db.add_images(acq, barcode, [Image(f["well"], f["site"], f["channel"], f["path"], f["z"]) for f in files])
    lab.db.finish_plate_acquisition(acq)
    return acq


@pytest.mark.parametrize(
    "path",
    [
        "/etc/passwd",
        "{images}/../../secret.tif",
        "{images}",  # the root itself is no image
        "relative/B02.tif",
        "{images}-other/B02.tif",  # a sibling whose name starts like the root
    ],
)
def test_an_image_outside_the_image_roots_fails_before_any_batch(lab, path):
    value = path.format(images=lab.nas / "images")
    sub_id = lab.db.submit_analysis(plate(lab, "OUT", value), DEMO_PIPELINE).sub_ids[0]
    with pytest.raises(planning.PlanningError) as refused:
        lifecycle.prepare(lab.db, lab.settings, resolve(lab.db, lab.settings, sub_id))
    message = str(refused.value)
    assert "1 image path(s) in imagedb are outside the image folders" in message and repr(value) in message
    assert f"CPP_IMAGE_ROOTS: {lab.nas / 'images'}" in message
    assert lab.db.sub_analysis(sub_id).start is None
    assert not list((lab.settings.work_root / f"sub_{sub_id}").rglob("loaddata.csv"))


def test_through_the_real_job_the_sub_analysis_fails_in_imagedb_and_a_good_one_plans(lab, dagster_instance):
    bad = lab.db.submit_analysis(plate(lab, "BAD", "/etc/passwd"), DEMO_PIPELINE).sub_ids[0]
    good = lab.db.submit_analysis(plate(lab, "GOOD"), DEMO_PIPELINE).sub_ids[0]
    requests = {r.tags["imagedb/sub_id"]: r for r in tick(dagster_instance).run_requests}
    run = launch(dagster_instance, requests[str(bad)])
    assert run.status == dg.DagsterRunStatus.FAILURE
    sub = lab.db.sub_analysis(bad)
    assert sub.error is not None and sub.status["state"] == "failed"
    assert sub.status["message"].startswith("step features_step.plan_batches failed: 1 image path(s) in imagedb")
    assert "'/etc/passwd'" in sub.status["message"]
    assert lab.db.sub_analysis(good).error is None
    prepared = lifecycle.prepare(lab.db, lab.settings, resolve(lab.db, lab.settings, good))
    assert len(prepared.batches) == 1


def test_more_roots_can_be_named(lab, monkeypatch):
    other = lab.nas.parent / "mikro2"
    monkeypatch.setenv("CPP_IMAGE_ROOTS", f"{lab.nas / 'images'}:{other}")
    from cpp_dagster.settings import load_settings

    settings = load_settings()
    files = write_plate(other / "TWO", "TWO", ["B02"], [1], seed=3)
    acq = lab.db.add_plate_acquisition("TWO", channel_map_id=DEMO_CHANNEL_MAP, folder=str(other))
    lab.db.add_images(acq, "TWO", [Image(f["well"], f["site"], f["channel"], f["path"], f["z"]) for f in files])
    lab.db.finish_plate_acquisition(acq)
    sub_id = lab.db.submit_analysis(acq, DEMO_PIPELINE).sub_ids[0]
    assert len(lifecycle.prepare(lab.db, settings, resolve(lab.db, settings, sub_id)).batches) == 1
