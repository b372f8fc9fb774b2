"""A batch pod killed at its Job's deadline (activeDeadlineSeconds) is not run again: the
retry that dagster-k8s starts for any failed Job finds the previous attempt's ledger (it
lived its whole job timeout and never ended) and fails at once, as the batch's own timer
does, with a message saying so. On the stand-in of the Kubernetes API, with the real
K8sRunLauncher and k8s_job_executor."""

from __future__ import annotations

import dagster as dg
import pytest
from dagster_helpers import events
from k8s_cluster import analysis_cluster, launch, sensor_run_config, step_jobs, submit_demo, wait_for_run

JOB_TIMEOUT_S = 15  # the deadline falls after the step has started, while CellProfiler runs
# one batch of 16 image sets: CellProfiler alone takes longer than the deadline (on an idle
# machine a one-image-set batch finished within it)
WELLS, SITES = ("B02", "B03", "C02", "C03"), (1, 2, 3, 4)


@pytest.fixture
def cluster(lab, pg_server, tmp_path, monkeypatch):
    # No start-up grace: the Job's deadline is the job timeout from the pod's start, before
    # the step's own timer (the job timeout from CellProfiler's start) would fire.
    with analysis_cluster(lab, pg_server, tmp_path, monkeypatch, pod_settings={"startup_grace_seconds": 0}) as found:
        yield found


def test_a_batch_killed_at_its_job_deadline_fails_without_running_again(lab, cluster):
    k8s, instance = cluster
    request, sub_id = submit_demo(
        lab, instance, "K8S-DEADLINE", wells=WELLS, sites=SITES, batch_size=0, job_timeout=JOB_TIMEOUT_S
    )
    key = request.partition_key
    launch(instance, key, job=request.job_name, run_config=sensor_run_config(lab, sub_id), tags=request.tags)
    run = wait_for_run(instance, key)
    assert run.status == dg.DagsterRunStatus.FAILURE

    batch_jobs = step_jobs(k8s, "run_cellprofiler")
    assert {j["spec"]["activeDeadlineSeconds"] for j in batch_jobs} == {JOB_TIMEOUT_S}
    first = [j["metadata"]["name"] for j in batch_jobs if not j["metadata"]["name"].endswith("-1")]
    assert first, [j["metadata"]["name"] for j in batch_jobs]
    for name in first:  # each first attempt was stopped by the deadline, as the kubelet does
        assert k8s.wait_for(name, timeout=5)["conditions"][0]["reason"] == "DeadlineExceeded"
    # one retry per batch (dagster-k8s saw a failed Job), and no second one
    retried = sorted(e.step_key for e in events(instance, run.run_id, dg.DagsterEventType.STEP_UP_FOR_RETRY))
    assert retried == sorted({e.step_key for e in events(instance, run.run_id, dg.DagsterEventType.STEP_FAILURE)})
    assert len(batch_jobs) == 2 * len(first)

    failures = events(instance, run.run_id, dg.DagsterEventType.STEP_FAILURE)
    messages = [e.event_specific_data.error.message for e in failures]
    assert all("not retried, as it would take as long again" in m for m in messages), messages
    sub = lab.db.sub_analysis(sub_id)
    assert sub.error is not None and sub.finish is None
    assert "ran out of time" in sub.status["message"] and f"job timeout is {JOB_TIMEOUT_S} s" in sub.status["message"]
