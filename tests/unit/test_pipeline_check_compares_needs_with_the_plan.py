"""The pipeline check's comparison of what a pipeline needs and exports (`PipelineNeeds`)
with the plan: pure Python, no CellProfiler. Every problem is listed at once, in a
message naming the module or image. CellProfiler's own inspection of real pipelines,
through planning and the job: tests/e2e/test_pipeline_check.py."""

from __future__ import annotations

import shutil

import pytest

from cpp_dagster.analysis import pipeline_check
from cpp_dagster.analysis.pipeline_check import Export, ModuleBlock, PipelineCheckError, PipelineNeeds

DEMO_DYES = ("HOECHST", "CONC", "SYTO", "MITO", "PHAandWGA")
EXPORT_ALL = (Export("ExportToSpreadsheet #9", True, ()),)
LOADDATA = (ModuleBlock(1, "LoadData", True),)


def loaddata_pipeline(*, needs_images=None, exports=EXPORT_ALL, modules=LOADDATA) -> PipelineNeeds:
    return PipelineNeeds(
        modules=tuple(modules),
        load_error=None,
        image_inputs=("LoadData",),
        needs_images=needs_images or {"HOECHST": ("IdentifyPrimaryObjects #2",)},
        exports=tuple(exports),
    )


def refusal(needs: PipelineNeeds, use_icf: bool = False, files_only_allowed: bool = False) -> str:
    with pytest.raises(PipelineCheckError) as refused:
        pipeline_check.check(
            needs,
            pipeline_file="p.cppipe",
            dyes=DEMO_DYES,
            use_icf=use_icf,
            illumination_images={f"ICF_{d}" for d in DEMO_DYES},
            files_only_allowed=files_only_allowed,
        )
    return str(refused.value)


def test_explicit_export_list_without_the_image_table_is_refused():
    message = refusal(loaddata_pipeline(exports=[Export("ExportToSpreadsheet #9", False, ("Nuclei", "Cells"))]))
    assert "does not export the Image table: in ExportToSpreadsheet #9 choose 'Export all measurement types'" in message


def test_use_icf_with_a_pipeline_that_loads_no_illumination_image_is_refused():
    message = refusal(loaddata_pipeline(), use_icf=True)
    assert message.startswith("use_icf is set but pipeline 'p.cppipe' loads no illumination image (ICF_CONC, ")


def test_illumination_images_without_use_icf_say_so():
    message = refusal(loaddata_pipeline(needs_images={"HOECHST": ("A #2",), "ICF_HOECHST": ("B #3",)}))
    assert "ICF_HOECHST (used by B #3)" in message and message.endswith("the illumination images need use_icf")


def test_a_disabled_module_that_cannot_load_is_no_problem_and_every_problem_is_listed_at_once():
    modules = [
        ModuleBlock(1, "LoadData", True),
        ModuleBlock(2, "RunCellpose", False, "ValueError: not found"),
        ModuleBlock(3, "RunStarDist", True, "ValueError: not found"),
    ]
    message = refusal(
        loaddata_pipeline(modules=modules, exports=[], needs_images={"OrigDNA": ("IdentifyPrimaryObjects #4",)})
    )
    assert message.startswith("3 problems: ")
    assert "RunStarDist #3 (ValueError: not found)" in message and "RunCellpose" not in message
    assert "exports no tables" in message and "OrigDNA (used by IdentifyPrimaryObjects #4)" in message


def test_a_step_others_depend_on_may_write_files_only():
    modules = [ModuleBlock(1, "LoadData", True), ModuleBlock(2, "SaveImages", True)]
    files_only = loaddata_pipeline(modules=modules, exports=[])
    pipeline_check.check(
        files_only,
        pipeline_file="p.cppipe",
        dyes=DEMO_DYES,
        illumination_images=(),
        use_icf=False,
        files_only_allowed=True,
    )
    assert "exports no tables" in refusal(files_only)


def test_the_cache_key_follows_the_file_content_and_the_cellprofiler_build(tmp_path):
    a, b = tmp_path / "a.cppipe", tmp_path / "b.cppipe"
    a.write_text("same")
    shutil.copyfile(a, b)
    assert pipeline_check.cache_key(a, "/cp/bin/cellprofiler", "5.0.0") == pipeline_check.cache_key(
        b, "/cp/bin/cellprofiler", "5.0.0"
    )
    assert pipeline_check.cache_key(a, "/cp/bin/cellprofiler", "5.0.0") != pipeline_check.cache_key(
        a, "/cp2/bin/cellprofiler", "5.0.0"
    )
    b.write_text("changed")
    assert pipeline_check.cache_key(a, "/cp/bin/cellprofiler", "5.0.0") != pipeline_check.cache_key(
        b, "/cp/bin/cellprofiler", "5.0.0"
    )
    # the same path in another cp_version's image (or a reinstall) is another CellProfiler
    assert pipeline_check.cache_key(a, "/cp/bin/cellprofiler", "5.0.0") != pipeline_check.cache_key(
        a, "/cp/bin/cellprofiler", "4.2.8"
    )
