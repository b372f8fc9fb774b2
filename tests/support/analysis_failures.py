"""An analysis run once as the daemon would, and its failure checked in imagedb and
Dagster: for the tests that every failure reaches imagedb."""

from __future__ import annotations

import dagster as dg
from dagster_helpers import launch, tick


def run_once(lab, instance, sub_id: int) -> dg.DagsterRun:
    requests = [r for r in tick(instance).run_requests if r.tags["imagedb/sub_id"] == str(sub_id)]
    assert len(requests) == 1
    return launch(instance, requests[0])


def assert_failed(lab, sub_id: int, run: dg.DagsterRun, *fragments: str) -> str:
    assert run.status == dg.DagsterRunStatus.FAILURE
    sub = lab.db.sub_analysis(sub_id)
    assert sub.error is not None and sub.finish is None and sub.status["state"] == "failed"
    message = sub.status["message"]
    for fragment in fragments:
        assert fragment in message
    analysis = lab.db.analysis(sub.analysis_id)
    assert analysis["error"] is not None and analysis["finish"] is None
    return message
