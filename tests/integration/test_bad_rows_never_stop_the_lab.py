"""One malformed row in imagedb (or in the training store) never stops the lab: it fails
on its own with a message naming its cause, and every other row goes on. Real
PostgreSQL, the real sensors of the Definitions evaluated as the daemon does."""

from __future__ import annotations

import json

import psycopg2
import pytest
from dagster_helpers import tick
from pg_databases import new_database
from poison_rows import (
    MISSING_PIPELINE,
    MISSING_SUB_ID,
    add_rule,
    automation_failures,
    insert_poison_rows,
    insert_sub_analysis,
)
from psycopg2.extras import Json

from cpp_dagster.demo.register import DEMO_PIPELINE, demo_pipeline_meta
from cpp_dagster.imagedb.rows import Image, ImageDBError
from cpp_dagster.imagedb.store import ImageDB
from cpp_dagster.settings import PROJECT_ROOT

GOOD_META = json.dumps(demo_pipeline_meta()["sub_analyses"][0])


def plate(db: ImageDB, barcode: str = "P1") -> int:
    db.put_channel_map(1, {1: "HOECHST"})
    acq = db.add_plate_acquisition(barcode, channel_map_id=1, folder=f"/nas/{barcode}")
    db.add_images(acq, barcode, [Image("B02", 1, 1, f"/nas/{barcode}/B02_s1_w1.tif")])
    db.finish_plate_acquisition(acq)
    return acq


def message(db: ImageDB, sub_id: int) -> str:
    sub = db.sub_analysis(sub_id)
    assert sub.error is not None and sub.finish is None, f"sub-analysis {sub_id} has not failed"
    return sub.status["message"]


def test_malformed_rows_are_named_and_do_not_break_the_ready_query(db):
    acq = plate(db)
    good = insert_sub_analysis(db, acq, meta=GOOD_META)
    shapes = {
        insert_sub_analysis(db, acq, meta='["x"]'): "meta must be a JSON object, not a list",
        insert_sub_analysis(db, acq, meta='"x"'): "meta must be a JSON object, not a string",
        insert_sub_analysis(db, acq, meta="7"): "meta must be a JSON object, not a number",
        insert_sub_analysis(
            db, acq, meta=GOOD_META, depends_on='"12"'
        ): "depends_on_sub_id must be a list of sub-analysis ids, not a string",
        insert_sub_analysis(
            db, acq, meta=GOOD_META, depends_on="12"
        ): "depends_on_sub_id must be a list of sub-analysis ids, not a number",
        insert_sub_analysis(
            db, acq, meta=GOOD_META, depends_on='{"sub": 1}'
        ): "depends_on_sub_id must be a list of sub-analysis ids, not an object",
        insert_sub_analysis(
            db, acq, meta=GOOD_META, depends_on='["one", 2]'
        ): "depends_on_sub_id must be a list of sub-analysis ids (whole numbers)",
        insert_sub_analysis(
            db, acq, meta=GOOD_META, depends_on="[1.5]"
        ): "depends_on_sub_id must be a list of sub-analysis ids (whole numbers)",
        insert_sub_analysis(
            db, acq, meta=GOOD_META, depends_on="[99999999999]"
        ): "depends_on_sub_id must be a list of sub-analysis ids (whole numbers)",
    }
    assert [r.sub_id for r in db.ready_sub_analyses()] == [good]  # no SQL error, only the good row
    found = {r.sub_id: r.message for r in db.malformed_sub_analyses()}
    assert set(found) == set(shapes)
    for sub_id, words in shapes.items():
        assert words in found[sub_id]
    assert db.fail_unresolvable_dependencies() == []  # malformed rows are not its business


