"""A pipeline as `cpp-dagster pipeline add` takes it: its name, each step's KEY=VALUE
options, the meta they make, what a step needs, and how `list`/`show` and the UI print
the versions. Pure functions; the command with CellProfiler:
tests/e2e/test_pipelines_managed_from_the_command_line.py."""

from __future__ import annotations

import datetime as dt

import pytest

from cpp_dagster.analysis import pipeline_check, pipeline_listing
from cpp_dagster.analysis.pipeline_check import Export, ModuleBlock, PipelineNeeds
from cpp_dagster.analysis.pipeline_steps import (
    PipelineStepError,
    needs_summary,
    pipeline_name,
    step_options,
    sub_analyses,
)
from cpp_dagster.analysis.planning import SubAnalysisOptions
from cpp_dagster.defs.analysis.partitions import usable
from cpp_dagster.imagedb.pipelines import ADDED_BY_OTHER_MEANS, PipelineVersion, RegisteredPipeline, with_version

HOSTILE_NAMES = [
    "x'; DROP TABLE analysis_pipelines; --",
    'say "hi"',
    "../../etc/passwd",
    "a/b",
    "a\\b",
    "..",
    "x" * 101,
    "x" * 100_000,
    "line\nbreak",
    "\x1b[2Jclear",
    "",
    " leading",
    "a|b",
    "a,b",
    "a...b",
    "pipeline~2",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=range(len(HOSTILE_NAMES)))
def test_a_pipeline_name_with_quotes_separators_or_huge_length_is_refused_readably(name):
    with pytest.raises(PipelineStepError) as refused:
        pipeline_name(name)
    message = str(refused.value)
    assert "is not a usable name: use 1 to 100 letters, digits" in message
    assert len(message) < 400 and "\n" not in message and "\x1b" not in message


@pytest.mark.parametrize("name", ["demo-cellpainting", "JUMP_cp5.1+icf", "A", "x" * 100])
def test_every_accepted_name_is_a_usable_partition_key_of_the_ui(name):
    assert pipeline_name(name) == name and usable(name)


def test_step_options_are_json_where_json_and_lists_may_be_comma_separated():
    options = step_options(
        [
            "batch_size=0",
            "use_icf=true",
            "channels=DNA, ER",
            "cp_version=5.0",
            "site_filter=1,2",
            'well_filter=["B02"]',
            "z=2-5",
        ],
        "step 1",
    )
    assert options == {
        "batch_size": 0,
        "use_icf": True,
        "channels": ["DNA", "ER"],
        "cp_version": "5.0",
        "site_filter": [1, 2],
        "well_filter": ["B02"],
        "z": "2-5",
    }


@pytest.mark.parametrize(
    "pairs, fragment",
    [
        (["batch_size"], "expected KEY=VALUE, got 'batch_size'"),
        (["=3"], "expected KEY=VALUE"),
        (["pipeline_file=../../x.cppipe"], "unknown option 'pipeline_file' (the step's FILE is its pipeline file)"),
        (["colour=red"], "unknown option 'colour'; the options are sub_type, batch_size"),
        (["batch_size=1", "batch_size=2"], "option 'batch_size' is given twice"),
        (["z=" + "1," * 6000], "the value of z is longer than 2,000 characters"),
    ],
)
def test_a_step_option_that_is_no_option_is_refused_naming_it(pairs, fragment):
    with pytest.raises(PipelineStepError) as refused:
        step_options(pairs, "step 1 of 2 (a.cppipe)")
    assert str(refused.value).startswith("step 1 of 2 (a.cppipe): ") and fragment in str(refused.value)


