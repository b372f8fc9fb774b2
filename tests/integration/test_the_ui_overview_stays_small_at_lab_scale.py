"""The UI's lab overview (`imagedb/lab_overview`) stays small at lab scale: one
observation holds the count per state and at most 50 lines that need attention, not the
whole table (2.5 MB at 5,000 acquisitions x 3 steps, which the UI took minutes to show),
and a new one is written only when that summary changes. Real imagedb, real sensor."""

from __future__ import annotations

import dagster as dg
from dagster_helpers import tick
from lab_scale import fill_lab, run_sql

from cpp_dagster.analysis.lab_overview import ATTENTION_ROWS, markdown_table, overview_lines

LIMIT = 64 * 1024


def size(observation: dg.AssetObservation) -> int:
    """What the event log stores (and the asset page downloads) for one observation."""
    return len(dg.serialize_value(observation))


def table_rows(observation: dg.AssetObservation) -> list[str]:
    return [r for r in observation.metadata["overview"].value.splitlines() if r.startswith("| SCALE-")]


def test_five_thousand_acquisitions_give_an_observation_under_64_kb(db, dagster_instance):
    fill_lab(db.url, 5000)
    [observation] = tick(dagster_instance, "lab_overview_sensor").asset_events
    assert size(observation) < LIMIT, size(observation)

    lines = overview_lines(db.lab_overview())
    counts = {state: sum(line.state == state for line in lines) for state in ("waiting", "running", "failed")}
    assert len(lines) == 15000 and all(counts.values())
    for state, n in counts.items():
        assert observation.metadata[state].value == n
    # failed first, then waiting; the rest counted and pointed at the command that prints them
    shown = table_rows(observation)
    assert len(shown) == ATTENTION_ROWS and all("| failed |" in r for r in shown)
    left_out = counts["failed"] + counts["waiting"] - ATTENTION_ROWS
    assert observation.metadata["attention_not_shown"].value == left_out
    text = observation.metadata["overview"].value
    assert f"{left_out:,} more lines need attention" in text and "`cpp-dagster status`" in text
    # the whole table, which the observation held before, is far over the bound
    assert len(markdown_table(lines)) > 20 * LIMIT


def test_hostile_barcodes_and_messages_cannot_grow_it_or_break_its_table(db, dagster_instance):
    """Barcodes and failure messages of 100,000 characters, full of `|`, backslashes and
    newlines: every cell is cut and escaped, each line of the table stays one row."""
    fill_lab(db.url, 200)
    run_sql(db.url, "UPDATE plate_acquisition SET plate_barcode = repeat(E'|\\\\\\n', 33334) || id")
    run_sql(
        db.url,
        "UPDATE image_sub_analyses SET status = jsonb_build_object('message', repeat(E'|\\\\\\n<b>', 25000))",
    )
    [observation] = tick(dagster_instance, "lab_overview_sensor").asset_events
    assert size(observation) < LIMIT, size(observation)
    rows = [r for r in observation.metadata["overview"].value.splitlines() if r.startswith("| \\|")]
    assert len(rows) == ATTENTION_ROWS
    header = [r for r in observation.metadata["overview"].value.splitlines() if r.startswith("| plate |")][0]
    columns = header.count(" | ")
    # every `|` inside a cell is escaped: each row has exactly the header's columns
    assert all(r.replace("\\\\", "").replace("\\|", "").count(" | ") == columns for r in rows)


def test_written_only_when_the_summary_changes_not_on_progress(db, dagster_instance):
    fill_lab(db.url, 300)
    first = tick(dagster_instance, "lab_overview_sensor")
    assert len(first.asset_events) == 1
    # nothing changed, or only a running step's progress: no new observation
    assert tick(dagster_instance, "lab_overview_sensor", cursor=first.cursor).asset_events == []
    run_sql(
        db.url,
        "UPDATE image_sub_analyses SET status = jsonb_build_object('message', '4 / 8 batches finished, ~40 min left') "
        "WHERE start IS NOT NULL AND finish IS NULL AND error IS NULL",
    )
    assert tick(dagster_instance, "lab_overview_sensor", cursor=first.cursor).asset_events == []
    # a step fails: a new observation that names it first
    run_sql(
        db.url,
        "UPDATE image_sub_analyses SET error = now(), status = jsonb_build_object('message', 'out of disk') "
        "WHERE sub_id = (SELECT min(sub_id) FROM image_sub_analyses)",
    )
    [changed] = tick(dagster_instance, "lab_overview_sensor", cursor=first.cursor).asset_events
    assert "out of disk" in table_rows(changed)[0]
