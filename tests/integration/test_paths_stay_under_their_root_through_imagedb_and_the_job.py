"""A plate barcode or a pipeline file that would leave its folder, in imagedb and through
the real sensor and job: refused with a message naming the value, the sub-analysis
failed in imagedb, and nothing created outside the NAS root (checked on the filesystem,
before and after). The values themselves: tests/unit/test_paths_stay_under_their_root.py."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from dagster_helpers import launch, tick
from escaping_values import KINDS, WHY, bad_value, outside_nas

from cpp_dagster import paths
from cpp_dagster.analysis import lifecycle
from cpp_dagster.analysis.cellprofiler import CellProfilerError
from cpp_dagster.analysis.sub_analysis import resolve, results_dir
from cpp_dagster.demo.register import DEMO_CHANNEL_MAP, DEMO_PIPELINE, DEMO_PIPELINE_FILE, demo_pipeline_meta
from cpp_dagster.demo.synthetic_plate import write_plate
from cpp_dagster.imagedb.rows import Image, PlateAcquisition


def plate(lab, barcode: str) -> int:
    """A finished plate acquisition in imagedb with `barcode`; its images in a safe folder."""
    folder = lab.nas / "images" / "safe"
    files = write_plate(folder, "SAFE", ["B02"], [1], seed=2)
    acq = lab.db.add_plate_acquisition(barcode, channel_map_id=DEMO_CHANNEL_MAP, folder=str(folder))
    lab.db.add_images(acq, barcode, [Image(f["well"], f["site"], f["channel"], f["path"], f["z"]) for f in files])
    lab.db.finish_plate_acquisition(acq)
    return acq


@pytest.mark.parametrize("kind", KINDS)
def test_a_plate_barcode_that_would_leave_results_is_refused_before_anything_is_written(lab, tmp_path, kind):
    value = bad_value(kind, tmp_path)
    before = outside_nas(lab.nas)
    if kind == "nul":  # imagedb cannot even hold it; results_dir refuses it all the same
        with pytest.raises(ValueError, match="NUL"):
            lab.db.add_plate_acquisition(value, channel_map_id=DEMO_CHANNEL_MAP, folder=str(tmp_path))
        acquisition = PlateAcquisition(1, value, None, None, DEMO_CHANNEL_MAP, 1, None, None)
        with pytest.raises(paths.UnsafePathError, match=WHY[kind]):
            results_dir(lab.settings, acquisition, 1)
    else:
        sub_id = lab.db.submit_analysis(plate(lab, value), DEMO_PIPELINE).sub_ids[0]
        with pytest.raises(paths.UnsafePathError, match=WHY[kind]) as refused:
            lifecycle.prepare(lab.db, lab.settings, resolve(lab.db, lab.settings, sub_id))
        assert "plate barcode" in str(refused.value) and repr(value) in str(refused.value)
        assert lab.db.sub_analysis(sub_id).start is None  # not started, no work folder
        assert not (lab.settings.work_root / f"sub_{sub_id}").exists()
    assert outside_nas(lab.nas) == before
    assert not (lab.nas / "results").exists()


def test_an_escaping_barcode_fails_its_sub_analysis_in_imagedb_through_the_real_job(lab, dagster_instance, tmp_path):
    """Beside a good plate: the bad one fails with the reason in imagedb, nothing is written
    beside the NAS root, and the good one still plans (it is requested by the same tick)."""
    bad = lab.db.submit_analysis(plate(lab, "../../escaped"), DEMO_PIPELINE).sub_ids[0]
    good = lab.db.submit_analysis(plate(lab, "GOOD"), DEMO_PIPELINE).sub_ids[0]
    before = outside_nas(lab.nas)
    requests = {r.tags["imagedb/sub_id"]: r for r in tick(dagster_instance).run_requests}
    assert set(requests) == {str(bad), str(good)}
    run = launch(dagster_instance, requests[str(bad)])
    assert run.status == dg.DagsterRunStatus.FAILURE
    sub = lab.db.sub_analysis(bad)
    assert sub.error is not None and sub.status["state"] == "failed"
    assert sub.status["message"] == (
        "step features_step.plan_batches failed: plate barcode '../../escaped' contains a path separator"
    )
    assert outside_nas(lab.nas) == before and not (tmp_path / "escaped").exists()
    assert lab.db.sub_analysis(good).error is None


@pytest.mark.parametrize("kind", ["dotdot", "absolute"])
def test_a_pipeline_file_outside_the_pipelines_folder_is_not_launched(lab, dagster_instance, tmp_path, kind):
    """Refused by the sensor's check before any run: the sub-analysis fails in imagedb
    with the reason, and no run is requested."""
    value = bad_value(kind, tmp_path, "escaped.cppipe")
    Path(value if kind == "absolute" else tmp_path / "escaped.cppipe").write_text("not a pipeline")
    meta = demo_pipeline_meta(batch_size=2)
    meta["sub_analyses"][0]["pipeline_file"] = value
    lab.db.put_pipeline("escaping", meta)
    sub_id = lab.db.submit_analysis(plate(lab, "PIPE"), "escaping").sub_ids[0]
    before = outside_nas(lab.nas)
    assert tick(dagster_instance).run_requests == []
    sub = lab.db.sub_analysis(sub_id)
    assert sub.error is not None and not (lab.settings.work_root / f"sub_{sub_id}").exists()
    assert sub.status["message"].startswith(f"not launched: pipeline_file {value!r} ")
    assert "pipelines folder" in sub.status["message"]
    assert outside_nas(lab.nas) == before


def test_a_pipeline_file_reached_through_a_symlink_out_of_the_folder_is_refused(lab, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "x.cppipe").write_bytes((lab.settings.pipelines_dir / DEMO_PIPELINE_FILE).read_bytes())
    (lab.settings.pipelines_dir / "linked").symlink_to(outside)
    with pytest.raises(CellProfilerError, match="'linked/x.cppipe' resolves outside"):
        lifecycle.cellprofiler.resolve_pipeline_file(lab.settings.pipelines_dir, "linked/x.cppipe")