def test_a_dependency_that_is_missing_or_failed_fails_the_dependent_at_once(db):
    acq = plate(db)
    failed = insert_sub_analysis(db, acq, meta=GOOD_META)
    db.mark_sub_failed(failed, "boom")
    waiting_on = insert_sub_analysis(db, acq, meta=GOOD_META)  # not finished yet: its dependent waits
    missing = insert_sub_analysis(db, acq, meta=GOOD_META, depends_on=f"[{waiting_on}, {MISSING_SUB_ID}]")
    chained = insert_sub_analysis(db, acq, meta=GOOD_META, depends_on=f"[{missing}]")
    on_failed = insert_sub_analysis(db, acq, meta=GOOD_META, depends_on=f"[{failed}]")
    waits = insert_sub_analysis(db, acq, meta=GOOD_META, depends_on=f"[{waiting_on}]")

    failed_now = {r.sub_id: r.message for r in db.fail_unresolvable_dependencies()}
    assert failed_now == {
        missing: f"not started: it depends on sub-analysis {MISSING_SUB_ID}, which does not exist",
        chained: f"not started: it depends on sub-analysis {missing}, which failed",  # the chain, in one call
        on_failed: f"not started: it depends on sub-analysis {failed}, which failed",
    }
    for sub_id, text in failed_now.items():
        assert message(db, sub_id) == text and db.sub_analysis(sub_id).start is None
        analysis = db.analysis(db.sub_analysis(sub_id).analysis_id)
        assert analysis["error"] is not None and text in analysis["status"]["message"]
    assert db.sub_analysis(waits).error is None  # an unfinished dependency is waited for
    assert db.fail_unresolvable_dependencies() == []  # each is failed once
    assert [r.sub_id for r in db.ready_sub_analyses()] == [waiting_on]


def test_one_tick_fails_every_bad_row_and_launches_the_good_analysis(lab, dagster_instance):
    from cpp_dagster.demo.register import register_plate

    acq = register_plate(lab.db, lab.settings, barcode="TICK", wells=["B02"], sites=[1], seed=3)
    good = lab.db.submit_analysis(acq, DEMO_PIPELINE).sub_ids[0]
    poison = insert_poison_rows(lab.db, acq, GOOD_META)
    bad_options = insert_sub_analysis(lab.db, acq, meta='{"type": "cellprofiler", "site_filter": "12"}')

    data = tick(dagster_instance)
    assert [int(r.tags["imagedb/sub_id"]) for r in data.run_requests] == [good]
    for name, (sub_id, words) in poison.items():
        assert words in message(lab.db, sub_id), name
    assert "not launched:" in message(lab.db, bad_options)
    assert lab.db.sub_analysis(good).error is None
    assert tick(dagster_instance).run_requests[0].run_key == data.run_requests[0].run_key  # nothing else changes


def test_a_status_written_by_hand_does_not_stop_the_tick(lab, dagster_instance):
    from cpp_dagster.demo.register import register_plate

    acq = register_plate(lab.db, lab.settings, barcode="STATUS", wells=["B02"], sites=[1], seed=3)
    good = lab.db.submit_analysis(acq, DEMO_PIPELINE).sub_ids[0]
    scribbled = insert_sub_analysis(lab.db, acq, meta=GOOD_META)
    conn = psycopg2.connect(lab.db.url)
    with conn, conn.cursor() as cur:
        cur.execute("""UPDATE image_sub_analyses SET status = '{"reruns": "many"}' WHERE sub_id = %s""", (scribbled,))
    conn.close()
    requested = sorted(int(r.tags["imagedb/sub_id"]) for r in tick(dagster_instance).run_requests)
    assert requested == sorted([good, scribbled])


def test_an_automation_rule_naming_a_missing_pipeline_is_recorded_and_the_others_submit(db):
    db.put_pipeline("one", {"sub_analyses": [{"type": "cellprofiler", "pipeline_file": "a.cppipe"}]})
    db.put_pipeline("misshapen", {"sub_analyses": "a.cppipe"})
    for pipeline in ("one", MISSING_PIPELINE, "misshapen"):
        add_rule(db, pipeline)
    acq = plate(db)

    submitted = {pipeline: analysis for _, pipeline, analysis in db.submit_by_automation()}
    assert submitted["one"].error is None and len(submitted["one"].sub_ids) == 1
    assert submitted[MISSING_PIPELINE].error == (
        f"not submitted by automation: no analysis pipeline named {MISSING_PIPELINE!r}"
    )
    assert "'sub_analyses' must be a list of JSON objects" in submitted["misshapen"].error
    recorded = automation_failures(db)
    assert sorted((r["acq"], r["pipeline"]) for r in recorded) == [(acq, "misshapen"), (acq, MISSING_PIPELINE)]
    assert all(r["error"] is not None for r in recorded)
    assert db.submit_by_automation() == []  # handled once: no failing again every tick
    assert len(db.ready_sub_analyses()) == 1


def test_a_pipeline_of_the_wrong_shape_is_a_clear_error_at_submission(db):
    db.put_pipeline("list", ["a.cppipe"])
    with pytest.raises(ImageDBError, match="'list': meta must be a JSON object"):
        db.submit_analysis(plate(db), "list")


