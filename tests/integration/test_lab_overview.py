"""`cpp-dagster status`: the lab overview against a real imagedb. Each state a
sub-analysis can be in shows with its reason, progress, failure or result folder, and
one malformed row never breaks the overview."""

from __future__ import annotations

import json
import os
import subprocess

import psycopg2
import pytest
from dagster_helpers import tick
from poison_rows import MISSING_SUB_ID, insert_sub_analysis

from cpp_dagster.analysis.lab_overview import as_dicts, markdown_table, overview_lines, text_table
from cpp_dagster.defs.analysis.lab_overview import lab_overview
from cpp_dagster.demo.register import DEMO_ICF_PIPELINE, DEMO_PIPELINE, register_plate
from cpp_dagster.settings import PROJECT_ROOT, load_settings

CLI = str(PROJECT_ROOT / ".venv" / "bin" / "cpp-dagster")


def plate(lab, barcode: str, *, finished: bool = True) -> int:
    return register_plate(lab.db, lab.settings, barcode=barcode, wells=["B02"], sites=[1], finished=finished, size=64)


def sql(lab, statement: str, params: tuple = ()) -> None:
    """A change made the way another lab tool or a script would: plain SQL."""
    conn = psycopg2.connect(lab.db.url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(statement, params)
    finally:
        conn.close()


def lines(lab, **query):
    return overview_lines(
        lab.db.lab_overview(**query), url_template=load_settings().results_url_template, nas_root=lab.nas
    )


def by_sub(lab, **query) -> dict:
    return {line.sub_id: line for line in lines(lab, **query)}


def status_cli(*args: str) -> subprocess.CompletedProcess:
    """The command as the lab runs it; imagedb and NAS come from the fixtures' environment."""
    return subprocess.run([CLI, "status", *args], capture_output=True, text=True, timeout=120, env=os.environ.copy())


def test_every_step_waits_while_the_acquisition_is_not_finished(lab):
    acq = plate(lab, "IMAGING", finished=False)
    first, second = lab.db.submit_analysis(acq, DEMO_ICF_PIPELINE).sub_ids
    shown = by_sub(lab)
    assert [(shown[s].state, shown[s].detail) for s in (first, second)] == [
        ("waiting", "acquisition not finished"),
        ("waiting", "acquisition not finished"),
    ]
    assert (shown[first].stage, shown[second].stage) == ("1/2 icf", "2/2 features")
    assert shown[first].pipeline == DEMO_ICF_PIPELINE and shown[first].plate == "IMAGING"


def test_a_dependent_names_the_dependency_it_waits_for_and_a_running_one_shows_progress(lab):
    first, second = lab.db.submit_analysis(plate(lab, "P1"), DEMO_ICF_PIPELINE).sub_ids
    shown = by_sub(lab)
    assert shown[first].detail == "waiting to be launched"
    assert shown[second].detail == f"waiting for sub-analysis {first} (not started)"

    lab.db.mark_sub_started(first, batches=8, image_sets=16)
    for batch in range(3):
        lab.db.record_batch_finished(first, f"batch_{batch:04d}")
    shown = by_sub(lab)
    assert shown[first].state == "running"
    assert shown[first].detail.startswith("3 / 8 batches finished, ~") and shown[first].detail.endswith(" h left")
    assert (shown[second].state, shown[second].detail) == ("waiting", f"waiting for sub-analysis {first} (running)")


def test_a_failed_dependency_is_named_before_and_after_the_sensor_fails_its_dependents(lab):
    first, second = lab.db.submit_analysis(plate(lab, "P1"), DEMO_ICF_PIPELINE).sub_ids
    # failed by another tool: the dependent is still submitted until the sensor's next tick
    sql(lab, "UPDATE image_sub_analyses SET start = now(), error = now() WHERE sub_id = %s", (first,))
    assert by_sub(lab)[second].detail == f"sub-analysis {first} failed"

    sql(lab, "UPDATE image_sub_analyses SET start = NULL, error = NULL WHERE sub_id = %s", (first,))
    lab.db.mark_sub_failed(first, "step features_step.run_cellprofiler[batch_0001] failed: exit code 1")
    shown = by_sub(lab)
    assert (shown[first].state, shown[first].detail) == (
        "failed",
        "step features_step.run_cellprofiler[batch_0001] failed: exit code 1",
    )
    assert (shown[second].state, shown[second].detail) == (
        "failed",
        f"not started: it depends on sub-analysis {first}, which failed",
    )


def test_a_finished_step_shows_its_result_folder_and_url(lab, monkeypatch):
    acq = plate(lab, "P 1")
    sub = lab.db.submit_analysis(acq, DEMO_PIPELINE).sub_ids[0]
    lab.db.mark_sub_started(sub, batches=1, image_sets=1)
    folder = f"results/P 1/{acq}/1"
    lab.db.mark_sub_finished(sub, {"job_folder": folder, "file_list": [f"{folder}/Image.parquet"]})
    shown = by_sub(lab)[sub]
    assert (shown.state, shown.detail, shown.result_folder, shown.result_url) == ("finished", "", folder, "")

    monkeypatch.setenv("CPP_RESULTS_URL_TEMPLATE", "https://files.lab/{path}")
    assert by_sub(lab)[sub].result_url == f"https://files.lab/results/P%201/{acq}/1"
    # an older row holding the absolute folder is shown relative to the NAS
    sql(
        lab,
        "UPDATE image_sub_analyses SET result = jsonb_build_object('job_folder', %s::text)",
        (str(lab.nas / folder),),
    )
    assert by_sub(lab)[sub].result_folder == folder


def test_a_plate_without_analysis_shows_as_not_run(lab):
    acq = plate(lab, "NEW")
    [line] = lines(lab)
    assert (line.plate, line.plate_acquisition_id, line.pipeline, line.state, line.sub_id) == (
        "NEW",
        acq,
        "-",
        "not run",
        None,
    )


def test_plate_filter_latest_analysis_and_several_acquisitions_of_one_barcode(lab):
    first_acq, second_acq = plate(lab, "TWICE"), plate(lab, "TWICE")
    other = plate(lab, "OTHER")
    old = lab.db.submit_analysis(first_acq, DEMO_PIPELINE).sub_ids[0]
    latest = lab.db.submit_analysis(first_acq, DEMO_PIPELINE).sub_ids[0]
    lab.db.submit_analysis(other, DEMO_PIPELINE)

    shown = lines(lab, plate_barcode="TWICE")
    assert [(line.plate, line.sub_id) for line in shown] == [
        (f"TWICE (acq {first_acq})", latest),
        (f"TWICE (acq {second_acq})", None),
    ]
    assert [line.sub_id for line in lines(lab, plate_barcode="TWICE", all_analyses=True)] == [old, latest, None]
    assert {line.plate_barcode for line in lines(lab)} == {"TWICE", "OTHER"}
    assert lab.db.lab_overview(plate_barcode="NOPE") == []


def test_malformed_rows_do_not_break_the_overview(lab):
    acq = plate(lab, "P1")
    good = lab.db.submit_analysis(acq, DEMO_PIPELINE).sub_ids[0]
    listed = insert_sub_analysis(lab.db, acq, meta='["features"]')
    scalar_deps = insert_sub_analysis(lab.db, acq, meta='{"sub_type": 7}', depends_on='"12"')
    odd_json = insert_sub_analysis(lab.db, acq, meta="{}")
    orphan = insert_sub_analysis(lab.db, acq, meta="{}", depends_on=f"[{MISSING_SUB_ID}]")
    sql(
        lab,
        """UPDATE image_sub_analyses SET start = now(), finish = now(), status = '["done"]',
                       result = '"results/x"' WHERE sub_id = %s""",
        (odd_json,),
    )
    sql(
        lab,
        """INSERT INTO image_analyses (plate_acquisition_id, pipeline_name, submitted, error, status)
                VALUES (%s, 'missing-pipeline', now(), now(), '{"message": "not submitted by automation: no"}')""",
        (acq,),
    )

    shown = by_sub(lab, all_analyses=True)
    assert shown[good].detail == "waiting to be launched"
    assert shown[listed].detail == "not launched: meta must be a JSON object, not a list"
    assert shown[scalar_deps].detail.startswith("not launched: depends_on_sub_id must be a list of sub-analysis ids")
    assert shown[orphan].detail == f"sub-analysis {MISSING_SUB_ID} does not exist"
    assert shown[scalar_deps].stage == "1/1"  # a sub_type that is not text is left out
    assert (shown[odd_json].state, shown[odd_json].result_folder) == ("finished", "")
    assert (shown[None].state, shown[None].detail) == ("failed", "not submitted by automation: no")
    assert status_cli("--plate", "P1").returncode == 0


def test_markdown_table_has_one_row_per_line_with_cells_escaped(lab, monkeypatch):
    sub = lab.db.submit_analysis(plate(lab, "P1"), DEMO_PIPELINE).sub_ids[0]
    lab.db.mark_sub_failed(sub, "bad | pipe\nsecond line")
    lab.db.submit_analysis(plate(lab, "P2"), DEMO_PIPELINE)
    table = markdown_table(lines(lab)).splitlines()
    assert table[0] == "| plate | pipeline | stage | sub | state | result | detail |"
    assert len(table) == 4 and table[2].endswith("| failed |  | bad \\| pipe second line |")

    done = lab.db.submit_analysis(plate(lab, "P3"), DEMO_PIPELINE).sub_ids[0]
    lab.db.mark_sub_finished(done, {"job_folder": "results/P3/3/3"})
    monkeypatch.setenv("CPP_RESULTS_URL_TEMPLATE", "https://files.lab/{path}")
    table = markdown_table(lines(lab)).splitlines()
    assert table[0] == "| plate | pipeline | stage | sub | state | result | url | detail |"
    assert table[-1].endswith("| finished | results/P3/3/3 | [link](https://files.lab/results/P3/3/3) |  |")


def test_status_command_prints_the_reasons_and_json(lab):
    unfinished = plate(lab, "IMAGING", finished=False)
    lab.db.submit_analysis(unfinished, DEMO_PIPELINE)
    first, second = lab.db.submit_analysis(plate(lab, "P1"), DEMO_ICF_PIPELINE).sub_ids
    lab.db.mark_sub_started(first, batches=4, image_sets=4)
    plate(lab, "NEW")

    done = status_cli()
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.splitlines()[0].split() == ["PLATE", "PIPELINE", "STAGE", "SUB", "STATE", "RESULT", "DETAIL"]
    assert "acquisition not finished" in out and "0 / 4 batches finished" in out
    assert f"waiting for sub-analysis {first} (running)" in out
    assert any(line.split()[:3] == ["NEW", "-", "-"] and "not run" in line for line in out.splitlines())
    assert text_table(lines(lab)) == out.rstrip("\n")

    rows = json.loads(status_cli("--plate", "P1", "--json").stdout)
    assert [(r["sub_id"], r["state"]) for r in rows] == [(first, "running"), (second, "waiting")]
    assert as_dicts(lines(lab, plate_barcode="P1")) == rows


@pytest.mark.parametrize(
    "args, env, message",
    [
        (("--plate", "NOPE"), {}, "cpp-dagster status: no plate acquisition with barcode 'NOPE'"),
        ((), {"CPP_RESULTS_URL_TEMPLATE": "https://files.lab/"}, "must contain {path}"),
    ],
)
def test_status_command_refuses_with_one_line_and_exit_2(lab, monkeypatch, args, env, message):
    plate(lab, "P1")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    done = status_cli(*args)
    assert done.returncode == 2 and done.stdout == ""
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_the_ui_shows_the_overview_as_an_observation_of_imagedb_lab_overview(lab, dagster_instance):
    acq = plate(lab, "OV-UI-1", finished=False)
    lab.db.submit_analysis(acq, DEMO_PIPELINE)
    plate(lab, "OV-UI-2")  # registered, nothing submitted

    first = tick(dagster_instance, "lab_overview_sensor")
    [observation] = first.asset_events
    assert observation.asset_key == lab_overview.key
    table = observation.metadata["overview"].value
    assert "| OV-UI-1 | demo-cellpainting |" in table and "acquisition not finished" in table
    # a plate with nothing submitted needs no one: counted, not listed (`cpp-dagster status` lists it)
    assert "| OV-UI-2 |" not in table and "1 not run" in table
    assert (observation.metadata["waiting"].value, observation.metadata["not run"].value) == (1, 1)

    # nothing changed: no new observation; a change (the plate finishes) gives one
    assert tick(dagster_instance, "lab_overview_sensor", cursor=first.cursor).asset_events == []
    sql(lab, "UPDATE plate_acquisition SET finished = now() WHERE id = %s", (acq,))
    [changed] = tick(dagster_instance, "lab_overview_sensor", cursor=first.cursor).asset_events
    assert "waiting to be launched" in changed.metadata["overview"].value


def detail_of(observation, barcode: str) -> str:
    """The detail cell of a plate's line in an overview observation's markdown table."""
    (row,) = [r for r in observation.metadata["overview"].value.splitlines() if f"| {barcode} |" in r]
    return row.split("|")[-2].strip()


def test_a_launched_run_waiting_in_the_run_queue_is_named_in_the_ui_overview(lab, dagster_instance):
    """imagedb only knows the sub-analysis has not started; the UI's overview also knows
    its run was launched and waits in Dagster's run queue (e.g. another run of the same
    plate x pipeline is active), and says so."""
    import dagster as dg

    queued_sub = lab.db.submit_analysis(plate(lab, "OV-QUEUE-1"), DEMO_PIPELINE).sub_ids[0]
    lab.db.submit_analysis(plate(lab, "OV-QUEUE-2"), DEMO_PIPELINE)
    # A run the sensor launched and that has not started (a QUEUED run needs a code
    # location's origin, which a test instance has not: NOT_STARTED, created, not yet queued)
    run = dagster_instance.add_run(
        dg.DagsterRun(
            job_name="feature_tables_job", run_id="0badc0de-" + "0" * 27, tags={"imagedb/sub_id": str(queued_sub)}
        )
    )
    assert run.status == dg.DagsterRunStatus.NOT_STARTED
    [observation] = tick(dagster_instance, "lab_overview_sensor").asset_events
    assert detail_of(observation, "OV-QUEUE-1").startswith("launched, queued in Dagster's run queue (run 0badc0de)")
    assert detail_of(observation, "OV-QUEUE-2") == "waiting to be launched"
    dagster_instance.report_run_canceled(run)  # no longer waiting to start: the plain reason again
    [changed] = tick(dagster_instance, "lab_overview_sensor").asset_events
    assert detail_of(changed, "OV-QUEUE-1") == "waiting to be launched"