def test_one_step_is_the_features_step_and_steps_before_it_feed_it():
    [only] = sub_analyses([("a.cppipe", "store/aa.cppipe", {"batch_size": 4})])
    assert only == {"type": "cellprofiler", "batch_size": 4, "pipeline_file": "store/aa.cppipe", "sub_type": "features"}
    icf, features = sub_analyses(
        [
            ("illum.cppipe", "store/bb.cppipe", {"sub_type": "icf", "batch_size": 0}),
            ("analysis.cppipe", "store/cc.cppipe", {"use_icf": True, "icf_naming": "broad"}),
        ]
    )
    assert (icf["sub_type"], features["sub_type"], features["use_icf"]) == ("icf", "features", True)


@pytest.mark.parametrize(
    "steps, fragment",
    [
        ([], "a pipeline needs at least one step"),
        (
            [("illum.cppipe", "store/bb.cppipe", {}), ("analysis.cppipe", "store/cc.cppipe", {})],
            "step 1 of 2 (illum.cppipe) runs before another step, which depends on it: give it sub_type=icf",
        ),
        (
            [("a.cppipe", "store/a.cppipe", {"sub_type": "icf"}), ("b.cppipe", "store/b.cppipe", {"sub_type": "icf"})],
            "step 2 of 2 (b.cppipe) and step 1 are both sub_type icf",
        ),
        ([("a.cppipe", "store/a.cppipe", {"batch_size": "two"})], "pipeline file a.cppipe: 'batch_size' must be"),
        ([("a.cppipe", "store/a.cppipe", {"use_icf": "yes"})], "'use_icf' must be true or false, got 'yes'"),
        ([("a.cppipe", "store/a.cppipe", {"cp_version": "5 0; rm -rf"})], "'cp_version' must be"),
        ([("a.cppipe", "store/a.cppipe", {"batch_size": "[" * 5000})], "'batch_size' must be"),
    ],
)
def test_steps_that_cannot_be_planned_are_refused_naming_the_step(steps, fragment):
    with pytest.raises(PipelineStepError) as refused:
        sub_analyses(steps)
    assert fragment in str(refused.value)


EXPORT_ALL = (Export("ExportToSpreadsheet", True, ()),)


def needs(images: dict[str, tuple[str, ...]], *, exports=EXPORT_ALL, saves=False):
    modules = (ModuleBlock(1, "LoadData", True), *((ModuleBlock(2, "SaveImages", True),) if saves else ()))
    return PipelineNeeds(modules, None, ("LoadData",), images, tuple(exports))


def test_what_a_step_needs_splits_channels_from_illumination_files_by_its_naming():
    found = needs({"HOECHST": ("A #2",), "ICF_HOECHST": ("B #3",)})
    pharmbio = SubAnalysisOptions.from_meta({"pipeline_file": "a.cppipe", "use_icf": True})
    assert needs_summary(found, pharmbio) == {
        "channels": ["HOECHST"],
        "illumination_files": ["ICF_HOECHST.npy"],
        "exports": "all",
        "saves_files": False,
    }
    broad = SubAnalysisOptions.from_meta({"pipeline_file": "a.cppipe", "use_icf": True, "icf_naming": "broad"})
    summary = needs_summary(needs({"OrigDNA": ("A #2",), "IllumDNA": ("B #3",)}), broad)
    assert (summary["channels"], summary["illumination_files"]) == (["OrigDNA"], ["<Plate>_IllumDNA.npy"])
    icf = needs({"DNA": ("C #2",)}, exports=(), saves=True)
    assert needs_summary(icf, SubAnalysisOptions.from_meta({"pipeline_file": "a.cppipe"})) == {
        "channels": ["DNA"],
        "illumination_files": [],
        "exports": [],
        "saves_files": True,
    }


def test_without_a_channel_map_only_what_holds_for_every_plate_is_checked():
    found = needs({"OrigBrightfield_L": ("Resize #23",)}, exports=())
    kwargs = {"pipeline_file": "p.cppipe", "illumination_images": (), "use_icf": False}
    without = pipeline_check.problems(found, dyes=None, **kwargs)
    assert len(without) == 1 and "exports no tables" in without[0]
    with_map = pipeline_check.problems(found, dyes=("HOECHST",), **kwargs)
    assert len(with_map) == 2 and "OrigBrightfield_L (used by Resize #23)" in with_map[1]


