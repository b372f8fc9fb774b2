"""A pipeline that cannot run on the plan is refused at planning, before any batch runs,
with a message that names the module or image; CellProfiler inspects each pipeline file
once (real CellProfiler, real PostgreSQL, the real sensor and job). The comparison
itself, pure Python: tests/unit/test_pipeline_check_compares_needs_with_the_plan.py."""

from __future__ import annotations

import dataclasses
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest
from dagster_helpers import events, launch, tick
from pipeline_variants import RUN_CELLPOSE, with_module_before, without_module

from cpp_dagster.analysis import cellprofiler, lifecycle, pipeline_check
from cpp_dagster.analysis.pipeline_check import Export, PipelineCheckError, PipelineNeeds
from cpp_dagster.analysis.sub_analysis import resolve, work_dir
from cpp_dagster.demo.register import DEMO_PIPELINE_FILE, demo_pipeline_meta, register_plate

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
JUMP_CHANNELS = ("DNA", "ER", "RNA", "AGP", "Mito", "Brightfield", "Brightfield_L", "Brightfield_H")


def demo_text(lab) -> str:
    return (lab.settings.pipelines_dir / DEMO_PIPELINE_FILE).read_text()


def install(lab, name: str, text: str) -> str:
    (lab.settings.pipelines_dir / "test").mkdir(exist_ok=True)
    (lab.settings.pipelines_dir / "test" / name).write_text(text)
    return f"test/{name}"


def submit(lab, acq: int, pipeline_file: str, **sub_meta) -> int:
    meta = demo_pipeline_meta(batch_size=2)
    meta["sub_analyses"][0].update(pipeline_file=pipeline_file, **sub_meta)
    name = f"custom-{uuid.uuid4().hex[:6]}"
    lab.db.put_pipeline(name, meta)
    return lab.db.submit_analysis(acq, name).sub_ids[0]


BAD_PIPELINES = {
    "no export": (
        lambda lab: without_module(demo_text(lab), "ExportToSpreadsheet"),
        ["exports no tables", "no ExportToSpreadsheet module"],
    ),
    "plugin not installed": (
        lambda lab: with_module_before(demo_text(lab), RUN_CELLPOSE, "IdentifySecondaryObjects"),
        ["cannot load", "RunCellpose #3", "Could not find the RunCellpose module"],
    ),
    "channel the map lacks": (
        lambda lab: (FIXTURES / "nf-core-cellpainting" / "illumination.cppipe").read_text(),
        [
            "needs image(s) that this plate acquisition's channel map does not provide",
            "OrigBrightfield_L (used by Resize #23)",
            "OrigDNA (used by Resize #2)",
            "provides HOECHST, CONC, SYTO, MITO, PHAandWGA",
        ],
    ),
}


@pytest.mark.parametrize("case", list(BAD_PIPELINES))
def test_pipeline_that_cannot_run_fails_before_any_batch_with_the_module_or_image_named(lab, dagster_instance, case):
    text, fragments = BAD_PIPELINES[case]
    acq = register_plate(lab.db, lab.settings, barcode="BADCPPIPE", wells=["B02"], sites=[1, 2], seed=3)
    sub_id = submit(lab, acq, install(lab, "bad.cppipe", text(lab)))
    [request] = [r for r in tick(dagster_instance).run_requests if r.tags["imagedb/sub_id"] == str(sub_id)]
    run = launch(dagster_instance, request)

    assert run.status == dg.DagsterRunStatus.FAILURE
    sub = lab.db.sub_analysis(sub_id)
    assert sub.error is not None and sub.status["state"] == "failed" and "batches" not in sub.status
    for fragment in ["step features_step.plan_batches failed", "test/bad.cppipe", *fragments]:
        assert fragment in sub.status["message"]
    assert lab.db.analysis(sub.analysis_id)["error"] is not None
    started = [e.step_key for e in events(dagster_instance, run.run_id, dg.DagsterEventType.STEP_START)]
    assert started == ["features_step.plan_batches"]  # no batch ran
    assert not work_dir(lab.settings, sub_id).exists()  # no batch folder, no LoadData CSV


