"""Every analysis pod can write to the work area, so a batch folder (or the sub-analysis's
generation folder) planted there as a symbolic link would send a LoadData CSV and
CellProfiler's outputs elsewhere: planning refuses it, naming the folder, and writes
nothing through it. The real planning on the real imagedb."""

from __future__ import annotations

import pytest
from test_image_paths_stay_under_the_image_roots import plate

from cpp_dagster import paths
from cpp_dagster.analysis import lifecycle
from cpp_dagster.analysis.sub_analysis import resolve
from cpp_dagster.demo.register import DEMO_PIPELINE


@pytest.mark.parametrize("planted", ["g0", "g0/batch_0000"])
@pytest.mark.parametrize("inside", [False, True], ids=["to-outside", "to-another-sub-analysis"])
def test_a_planted_link_in_the_work_area_is_refused_and_nothing_is_written_through_it(lab, tmp_path, planted, inside):
    sub_id = lab.db.submit_analysis(plate(lab, "LINKED"), DEMO_PIPELINE).sub_ids[0]
    elsewhere = lab.settings.work_root / "sub_999" / "g0" if inside else tmp_path / "elsewhere"
    elsewhere.mkdir(parents=True)
    link = lab.settings.work_root / f"sub_{sub_id}" / planted
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(paths.UnsafePathError, match=r"work folder .*(is a symbolic link to|resolves outside)"):
        lifecycle.prepare(lab.db, lab.settings, resolve(lab.db, lab.settings, sub_id))
    assert not list(elsewhere.rglob("loaddata.csv"))
    assert lab.db.sub_analysis(sub_id).start is None