def test_a_training_version_that_no_longer_validates_is_reported_and_the_others_launch(
    pg_server, dagster_instance, monkeypatch
):
    from cpp_dagster.training.configuration import from_dict
    from cpp_dagster.training.store import ConfigStore

    url = new_database(pg_server, "training")  # no schema applied: the store applies it on first use
    monkeypatch.setenv("CPP_TRAINING_DB_URL", url)
    store = ConfigStore(url)
    raw = json.loads((PROJECT_ROOT / "cpp_dagster" / "training" / "examples" / "solubility.json").read_text())
    first = store.add(from_dict(raw)).version
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cur:  # stored long ago, by rules that have changed since
        cur.execute(
            """INSERT INTO training_config_versions (version, partition_key, workflow, config)
                       VALUES ('old', 'old-000000000000', 'old', %s)""",
            (json.dumps({**raw, "splits": 0, "colour": "blue"}),),
        )
    conn.close()
    last = store.add(from_dict({**raw, "splits": raw.get("splits", 1) + 1})).version

    data = tick(dagster_instance, "new_training_configurations")
    assert [r.partition_key for r in data.run_requests] == [first.partition_key, last.partition_key]
    assert data.cursor == str(last.id)
    (observation,) = data.asset_events
    assert observation.metadata["invalid_version"].value == "old-000000000000"
    problem = observation.metadata["problem"].value
    assert "unknown key 'colour'" in problem and "splits" in problem


def test_a_fresh_instance_ticks_every_sensor_clean(pg_server, dagster_instance, tmp_path, monkeypatch):
    from cpp_dagster.cli import main
    from cpp_dagster.definitions import build_defs

    monkeypatch.setenv("CPP_IMAGEDB_URL", new_database(pg_server, "imagedb"))
    monkeypatch.setenv("CPP_TRAINING_DB_URL", new_database(pg_server, "training"))
    monkeypatch.setenv("CPP_NAS_ROOT", str(tmp_path / "nas"))
    assert main(["db", "init"]) == 0
    names = sorted(s.name for s in build_defs().get_repository_def().sensor_defs)
    assert {"pending_sub_analyses", "automation_rules", "new_training_configurations"} <= set(names)
    for name in names:
        tick(dagster_instance, name)  # raises on a failing evaluation


def test_a_cycle_of_dependencies_fails_with_the_cycle_instead_of_waiting_forever(db):
    """A sub-analysis that depends on itself, or two that depend on each other, can never
    start: each fails at once naming its cycle; one that depends on the cycle fails as a
    dependent of a failed one; a sub-analysis waiting on an unfinished one goes on waiting."""
    acq = plate(db)
    itself = insert_sub_analysis(db, acq, meta=GOOD_META)
    with psycopg2.connect(db.url) as conn, conn.cursor() as cur:
        cur.execute("UPDATE image_sub_analyses SET depends_on_sub_id = %s WHERE sub_id = %s", (Json([itself]), itself))
    first = insert_sub_analysis(db, acq, meta=GOOD_META)
    second = insert_sub_analysis(db, acq, meta=GOOD_META, depends_on=f"[{first}]")
    with psycopg2.connect(db.url) as conn, conn.cursor() as cur:
        cur.execute("UPDATE image_sub_analyses SET depends_on_sub_id = %s WHERE sub_id = %s", (Json([second]), first))
    on_cycle = insert_sub_analysis(db, acq, meta=GOOD_META, depends_on=f"[{second}]")
    waiting_on = insert_sub_analysis(db, acq, meta=GOOD_META)
    waits = insert_sub_analysis(db, acq, meta=GOOD_META, depends_on=f"[{waiting_on}]")

    failed_now = {r.sub_id: r.message for r in db.fail_unresolvable_dependencies()}
    assert failed_now == {
        itself: f"not started: its dependencies form a cycle (sub-analysis {itself} -> {itself}): "
        "it would wait forever",
        first: f"not started: its dependencies form a cycle (sub-analysis {first} -> {second} -> {first}): "
        "it would wait forever",
        second: f"not started: its dependencies form a cycle (sub-analysis {second} -> {first} -> {second}): "
        "it would wait forever",
        on_cycle: f"not started: it depends on sub-analysis {second}, which failed",
    }
    for sub_id, text in failed_now.items():
        assert message(db, sub_id) == text
        analysis = db.analysis(db.sub_analysis(sub_id).analysis_id)
        assert analysis["error"] is not None and text in analysis["status"]["message"]
    assert db.sub_analysis(waits).error is None and db.sub_analysis(waiting_on).error is None
    assert [r.sub_id for r in db.ready_sub_analyses()] == [waiting_on]
    assert db.fail_unresolvable_dependencies() == []