def test_pipeline_reading_images_through_namesandtypes_is_refused_with_its_message(lab):
    acq = register_plate(lab.db, lab.settings, barcode="EXHUMAN", wells=["B02"], sites=[1], seed=3)
    pipeline_file = install(lab, "ExampleHuman.cppipe", (FIXTURES / "examplehuman" / "ExampleHuman.cppipe").read_text())
    sub_id = submit(lab, acq, pipeline_file)
    with pytest.raises(PipelineCheckError) as refused:
        lifecycle.prepare(lab.db, lab.settings, resolve(lab.db, lab.settings, sub_id))
    assert str(refused.value) == (
        f"pipeline {pipeline_file!r} reads its images through NamesAndTypes; cpp-dagster feeds images through "
        "LoadData: replace Images/Metadata/NamesAndTypes/Groups by LoadData"
    )
    assert lab.db.sub_analysis(sub_id).start is None and not work_dir(lab.settings, sub_id).exists()


def test_demo_pipeline_passes_and_its_inspection_is_reused_without_a_second_process(lab, tmp_path):
    acq = register_plate(lab.db, lab.settings, barcode="CACHED", wells=["B02"], sites=[1, 2], seed=3)
    first, second = (submit(lab, acq, DEMO_PIPELINE_FILE) for _ in range(2))
    # a cache of this test's own (the other tests share one: see conftest's `settings`)
    cache_dir = tmp_path / "pipeline-checks"
    settings = dataclasses.replace(lab.settings, pipeline_check_dir=cache_dir)

    started = time.monotonic()
    assert len(lifecycle.prepare(lab.db, settings, resolve(lab.db, settings, first)).batches) == 1
    first_s = time.monotonic() - started
    [cached] = list(cache_dir.glob("*.json"))  # versions/ holds what each executable reports
    pipeline = lab.settings.pipelines_dir / DEMO_PIPELINE_FILE
    ran = cellprofiler.version(lab.settings.cellprofiler, cache_dir)
    assert cached.name == pipeline_check.cache_key(pipeline, lab.settings.cellprofiler, ran) + ".json"
    written, inspection = cached.stat(), cached.read_bytes()

    started = time.monotonic()
    assert len(lifecycle.prepare(lab.db, settings, resolve(lab.db, settings, second)).batches) == 1
    second_s = time.monotonic() - started
    # A second inspection would have written a new file and renamed it over the cached one;
    # the hit only touches it (gc keeps entries used within the retention).
    assert list(cache_dir.glob("*.json")) == [cached]
    assert cached.stat().st_ino == written.st_ino and cached.stat().st_mtime_ns >= written.st_mtime_ns
    assert cached.read_bytes() == inspection
    assert second_s < first_s / 3, (first_s, second_s)
    print(f"prepare with one inspection process: {first_s:.2f} s; with the cached inspection: {second_s:.2f} s")


def test_public_jump_pipelines_pass_on_the_channels_they_are_written_for(tmp_path, settings):
    """The nf-core/JUMP pipelines on their 8 channels (broad naming: Orig<Ch> images,
    Illum<Ch> illumination images). The demo pipelines pass in every end-to-end test."""
    cache_dir = tmp_path / "checks"

    def needs(path: Path) -> PipelineNeeds:
        return pipeline_check.inspect(path, cellprofiler=settings.cellprofiler, cache_dir=cache_dir)

    jump = FIXTURES / "nf-core-cellpainting"
    orig, illum = [f"Orig{ch}" for ch in JUMP_CHANNELS], {f"Illum{ch}" for ch in JUMP_CHANNELS}
    illumination = needs(jump / "illumination.cppipe")
    assert [m.label for m in illumination.modules if not m.enabled] == ["CreateBatchFiles #34"]
    assert (
        pipeline_check.problems(
            illumination,
            pipeline_file="illumination.cppipe",
            dyes=orig,
            illumination_images=illum,
            use_icf=False,
            files_only_allowed=True,
        )
        == []
    )
    # As the last step of an analysis it writes no table: that is refused.
    assert (
        "exports no tables"
        in pipeline_check.problems(
            illumination, pipeline_file="illumination.cppipe", dyes=orig, illumination_images=illum, use_icf=False
        )[0]
    )
    jump_analysis = needs(jump / "analysis.cppipe")
    assert [m.label for m in jump_analysis.modules if not m.enabled] == ["FlagImage #5"]
    assert jump_analysis.exports == (
        Export("ExportToSpreadsheet #39", False, ("Image", "Experiment", "Cells", "Cytoplasm", "Nuclei")),
    )
    assert (
        pipeline_check.problems(
            jump_analysis, pipeline_file="analysis.cppipe", dyes=orig, illumination_images=illum, use_icf=True
        )
        == []
    )
    assert len(list(cache_dir.glob("*.json"))) == 2  # one inspection per file
