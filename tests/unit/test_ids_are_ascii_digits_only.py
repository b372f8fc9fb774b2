"""Ids and counters from run tags, plate keys and imagedb's status JSON are read by one
strict rule (cpp_dagster.ids): ASCII digits only. `str.isdigit()` passed "²" (int() then
raised inside a sensor) and "١" (int() read it as 1: another sub-analysis's id)."""

from __future__ import annotations

import dagster as dg
import pytest

from cpp_dagster.defs.analysis.partitions import key_lookup, run_stamp, tagged_sub_id
from cpp_dagster.ids import parse_id
from cpp_dagster.imagedb.rows import SubAnalysisStatus


@pytest.mark.parametrize("value", ["0", "7", "123456789", 0, 42])
def test_whole_numbers_are_read(value):
    assert parse_id(value) == int(value)


@pytest.mark.parametrize(
    "value",
    [
        "²",
        "١",
        "٣٤",
        "1.0",
        1.0,
        " 1",
        "1 ",
        "1\n",
        "+1",
        "-1",
        -1,
        "",
        "0x10",
        "1_000",
        True,
        None,
        "1234567890",
        10**9,
    ],
)
def test_anything_else_is_not_an_id(value):
    assert parse_id(value) is None


def run_tagged(**tags) -> dg.DagsterRun:
    return dg.DagsterRun(job_name="analysis_job", run_id="run-1", tags=tags)


@pytest.mark.parametrize("hostile", ["²", "١", "1.0", "99999999999"])
def test_a_hostile_run_tag_names_no_sub_analysis_and_no_generation(hostile):
    run = run_tagged(**{"imagedb/sub_id": hostile, "imagedb/generation": hostile})
    assert tagged_sub_id(run) is None  # never raises in the run-status sensors, never another row
    assert run_stamp(run).generation is None
    assert tagged_sub_id(run_tagged(**{"imagedb/sub_id": "12"})) == 12


def test_a_plate_key_ending_in_other_digits_is_a_barcode():
    assert key_lookup("P1~12") == ("P1", 12)
    assert key_lookup("P1~١٢") == ("P1~١٢", None)
    assert key_lookup("P1~1234567890") == ("P1~1234567890", None)


def test_a_status_counter_that_is_not_a_whole_number_reads_as_unset():
    status = SubAnalysisStatus.from_json({"reruns": "1.0", "batches": "²", "image_sets": "3"})
    assert (status.reruns, status.batches, status.image_sets) == (0, None, 3)
