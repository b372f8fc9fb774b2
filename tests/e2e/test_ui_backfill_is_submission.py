"""Issue 12's acceptance, through the real UI server: a lab member backfills one pipeline
over three plates in the Dagster UI (two imaged, one still being imaged). The real
`dagster-webserver` takes the backfill over its GraphQL API exactly as the UI sends it,
the real daemon runs it with real CellProfiler, and imagedb gets the rows a
`cpp-dagster submit` makes. The plate still being imaged is submitted and waits, and
both the terminal and the UI say why."""

from __future__ import annotations

import json
import os
import subprocess

from pg_databases import new_database
from webserver import dagster_ui, write_dagster_home

from cpp_dagster.demo.register import DEMO_PIPELINE, register_plate
from cpp_dagster.local.environment import sqlalchemy_url
from cpp_dagster.settings import PROJECT_ROOT

# What a lab member selects with "Materialize all" on the analysis assets.
ANALYSIS_ASSETS = ["illumination_functions", "image_qc", "feature_tables", "single_cell_table", "well_profiles"]
# The demo pipeline's one step (features) and the assets it materializes.
FEATURES_STEP = ["feature_tables", "single_cell_table", "well_profiles"]
PLATES = {"BF-1": True, "BF-2": True, "BF-WAIT": False}  # barcode: acquisition finished


def cpp_dagster(*args: str) -> str:
    """The `cpp-dagster` command as a lab member types it (environment of the test)."""
    done = subprocess.run(
        [str(PROJECT_ROOT / ".venv" / "bin" / "cpp-dagster"), *args],
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_backfill_from_the_ui_submits_and_runs_finished_plates_and_leaves_the_others_waiting(
    lab, pg_server, tmp_path
):
    acq = {
        barcode: register_plate(
            lab.db, lab.settings, barcode=barcode, wells=["B02"], sites=[1], seed=i + 5, finished=finished
        )
        for i, (barcode, finished) in enumerate(PLATES.items())
    }
    keys = {barcode: f"{DEMO_PIPELINE}|{barcode}" for barcode in PLATES}

    home = write_dagster_home(tmp_path / "dagster_home")
    with dagster_ui(home, sqlalchemy_url(new_database(pg_server, "dagster"))) as ui:
        # The plates and pipelines become partitions as soon as they are registered.
        ui.wait_until(
            "the sensor to add the plates' partitions",
            lambda: set(keys.values()) <= set(ui.partition_keys("well_profiles")),
            180,
        )

        backfill_id = ui.launch_partition_backfill(ANALYSIS_ASSETS, list(keys.values()))
        backfill = ui.wait_for_backfill(backfill_id, timeout=900)
        assert backfill["error"] is None
        runs = ui.runs({"dagster/backfill": backfill_id})
        assert sorted(r["tags"]["dagster/partition"] for r in runs) == sorted(keys.values())
        assert {r["status"] for r in runs} == {"SUCCESS"}  # waiting is not failing
        run_of = {r["tags"]["dagster/partition"].split("|")[1]: r["runId"] for r in runs}

        # The partition grid: the imaged plates are materialized through well_profiles
        # (green only when the whole analysis finished); the waiting plate has nothing.
        for asset in FEATURES_STEP:
            statuses = ui.partition_statuses(asset)
            assert statuses[keys["BF-1"]] == statuses[keys["BF-2"]] == "materialized", (asset, statuses)
        for asset in ANALYSIS_ASSETS:
            assert ui.partition_statuses(asset)[keys["BF-WAIT"]] == "missing", asset
        tables = ui.latest_materialization("feature_tables", keys["BF-1"])["metadata"]
        assert tables["Image_rows"] == 1 and tables["Nuclei_rows"] > 0

        # The run of the waiting plate says why it materialized nothing.
        assert any("acquisition not finished" in m for m in ui.run_messages(run_of["BF-WAIT"]))

        # The UI's lab overview names the reason (the sensor observes it when it changes).
        def overview_row_of_waiting_plate():
            observed = ui.latest_observation("imagedb/lab_overview")
            table = observed["metadata"]["overview"] if observed else ""
            rows = [line for line in table.splitlines() if line.startswith("| BF-WAIT |")]
            return rows if rows and all("acquisition not finished" in r for r in rows) else None

        (row,) = ui.wait_until("the lab overview to show the waiting plate", overview_row_of_waiting_plate, 60)
        assert f"| {DEMO_PIPELINE} |" in row and "waiting" in row

    # imagedb: each run submitted its plate's analysis; the imaged plates finished with
    # their result files, the waiting one is submitted and untouched.
    analyses = {barcode: lab.db.analysis_of_run(run_of[barcode]) for barcode in PLATES}
    for barcode in ("BF-1", "BF-2"):
        analysis = lab.db.analysis(analyses[barcode])
        (sub,) = lab.db.sub_analyses_of(analyses[barcode])
        assert analysis["pipeline_name"] == DEMO_PIPELINE and analysis["plate_acquisition_id"] == acq[barcode]
        assert analysis["finish"] is not None and analysis["error"] is None
        assert sub.finish is not None and sub.error is None
        job_folder = f"results/{barcode}/{acq[barcode]}/{analyses[barcode]}"
        assert sub.result["job_folder"] == job_folder
        for table in ("Image", "Nuclei", "Cells", "Cytoplasm", "single_cell", "well_profiles"):
            assert f"{job_folder}/{table}.parquet" in sub.result["file_list"]
    waiting = lab.db.analysis(analyses["BF-WAIT"])
    (waiting_sub,) = lab.db.sub_analyses_of(analyses["BF-WAIT"])
    assert waiting["plate_acquisition_id"] == acq["BF-WAIT"] and waiting["pipeline_name"] == DEMO_PIPELINE
    assert not (waiting["finish"] or waiting["error"] or waiting_sub.start or waiting_sub.error)

    # The same rows as the CLI makes (the daemon is gone: nothing launches these).
    cli = json.loads(cpp_dagster("submit", "--plate-acquisition", str(acq["BF-1"]), "--pipeline", DEMO_PIPELINE))
    by_cli, by_ui = lab.db.analysis(cli["analysis_id"]), lab.db.analysis(analyses["BF-1"])
    for field in ("pipeline_name", "plate_acquisition_id", "meta", "priority", "depends_on_id"):
        assert by_cli[field] == by_ui[field], field
    (cli_sub,) = lab.db.sub_analyses_of(cli["analysis_id"])
    (ui_sub,) = lab.db.sub_analyses_of(analyses["BF-1"])
    assert (cli_sub.meta, cli_sub.priority, cli_sub.depends_on_sub_id) == (
        ui_sub.meta,
        ui_sub.priority,
        ui_sub.depends_on_sub_id,
    )

    # The terminal says the same as the UI.
    (line,) = json.loads(cpp_dagster("status", "--plate", "BF-WAIT", "--json"))
    assert (line["pipeline"], line["state"], line["detail"]) == (DEMO_PIPELINE, "waiting", "acquisition not finished")
