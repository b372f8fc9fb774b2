"""`cpp-dagster pipeline add / list / show / check` with real CellProfiler and a real
imagedb: a pipeline that cannot run is refused with planning's own messages and
registers nothing; a new version never moves an analysis submitted before it off its
file; the same content is stored once; list and show print the versions and what each
step needs. The refusals that come before CellProfiler (names, files, options):
tests/integration/test_pipeline_versions_in_imagedb.py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from pipeline_variants import RUN_CELLPOSE, with_module_before, without_module

from cpp_dagster.analysis import lifecycle
from cpp_dagster.analysis.sub_analysis import resolve
from cpp_dagster.cli import main
from cpp_dagster.demo.register import (
    DEMO_CHANNEL_MAP,
    DEMO_FEATURES_ICF_PIPELINE_FILE,
    DEMO_ICF_PIPELINE_FILE,
    DEMO_PIPELINE_FILE,
    register_plate,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
NUCLEI_ONLY = FIXTURES / "nuclei-only" / "demo_nuclei_only.cppipe"


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["pipeline", *args])
    out, err = capsys.readouterr()
    return code, out, err


def demo(lab, name: str = DEMO_PIPELINE_FILE) -> Path:
    return lab.settings.pipelines_dir / name


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def store_files(lab) -> list[str]:
    store = lab.settings.pipelines_dir / "store"
    return sorted(p.name for p in store.iterdir()) if store.exists() else []


BAD_PIPELINES = {
    "an unloadable module": (
        lambda text: with_module_before(text, RUN_CELLPOSE, "IdentifySecondaryObjects"),
        ["has module(s) this CellProfiler cannot load", "RunCellpose #3", "Could not find the RunCellpose module"],
    ),
    "no export": (
        lambda text: without_module(text, "ExportToSpreadsheet"),
        ["exports no tables (it has no ExportToSpreadsheet module)"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_PIPELINES))
def test_add_of_a_pipeline_that_cannot_run_registers_nothing(lab, tmp_path, capsys, case):
    change, fragments = BAD_PIPELINES[case]
    bad = tmp_path / "bad.cppipe"
    bad.write_text(change(demo(lab).read_text()))
    before = lab.db.pipeline_names()

    code, out, err = cli(capsys, "add", "lab-bad", str(bad), "--channel-map", str(DEMO_CHANNEL_MAP))

    assert (code, out) == (2, "")
    assert err.startswith("cpp-dagster pipeline add: pipeline 'bad.cppipe' ")  # planning's message, this file
    for fragment in fragments:
        assert fragment in err
    assert lab.db.pipeline_names() == before and all(not p.versions for p in lab.db.registered_pipelines())
    assert store_files(lab) == []


def test_a_bad_step_of_a_two_step_pipeline_refuses_the_whole_pipeline(lab, tmp_path, capsys):
    no_export = tmp_path / "features.cppipe"
    no_export.write_text(without_module(demo(lab, DEMO_FEATURES_ICF_PIPELINE_FILE).read_text(), "ExportToSpreadsheet"))
    code, _, err = cli(
        capsys,
        "add",
        "lab-icf-bad",
        "--step",
        str(demo(lab, DEMO_ICF_PIPELINE_FILE)),
        "sub_type=icf",
        "batch_size=0",
        "--step",
        str(no_export),
        "use_icf=true",
    )
    assert code == 2 and "step 2 of 2 (features.cppipe): pipeline 'features.cppipe' exports no tables" in err
    assert "lab-icf-bad" not in lab.db.pipeline_names() and store_files(lab) == []


def test_a_new_version_leaves_an_earlier_submission_on_its_file(lab, capsys):
    first_file = demo(lab)
    code, out, _ = cli(capsys, "add", "lab-features", str(first_file), "batch_size=2", "--channel-map", "1")
    assert code == 0 and json.loads(out)["version"] == 1
    acq = register_plate(lab.db, lab.settings, barcode="VERSIONS", wells=["B02"], sites=[1, 2], seed=3)
    earlier = lab.db.submit_analysis(acq, "lab-features").sub_ids[0]

    code, out, _ = cli(capsys, "add", "lab-features", str(NUCLEI_ONLY), "batch_size=2", "--channel-map", "1")
    assert code == 0 and (json.loads(out)["version"], json.loads(out)["new_version"]) == (2, True)
    later = lab.db.submit_analysis(acq, "lab-features").sub_ids[0]

    for sub_id, source in ((earlier, first_file), (later, NUCLEI_ONLY)):
        sub = resolve(lab.db, lab.settings, sub_id)
        assert sub.options.pipeline_file == f"store/{sha256(source)}.cppipe"
        # planning runs exactly that file: the earlier analysis still the first content
        prepared = lifecycle.prepare(lab.db, lab.settings, sub)
        assert {sha256(Path(b.pipeline)) for b in prepared.batches} == {sha256(source)}
    assert store_files(lab) == sorted(f"{sha256(p)}.cppipe" for p in (first_file, NUCLEI_ONLY))


def test_the_same_content_added_twice_is_one_store_file_and_one_version(lab, tmp_path, capsys):
    copy = tmp_path / "renamed.cppipe"
    copy.write_bytes(demo(lab).read_bytes())
    assert cli(capsys, "add", "lab-twice", str(demo(lab)))[0] == 0
    code, out, err = cli(capsys, "add", "lab-twice", str(copy), "--added-by", "bo")
    assert code == 0 and json.loads(out)["new_version"] is False and "already has this content" in err
    assert store_files(lab) == [f"{sha256(demo(lab))}.cppipe"]
    [twice] = lab.db.registered_pipelines("lab-twice")
    assert [v.version for v in twice.versions] == [1]


def test_list_and_show_print_the_versions_and_what_each_step_needs(lab, capsys):
    assert cli(capsys, "add", "lab-features", str(demo(lab)), "--channel-map", "1")[0] == 0
    assert cli(capsys, "add", "lab-features", str(NUCLEI_ONLY), "--added-by", "bo")[0] == 0
    code, _, err = cli(
        capsys,
        "add",
        "lab-icf",
        "--step",
        str(demo(lab, DEMO_ICF_PIPELINE_FILE)),
        "sub_type=icf",
        "batch_size=0",
        "--step",
        str(demo(lab, DEMO_FEATURES_ICF_PIPELINE_FILE)),
        "use_icf=true",
        "--channel-map",
        "1",
        "--description",
        "illumination, then features",
    )
    assert code == 0, err

    code, listed, _ = cli(capsys, "list")
    assert code == 0
    features = listed[listed.index("lab-features  ") :].splitlines()
    assert features[0].startswith("lab-features  version 2 of 2, added ") and features[0].endswith(" by bo")
    assert features[1] == f"  step 1 features: from demo_nuclei_only.cppipe, sha256 {sha256(NUCLEI_ONLY)[:12]}"
    assert features[2] == "    needs channels CONC, HOECHST, MITO, PHAandWGA, SYTO; exports all tables"
    icf = listed[listed.index("lab-icf  ") :].splitlines()
    assert icf[0].startswith("lab-icf  version 1 of 1")
    assert icf[1].startswith("  step 1 icf: from demo_icf.cppipe") and "saves files" in icf[2]
    assert "illumination files ICF_CONC.npy, ICF_HOECHST.npy" in icf[4]
    assert "not checked (registered without `cpp-dagster pipeline add`)" in listed  # the demo's, put by SQL

    code, shown, _ = cli(capsys, "show", "lab-features")
    assert code == 0 and shown.startswith("lab-features: version 2 of 2\nversion 1: added ")
    assert f"sha256 {sha256(demo(lab))}" in shown and f"sha256 {sha256(NUCLEI_ONLY)}" in shown
    assert "version 2 (current): added " in shown and "images compared with no channel map" in shown
    assert "images compared with channel map 1: HOECHST, CONC, SYTO, MITO, PHAandWGA" in shown

    code, as_json, _ = cli(capsys, "show", "lab-icf", "--json")
    found = json.loads(as_json)
    assert found["versions"][0]["description"] == "illumination, then features"
    assert [s["options"] for s in found["steps"]] == [{"batch_size": 0}, {"use_icf": True}]


def test_check_says_which_files_can_run_and_why_not(lab, tmp_path, capsys):
    bad = tmp_path / "bad.cppipe"
    bad.write_text(without_module(demo(lab).read_text(), "ExportToSpreadsheet"))
    code, out, _ = cli(capsys, "check", str(demo(lab)), str(bad), str(tmp_path), "--channel-map", "1")
    good_line, bad_line, folder_line = out.splitlines()
    assert code == 1
    assert good_line.startswith(f"{demo(lab)}: can run (sha256 {sha256(demo(lab))}); needs channels ")
    assert bad_line.startswith(f"{bad}: cannot run: pipeline 'bad.cppipe' exports no tables")
    assert folder_line == f"{tmp_path}: cannot be checked: {tmp_path} is a folder: give a .cppipe file"
    assert cli(capsys, "check", str(demo(lab)))[0] == 0
