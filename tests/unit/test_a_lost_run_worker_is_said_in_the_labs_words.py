"""What imagedb says of a run that failed without a step failing: Dagster's reason in the
lab's words, and how often the run was retried before giving up."""

from __future__ import annotations

import dagster as dg
import pytest

from cpp_dagster.defs.analysis.sensors import run_failure_message

OUTSIDE = "This run has been marked as failed from outside the execution context."


def run(**tags: str) -> dg.DagsterRun:
    return dg.DagsterRun(job_name="feature_tables_job", run_id="r1", tags=tags)


@pytest.mark.parametrize(
    ("tags", "event", "says"),
    [
        ({}, OUTSIDE, "run r1 failed: the run's worker process died (killed or out of memory); not retried"),
        (
            {"dagster/retry_number": "2"},
            OUTSIDE,
            "run r1 failed: the run's worker process died (killed or out of memory); retried 2 times",
        ),
        (
            {"dagster/retry_number": "1"},
            "Detected run worker status FAILED",
            "died (killed or out of memory); retried 1 time",
        ),
        ({"dagster/failure_reason": "START_TIMEOUT"}, "Run timed out", "the run did not start in time"),
        ({"dagster/failure_reason": "RUN_WORKER_RESTART"}, "", "its pod evicted or its node drained"),
        # a hand-written retry number is no number: no count, never a crash of the sensor
        ({"dagster/retry_number": "²"}, OUTSIDE, "; not retried"),
        ({}, "Something else went wrong", "run r1 failed: Something else went wrong"),
    ],
)
def test_a_failed_run_says_why_and_how_often_it_was_retried(tags, event, says):
    assert says in run_failure_message(run(**tags), event)
