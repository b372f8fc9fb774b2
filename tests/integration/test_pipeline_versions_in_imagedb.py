"""The versions of a pipeline in a real imagedb, the `cpp-dagster pipeline` command's
refusals that come before any CellProfiler inspection, and the pipelines in the UI (the
`imagedb/analysis_pipelines` observation). The command's checks with CellProfiler:
tests/e2e/test_pipelines_managed_from_the_command_line.py."""

from __future__ import annotations

import os
import threading

import pytest
from dagster_helpers import tick

from cpp_dagster.cli import main
from cpp_dagster.demo.register import DEMO_PIPELINE_FILE
from cpp_dagster.imagedb.pipelines import ADDED_BY_OTHER_MEANS, NO_TABLE
from cpp_dagster.imagedb.rows import ImageDBError
from cpp_dagster.imagedb.store import ImageDB


def meta(pipeline_file: str, **sub) -> dict:
    return {
        "analysis_meta": {"description": "test"},
        "sub_analyses": [{"type": "cellprofiler", "sub_type": "features", "pipeline_file": pipeline_file, **sub}],
    }


def test_each_new_content_is_a_version_and_the_same_content_again_is_none(db):
    assert (db.add_pipeline_version("lab", meta("store/a.cppipe"), [], "ada").version, 1) == (1, 1)
    second = db.add_pipeline_version("lab", meta("store/b.cppipe"), [], "bo")
    again = db.add_pipeline_version("lab", meta("store/b.cppipe"), [], "cy")
    assert (second.version, second.created) == (2, True) and (again.version, again.created) == (2, False)
    [lab] = db.registered_pipelines()
    assert [(v.version, v.added_by) for v in lab.versions] == [(1, "ada"), (2, "bo")]
    assert lab.current is lab.versions[-1]
    assert lab.meta["analysis_meta"] == {"description": "test", "pipeline_version": 2}
    assert lab.versions[0].meta["sub_analyses"][0]["pipeline_file"] == "store/a.cppipe"  # the earlier one kept


def test_a_meta_written_without_the_command_is_kept_as_a_version_before_the_next(db):
    db.put_pipeline("lab", meta("by-hand.cppipe"))
    assert db.add_pipeline_version("lab", meta("store/a.cppipe"), [], "ada").version == 2
    db.put_pipeline("lab", meta("edited.cppipe"))  # an SQL edit after version 2
    assert db.add_pipeline_version("lab", meta("store/b.cppipe"), [], "ada").version == 4
    [lab] = db.registered_pipelines("lab")
    files = [(v.version, v.meta["sub_analyses"][0]["pipeline_file"], v.added_by) for v in lab.versions]
    assert files == [
        (1, "by-hand.cppipe", ADDED_BY_OTHER_MEANS),
        (2, "store/a.cppipe", "ada"),
        (3, "edited.cppipe", ADDED_BY_OTHER_MEANS),
        (4, "store/b.cppipe", "ada"),
    ]


def test_an_analysis_submitted_before_a_new_version_keeps_its_file_and_version(lab):
    from cpp_dagster.demo.register import register_plate

    acq = register_plate(lab.db, lab.settings, barcode="VERSIONED", wells=["B02"], sites=[1])
    lab.db.add_pipeline_version("lab", meta("store/a.cppipe"), [], "ada")
    earlier = lab.db.submit_analysis(acq, "lab")
    lab.db.add_pipeline_version("lab", meta("store/b.cppipe"), [], "ada")
    later = lab.db.submit_analysis(acq, "lab")
    for submitted, file, version in ((earlier, "store/a.cppipe", 1), (later, "store/b.cppipe", 2)):
        [sub_id] = submitted.sub_ids
        assert lab.db.sub_analysis_to_run(sub_id).sub.meta["pipeline_file"] == file
        assert lab.db.analysis(submitted.analysis_id)["meta"]["pipeline_version"] == version
    lab.db.submit_analysis(acq, "lab")
    with lab.db._cursor() as cur:  # an analysis row written by hand, its meta no object: not counted
        cur.execute(
            "INSERT INTO image_analyses (plate_acquisition_id, pipeline_name, meta) VALUES (%s, 'lab', '[1]')", (acq,)
        )
    assert lab.db.registered_pipelines("lab")[0].analyses == {1: 1, 2: 2}


