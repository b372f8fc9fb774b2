"""Submitting analyses (CLI, a Materialize in the Dagster UI, automation rules) creates the
same imagedb rows, with clear errors; real imagedb and real Dagster runs. Re-running:
tests/e2e/test_rerun_reruns_only_the_failed_batch.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import psycopg2
from dagster_helpers import launch_from_ui, tick

from cpp_dagster.demo.register import DEMO_PIPELINE, register_plate

CLI = str(Path(sys.executable).with_name("cpp-dagster"))


def rows_of(db, analysis_id: int) -> list[tuple]:
    """What the lab's other tools see of a submission, without the generated ids."""
    analysis = db.analysis(analysis_id)
    subs = db.sub_analyses_of(analysis_id)
    chain = [[subs.index(next(s for s in subs if s.sub_id == d)) for d in sub.depends_on_sub_id] for sub in subs]
    return [(analysis["pipeline_name"], analysis["meta"], analysis["priority"])] + [
        (sub.meta, sub.priority, links) for sub, links in zip(subs, chain)
    ]


def test_cli_ui_and_automation_submissions_create_the_same_rows(lab, dagster_instance):
    """The UI's submission is a Materialize (or backfill) of a plate x pipeline partition;
    for a plate still being imaged it submits and waits, with the same rows as the CLI."""
    acq = register_plate(lab.db, lab.settings, barcode="SUBMIT", wells=["B02"], sites=[1], seed=3, finished=False)
    tick(dagster_instance)  # the partitions appear with the plate and the pipeline
    assert dagster_instance.has_dynamic_partition("plate", "SUBMIT")
    ui = launch_from_ui(dagster_instance, DEMO_PIPELINE, "SUBMIT")
    assert ui.status == dg.DagsterRunStatus.SUCCESS
    by_ui = lab.db.analysis_of_run(ui.run_id)
    assert by_ui is not None and ui.tags["imagedb/analysis_id"] == str(by_ui)
    assert dagster_instance.get_latest_materialization_event(dg.AssetKey("feature_tables")) is None  # it waits
    cli = subprocess.run(
        [CLI, "submit", "--plate-acquisition", str(acq), "--pipeline", DEMO_PIPELINE],
        env=os.environ,
        capture_output=True,
        text=True,
        check=True,
    )
    by_cli = json.loads(cli.stdout)["analysis_id"]

    lab.db.finish_plate_acquisition(acq)
    with psycopg2.connect(lab.db.url) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO image_analyses_automation (project, pipeline_name, channel_map) VALUES ('demo', %s, 1)",
            (DEMO_PIPELINE,),
        )
    automation = tick(dagster_instance, "automation_rules")
    assert len(automation.asset_events) == 1
    assert tick(dagster_instance, "automation_rules").asset_events == []  # once per acquisition

    analyses = [s.analysis_id for s in map(lab.db.sub_analysis, range(1, 4))]
    assert [by_ui, by_cli] == analyses[:2] and len(set(analyses)) == 3
    assert rows_of(lab.db, analyses[0]) == rows_of(lab.db, analyses[1]) == rows_of(lab.db, analyses[2])


def test_cli_submission_options_and_clear_errors(lab):
    acq = register_plate(lab.db, lab.settings, barcode="OPTIONS", wells=["B02", "B03"], sites=[1, 2], seed=3)
    out = subprocess.run(
        [
            CLI,
            "submit",
            "--plate-acquisition",
            str(acq),
            "--pipeline",
            DEMO_PIPELINE,
            "--wells",
            "B03",
            "--sites",
            "2",
            "--cp-version",
            "5.0.0.dev784",
            "--priority",
            "1",
        ],
        env=os.environ,
        capture_output=True,
        text=True,
        check=True,
    )
    sub = lab.db.sub_analysis(json.loads(out.stdout)["sub_analysis_ids"][0])
    assert (sub.meta["well_filter"], sub.meta["site_filter"], sub.priority) == (["B03"], [2], 1)
    bad = subprocess.run(
        [CLI, "submit", "--plate-acquisition", str(acq), "--pipeline", "no-such-pipeline"],
        env=os.environ,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "no analysis pipeline named 'no-such-pipeline'" in bad.stderr


def test_a_priority_that_is_not_a_whole_number_from_1_to_9_is_a_clear_submission_error(lab, dagster_instance):
    """From the command line or a pipeline's own meta: a readable error naming the
    priority and its range (not a database error), and no analysis row is created."""
    from cpp_dagster.demo.register import demo_pipeline_meta

    acq = register_plate(lab.db, lab.settings, barcode="PRIO", wells=["B02"], sites=[1], seed=3)
    meta = demo_pipeline_meta(batch_size=2)
    meta["sub_analyses"][0]["priority"] = "high"
    lab.db.put_pipeline("worded-priority", meta)
    range_text = "'priority' must be a whole number from 1 to 9, in 1 = high, 9 = low"

    out_of_range = subprocess.run(
        [CLI, "submit", "--plate-acquisition", str(acq), "--pipeline", DEMO_PIPELINE, "--priority", "42"],
        env=os.environ,
        capture_output=True,
        text=True,
    )
    assert out_of_range.returncode == 2
    assert f"the submission's priority: {range_text}; got 42" in out_of_range.stderr
    worded = subprocess.run(
        [CLI, "submit", "--plate-acquisition", str(acq), "--pipeline", "worded-priority"],
        env=os.environ,
        capture_output=True,
        text=True,
    )
    assert worded.returncode == 2 and "Traceback" not in worded.stderr
    assert f"pipeline 'worded-priority': {range_text}; got 'high'" in worded.stderr

    with psycopg2.connect(lab.db.url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM image_analyses")
        assert cur.fetchone()[0] == 0