ADDED = dt.datetime(2026, 12, 8, 1, 2, 3)


def version(number: int, source: str, digest: str, *, added_by="ada", steps=True) -> PipelineVersion:
    meta = with_version(
        {
            "analysis_meta": {"description": "features"},
            "sub_analyses": [
                {"type": "cellprofiler", "sub_type": "features", "pipeline_file": f"store/{digest}.cppipe"}
            ],
        },
        number,
    )
    recorded = [
        {
            "source": source,
            "sha256": digest,
            "pipeline_file": f"store/{digest}.cppipe",
            "sub_type": "features",
            "needs": {
                "channels": ["HOECHST", "SYTO"],
                "illumination_files": [],
                "exports": "all",
                "saves_files": False,
            },
            "compared_with": "channel map 1: HOECHST, SYTO",
        }
    ]
    return PipelineVersion("lab", number, meta, recorded if steps else None, ADDED, added_by)


def test_list_and_show_print_every_version_its_files_and_needs():
    first, second = version(1, "a.cppipe", "a" * 64), version(2, "b.cppipe", "b" * 64, added_by="bo")
    lab = RegisteredPipeline("lab", second.meta, (first, second), analyses={2: 1})
    listed = pipeline_listing.list_text([lab])
    assert listed.splitlines()[0] == "lab  version 2 of 2, added 2026-12-08 01:02:03 by bo"
    assert "step 1 features: from b.cppipe, sha256 bbbbbbbbbbbb" in listed
    assert "needs channels HOECHST, SYTO; exports all tables" in listed
    shown = pipeline_listing.show_text(lab)
    assert "version 1: added 2026-12-08T01:02:03 by ada; 0 analyses submitted with it" in shown
    assert "version 2 (current): added 2026-12-08T01:02:03 by bo; 1 analysis submitted with it" in shown
    assert f"store/{'a' * 64}.cppipe, from a.cppipe, sha256 {'a' * 64}" in shown
    assert "images compared with channel map 1: HOECHST, SYTO" in shown


def test_a_pipeline_changed_in_imagedb_or_never_added_says_so():
    first = version(1, "a.cppipe", "a" * 64)
    changed = RegisteredPipeline("lab", {"sub_analyses": [{"pipeline_file": "hand/made.cppipe"}]}, (first,))
    assert "changed in imagedb after version 1 (of 1)" in pipeline_listing.list_text([changed])
    assert "not checked (registered without `cpp-dagster pipeline add`)" in pipeline_listing.list_text([changed])
    by_sql = RegisteredPipeline("old", {"sub_analyses": [{"pipeline_file": "old.cppipe"}]}, ())
    assert "old  no versions (registered in imagedb directly)" in pipeline_listing.list_text([by_sql])
    kept = version(1, "x", "c" * 64, added_by=ADDED_BY_OTHER_MEANS, steps=False)
    assert "by written in imagedb directly" in pipeline_listing.show_text(RegisteredPipeline("lab", kept.meta, (kept,)))


def test_values_written_by_hand_cannot_move_the_terminal_or_break_the_ui_table():
    hostile = version(1, "evil|\x1b[2J<script>.cppipe", "d" * 64, added_by="\x1b]0;owned\x07")
    lab = RegisteredPipeline("lab", hostile.meta, (hostile,))
    for text in (pipeline_listing.list_text([lab]), pipeline_listing.show_text(lab)):
        assert "\x1b" not in text and "\x07" not in text and "\\x1b[2J" in text
    table = pipeline_listing.markdown_table([lab])
    row = table.splitlines()[2]
    assert row.count(" | ") == 5 and "evil\\|\\\\x1b[2J&lt;script&gt;.cppipe" in row