def test_two_adds_of_one_name_at_once_get_two_versions(db):
    results, errors = [], []

    def add(file: str) -> None:
        other = ImageDB(db.url)  # a connection of its own, as a second command would have
        try:
            results.append(other.add_pipeline_version("race", meta(file), [], "ada").version)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            other.close()

    threads = [threading.Thread(target=add, args=(f"store/{i}.cppipe",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and sorted(results) == [1, 2, 3, 4]


def test_imagedb_without_the_versions_table_says_to_run_db_init(db, settings, dagster_instance):
    with db._cursor() as cur:
        cur.execute("DROP TABLE analysis_pipeline_versions")
    with pytest.raises(ImageDBError, match="run `cpp-dagster db init`"):
        db.registered_pipelines()
    with pytest.raises(ImageDBError, match="run `cpp-dagster db init`"):
        db.add_pipeline_version("lab", meta("store/a.cppipe"), [], "ada")
    data = tick(dagster_instance, "analysis_pipelines_sensor")
    assert data.asset_events == [] and data.skip_message == NO_TABLE


def test_the_ui_shows_the_pipelines_as_an_observation_of_imagedb_analysis_pipelines(lab, dagster_instance):
    lab.db.add_pipeline_version("lab-features", meta(f"store/{'a' * 64}.cppipe"), [], "ada")
    first = tick(dagster_instance, "analysis_pipelines_sensor")
    [observation] = first.asset_events
    assert observation.asset_key.path == ["imagedb", "analysis_pipelines"]
    table = observation.metadata["pipelines"].value
    assert "| lab-features | 1 | 1 | 1 features |" in table
    assert "| demo-cellpainting |  | 0 | 1 features | demo/demo_features.cppipe | not checked" in table
    assert observation.metadata["pipeline_count"].value == 3 and observation.metadata["version_count"].value == 1
    assert tick(dagster_instance, "analysis_pipelines_sensor", cursor=first.cursor).asset_events == []
    lab.db.add_pipeline_version("lab-features", meta(f"store/{'b' * 64}.cppipe"), [], "ada")
    [changed] = tick(dagster_instance, "analysis_pipelines_sensor", cursor=first.cursor).asset_events
    assert "| lab-features | 2 | 2 | 1 features |" in changed.metadata["pipelines"].value


def refused(capsys, *args: str) -> str:
    """Run `cpp-dagster pipeline ...`; assert it refused (exit 2) with one line on stderr."""
    assert main(["pipeline", *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert "\x1b" not in err  # nothing from the command line or imagedb reaches the terminal raw
    return err


def nothing_registered(lab, names_before: list[str]) -> None:
    assert lab.db.pipeline_names() == names_before
    assert all(not p.versions for p in lab.db.registered_pipelines())
    store = lab.settings.pipelines_dir / "store"
    assert not store.exists() or list(store.iterdir()) == []


HOSTILE_NAMES = {
    "a quote": "x'; DROP TABLE analysis_pipelines; --",
    "a climb out": "../../etc",
    "a huge name": "p" * 100_000,
}


@pytest.mark.parametrize("case", list(HOSTILE_NAMES))
def test_add_refuses_a_hostile_name_before_reading_any_file(lab, capsys, case):
    before = lab.db.pipeline_names()
    err = refused(capsys, "add", HOSTILE_NAMES[case], str(lab.settings.pipelines_dir / DEMO_PIPELINE_FILE))
    assert "is not a usable name: use 1 to 100 letters" in err and len(err) < 500
    nothing_registered(lab, before)


def hostile_file(lab, tmp_path, case: str) -> str:
    demo = lab.settings.pipelines_dir / DEMO_PIPELINE_FILE
    target = tmp_path / case.replace(" ", "_")
    if case == "a symbolic link":
        target.symlink_to(demo)
    elif case == "a folder":
        target.mkdir()
    elif case == "an escape in its name":
        target = tmp_path / "evil\x1b[2J.cppipe"
        target.mkdir()
    elif case == "a FIFO":
        os.mkfifo(target)
    elif case == "a huge file":
        with open(target, "wb") as out:
            out.truncate(2**34)  # 16 GB, sparse: no disk used
    return str(target)


FILE_REFUSALS = {
    "a symbolic link": "is a symbolic link (to ",
    "a folder": "is a folder: give a .cppipe file",
    "an escape in its name": "evil\\x1b[2J.cppipe is a folder",
    "a FIFO": "is not a regular file (a FIFO, socket or device)",
    "a huge file": "is 16,384.0 MB; a pipeline file may be at most 10 MB",
    "a missing file": "No such file or directory",
}


@pytest.mark.parametrize("case", list(FILE_REFUSALS))
def test_add_refuses_a_file_that_is_no_pipeline_file_and_registers_nothing(lab, tmp_path, capsys, case):
    before = lab.db.pipeline_names()
    err = refused(capsys, "add", "lab-hostile", hostile_file(lab, tmp_path, case))
    assert FILE_REFUSALS[case] in err
    nothing_registered(lab, before)


def test_add_refuses_a_step_option_planning_would_refuse_before_any_inspection(lab, capsys):
    demo = str(lab.settings.pipelines_dir / DEMO_PIPELINE_FILE)
    before = lab.db.pipeline_names()
    err = refused(capsys, "add", "lab-options", demo, "batch_size=two")
    assert "pipeline file demo_features.cppipe: 'batch_size' must be" in err
    err = refused(capsys, "add", "lab-steps", "--step", demo, "--step", demo)
    assert "step 1 of 2 (demo_features.cppipe) runs before another step" in err
    err = refused(capsys, "add", "lab-both", demo, "--step", demo)
    assert "not both" in err
    err = refused(capsys, "add", "lab-map", demo, "--channel-map", str(2**63))
    assert f"channel map {2**63} cannot exist: a channel map id is 0 to 2147483647" in err
    err = refused(capsys, "add", "lab-map", demo, "--channel-map", "77")
    assert "imagedb has no channel map 77" in err
    err = refused(capsys, "add", "lab-text", demo, "--description", "x" * 100_000)
    assert "the description is 100,000 characters; at most 1,000" in err
    nothing_registered(lab, before)


def test_show_of_an_unknown_pipeline_is_one_line(lab, capsys):
    err = refused(capsys, "show", "no-such\x1b[2J")
    assert "no analysis pipeline named 'no-such\\x1b[2J'" in err and "\x1b" not in err


def test_add_without_a_cellprofiler_to_check_with_registers_nothing(lab, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CPP_CELLPROFILER", str(tmp_path / "no-cellprofiler" / "cellprofiler"))
    before = lab.db.pipeline_names()
    err = refused(capsys, "add", "lab-unchecked", str(lab.settings.pipelines_dir / DEMO_PIPELINE_FILE))
    assert "no python next to the CellProfiler executable" in err
    nothing_registered(lab, before)
