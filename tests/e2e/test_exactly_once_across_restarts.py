"""The real dagster-daemon ticks the sensor again and again, and is restarted, while the
requested run is still queued (the sub-analysis has not started, so imagedb still
offers it): the run key keeps it at one run."""

from __future__ import annotations

import dagster as dg
import yaml
from dagster_helpers import daemon_environment, wait_until

from cpp_dagster.demo.register import DEMO_PIPELINE, register_plate
from cpp_dagster.demo.run import dagster_daemon
from cpp_dagster.settings import PROJECT_ROOT


def test_repeated_ticks_and_a_daemon_restart_request_one_run(lab, pg_server, tmp_path, monkeypatch):
    config = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())
    config["concurrency"]["runs"]["max_concurrent_runs"] = 0  # runs stay queued: nothing starts
    env = daemon_environment(pg_server, tmp_path, monkeypatch, config, CPP_SENSOR_INTERVAL_S="1")
    acq = register_plate(lab.db, lab.settings, barcode="ONCE", wells=["B02"], sites=[1], seed=4)
    sub_id = lab.db.submit_analysis(acq, DEMO_PIPELINE).sub_ids[0]

    with dg.DagsterInstance.get() as instance:

        def runs():
            return instance.get_runs(filters=dg.RunsFilter(tags={"imagedb/sub_id": str(sub_id)}))

        def sensor_ticks():
            states = [s for s in instance.all_instigator_state() if s.name == "pending_sub_analyses"]
            return instance.get_ticks(states[0].instigator_origin_id, states[0].selector_id) if states else []

        for attempt in range(2):  # the daemon, then the daemon restarted
            with dagster_daemon(env, tmp_path / f"daemon-{attempt}.log"):
                wait_until("the run to be requested", runs)
                seen = len(sensor_ticks())
                wait_until("two more sensor ticks", lambda seen=seen: len(sensor_ticks()) >= seen + 2)
        (run,) = runs()
        assert run.status == dg.DagsterRunStatus.QUEUED
        assert lab.db.sub_analysis(sub_id).start is None  # still offered by imagedb every tick
        ticks = sensor_ticks()
        assert len(ticks) >= 4  # evaluated again and again, by both daemons ...
        assert sum(len(t.run_ids) for t in ticks) == 1  # ... and one run launched in all
